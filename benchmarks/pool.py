"""Many cameras on one copy of the model (issue 23): memory per stream and batched decode throughput.

For each model (the embedded default, and the 512-wide 12-layer random thinker of
benchmarks/streaming.py), exported once at --resolution, ratio 0.25, --max-context:

- resident memory (VmRSS, each configuration in a fresh child process) with N = 1, 2, 4, 8 open
  streams, each fed one 2-s chunk: N separate `OmniSession`s against one `open_pool(max_streams=8)`
  with N streams; the pool's KV slots are allocated up front, so its cost per stream is the
  activations and its slot, planned as kv bytes per token x (max_context + 1) x layers;
- aggregate decode tokens/s of 4 streams answering at once (4 threads, one pool: their decode steps
  share decoder calls) against one stream answering alone in the same pool, side by side;
- with --cameras: the largest number of cameras held at real time, the pool against one
  `OmniSession` per camera (today's way), searched side by side in one run: N camera threads, each
  sending its 2-s chunks at real pace (chunk k due at start + offset + 2k s, offsets spread over
  one chunk period) for --hold-seconds after one untimed warm-up chunk; N is held when every chunk
  is processed (`append_chunk` returns) within 2 s of its due time, so no lag builds up. N doubles
  until it fails, then bisects; each N runs in a fresh child process (its RSS is printed too).

    python benchmarks/pool.py [--models default,mid] [--resolution 224x224] [--max-context 1024] [--tokens 32]
                              [--backend onnxruntime|torch]
    python benchmarks/pool.py --cameras --resolution 448x448 --max-context 2048 [--hold-seconds 20]

--stages instead times one stream's chunk stages and 4 chunks' prefill in one decoder call against 4;
--burst K the chunk throughput of 4 cameras pushing K chunks each at the same moment (a barrier per phase),
as fast as taken, through one pool with chunk batching on (`open_pool` default: the encoders and the
compressor batched across the streams where the export has the batched forms) against off
(`batch_chunks=False`: one call per chunk), and --burst-ways on+prefill (the prefills through
decoder_scatter too), alternating, each trial a fresh process: chunks/s, CPU seconds per chunk, the
cores used, and each chunk call timed in place (its rows, median ms, ms per chunk) and run again alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]      # this checkout's omnisift_edge; streaming.py
QUESTION = "What happens in the video?"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _feed(session, seed: int, resolution) -> None:
    from omnisift_edge.model.synthetic import synthetic_clip

    clip = synthetic_clip(2.0, *resolution, seed=seed)
    session.append_chunk(clip.frames, clip.pcm)
    session.finish()


def child(mode: str, n: int, folder: str, max_context: int, backend: str) -> None:
    """Open `n` streams (separate sessions or one pool), feed each a chunk, print the RSS in MiB."""
    from omnisift_edge.runtime.pool import open_pool
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    cfg = RuntimeConfig(folder, backend=backend, max_context=max_context)
    if mode == "pool":
        pool = open_pool(cfg, max_streams=8)
        streams = [pool.open_stream() for _ in range(n)]
    else:
        streams = [OmniSession(cfg) for _ in range(n)]
    for i, s in enumerate(streams):
        _feed(s, i, s.resolution)
    print(f"{rss_mib():.1f}")


def measure_rss(mode: str, n: int, folder: Path, max_context: int, backend: str) -> float:
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(n), str(folder), str(max_context), backend],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {mode} child with {n} streams failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def decode_rate(folder: Path, max_context: int, tokens: int, answering: int, backend: str) -> tuple[float, dict]:
    """Tokens/s of `answering` streams asking at once in one pool (their decode steps batched)."""
    from omnisift_edge.runtime.pool import open_pool
    from omnisift_edge.runtime.session import RuntimeConfig

    pool = open_pool(RuntimeConfig(folder, backend=backend, max_context=max_context), max_streams=answering)
    streams = [pool.open_stream() for _ in range(answering)]
    for i, s in enumerate(streams):
        _feed(s, i, s.resolution)
    counts = [0] * answering
    before = dict(pool.scheduler.calls)
    in_place = _time_decode_calls(pool.scheduler)

    def answer(i):
        counts[i] = len(list(streams[i].ask_ids(QUESTION, max_new_tokens=tokens)))

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(answering)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    calls = {k: pool.scheduler.calls[k] - before[k] for k in before}
    calls["in_place_ms"] = float(np.median(in_place.get(answering, [np.nan]))) * 1e3
    calls["alone_ms"] = (_decode_call_alone(pool, streams) * 1e3 if backend == "onnxruntime"   # numpy steps
                         else float("nan"))
    pool.close()
    return sum(counts) / wall, calls


def _time_decode_calls(scheduler) -> dict[int, list[float]]:
    """Seconds of each batched decode call the scheduler runs, by batch size (the call in place)."""
    seconds: dict[int, list[float]] = {}
    run = scheduler._run_decodes

    def timed(steps):
        start = time.perf_counter()
        result = run(steps)
        seconds.setdefault(len(steps), []).append(time.perf_counter() - start)
        return result

    scheduler._run_decodes = timed
    return seconds


def _decode_call_alone(pool, streams, repeats: int = 20) -> float:
    """Median seconds of the same batched decode call (every stream one step) run alone, nothing else queued."""
    width = streams[0].stream.embed_table.shape[1]
    embeds = np.zeros((1, 1, width), np.float32)
    seconds = []
    for _ in range(repeats):
        steps = [(s.stream.kv, embeds, np.full((3, 1, 1), s.stream.kv.length + 8)) for s in streams]
        start = time.perf_counter()
        pool.backend.run_decodes(steps)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def hold_child(mode: str, n: int, folder: str, max_context: int, seconds: float) -> None:
    """N cameras at real pace (see the module docstring); prints one JSON line: held, latencies, RSS."""
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.runtime.pool import open_pool
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    cfg = RuntimeConfig(folder, max_context=max_context)
    ways = {"pool": {}, "pool-batched": {"batch_chunks": True}}           # mode -> open_pool's switches
    pool = open_pool(cfg, max_streams=n, **ways[mode]) if mode in ways else None
    streams = [pool.open_stream() if pool else OmniSession(cfg) for _ in range(n)]
    chunks = int(seconds // 2)
    clips = [synthetic_clip(2.0 * (chunks + 1), *streams[0].resolution, seed=i) for i in range(min(n, 4))]
    step = int(streams[0].spec.sample_rate * 2)
    latencies: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def camera(i: int, start: float) -> None:
        clip = clips[i % len(clips)]
        try:
            for k in range(chunks + 1):
                due = start + 2.0 * i / n + 2.0 * (k - 1)         # chunk 0: warm-up, before the clock
                if k:
                    time.sleep(max(0.0, due - time.perf_counter()))
                streams[i].append_chunk(clip.frames[4 * k:4 * k + 4], clip.pcm[step * k:step * (k + 1)])
                if k:
                    latencies[i].append(time.perf_counter() - due)
        except BaseException as error:  # noqa: BLE001 - reported by the parent
            errors.append(error)

    start = time.perf_counter() + 2.0 + 0.5 * n                   # warm-up chunks go first
    threads = [threading.Thread(target=camera, args=(i, start)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    flat = np.array([x for per in latencies for x in per])
    late = int((flat > 2.0).sum())
    calls = pool.scheduler.calls if pool else {}
    print(json.dumps({"held": late == 0, "late": late, "chunks": int(flat.size), "p50": float(np.median(flat)),
                      "max": float(flat.max()), "rss": rss_mib(), "calls": calls}))


def hold(mode: str, n: int, folder: Path, max_context: int, seconds: float) -> dict:
    done = subprocess.run([sys.executable, __file__, "--hold-child", mode, str(n), str(folder), str(max_context),
                           str(seconds)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {mode} camera child with {n} streams failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


BURST_WAYS = {"on": {"batch_chunks": True}, "off": {"batch_chunks": False},
              "on+prefill": {"batch_chunks": True, "batch_prefill": True}}     # --burst: open_pool's switches


def _time_calls(pool) -> dict:
    """Record every chunk call the pool runs, in place: kind -> [(rows in the call, seconds)], and the last
    arguments of each kind (to run the same call again alone). Batched calls: the backend's run_batch; single
    calls: OrtStream's own hooks (what the pool's scheduler runs for them)."""
    from omnisift_edge.runtime.ort_pipeline import OrtStream

    seen: dict = {"calls": {}, "last": {}}

    def record(kind, rows, seconds, args):
        seen["calls"].setdefault(kind, []).append((rows, seconds))
        seen["last"][kind] = args

    run_batch = pool.scheduler._run_batch

    def batched(kind, items):
        start = time.perf_counter()
        result = run_batch(kind, items)
        record(kind, len(items), time.perf_counter() - start, items)
        return result

    pool.scheduler._run_batch = batched
    for hook, kind in (("_encode_video", "vision_encoder"), ("_encode_audio", "audio_encoder"),
                       ("_compress", "compressor"), ("_step", "prefill")):
        original = getattr(OrtStream, hook)

        def timed(self, *args, _original=original, _kind=kind, **kwargs):
            start = time.perf_counter()
            result = _original(self, *args, **kwargs)
            want_logits = kwargs.get("want_logits", args[2] if len(args) > 2 else True)
            if _kind != "prefill" or (args[0].shape[1] > 1 and not want_logits):
                record(_kind, 1, time.perf_counter() - start, (self, args, kwargs, _original))
            return result

        setattr(OrtStream, hook, timed)
    return seen


def _alone_ms(pool, seen, repeats: int = 5) -> dict:
    """Median ms of the last call of each encoder/compressor kind run again alone (nothing else queued)."""
    out = {}
    for kind, args in seen["last"].items():
        if kind == "prefill":                       # it writes the caches: timed in place only
            continue
        if isinstance(args, tuple) and len(args) == 4 and callable(args[3]):
            stream, a, kw, original = args
            fn = lambda: original(stream, *a, **kw)   # noqa: E731
        else:
            fn = lambda: pool.backend.run_batch(kind, args)   # noqa: E731
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        out[kind] = float(np.median(seconds)) * 1e3
    return out


def burst_child(mode: str, n: int, folder: str, max_context: int, chunks: int, gather: float | None = None) -> None:
    """N cameras push `chunks` chunks each at the same moment, as fast as they are taken (after one warm-up chunk),
    through one pool with chunk batching `mode` (BURST_WAYS); prints one JSON line: wall seconds, this process's
    CPU seconds (all threads), the cores that makes, each chunk call in place (rows, ms) and alone, the counters."""
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.runtime.pool import open_pool
    from omnisift_edge.runtime.session import RuntimeConfig

    pool = open_pool(RuntimeConfig(folder, max_context=max_context), max_streams=n, **BURST_WAYS[mode])
    if gather is not None:
        pool.scheduler.batch_gather_seconds = gather
    streams = [pool.open_stream() for _ in range(n)]
    clips = [synthetic_clip(2.0 * (chunks + 2), *streams[0].resolution, seed=i) for i in range(n)]
    step = int(streams[0].spec.sample_rate * 2)

    def camera(i: int, ks, barrier) -> None:
        barrier.wait()
        for k in ks:
            streams[i].append_chunk(clips[i].frames[4 * k:4 * k + 4], clips[i].pcm[step * k:step * (k + 1)])

    seen = None
    for phase in (range(2), range(2, chunks + 2)):                 # warm-up (a chunk waits for the next's audio)
        barrier = threading.Barrier(n)
        threads = [threading.Thread(target=camera, args=(i, phase, barrier)) for i in range(n)]
        if phase.start:
            seen = _time_calls(pool)
        before = dict(pool.scheduler.calls)
        wall, cpu = time.perf_counter(), sum(os.times()[:2])
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall, cpu = time.perf_counter() - wall, sum(os.times()[:2]) - cpu
    calls = {kind: [(rows, round(sec * 1e3, 2)) for rows, sec in got] for kind, got in seen["calls"].items()}
    counts = {k: v - before.get(k, 0) for k, v in pool.scheduler.calls.items()}
    print(json.dumps({"wall": wall, "cpu": cpu, "chunks_per_s": n * chunks / wall, "cores": cpu / wall,
                      "calls": calls, "alone_ms": _alone_ms(pool, seen), "counts": counts,
                      "load": os.getloadavg()[0]}))


def _call_summary(r: dict, kind: str) -> str:
    got = r["calls"].get(kind, [])
    if not got:
        return "-"
    rows = np.array([g[0] for g in got])
    ms = np.array([g[1] for g in got])
    alone = r["alone_ms"].get(kind)
    alone = f", alone {alone:.1f}" if alone is not None else ""
    return f"{len(got)} calls of {rows.mean():.1f} rows: {np.median(ms):.1f} ms{alone} ({ms.sum() / rows.sum():.1f} ms/chunk)"


def _random_feeds(graph, dims, batch: int | None, rng) -> dict:
    """Feeds of `graph` (a one-chunk graph: batch None; a batched form: its batch_size) with whole-chunk valid counts."""
    full = {"valid_frames": dims.window_frames, "valid_grids": dims.grids_per_chunk,
            "valid_audio_tokens": dims.window_audio_tokens}
    feeds = {}
    for t in graph.inputs:
        shape = [batch if size == "batch_size" else size for size in t.shape]
        if t.name in full:
            feeds[t.name] = np.full(shape, full[t.name], np.int64)
        elif t.dtype == "int64":
            feeds[t.name] = np.broadcast_to(np.arange(shape[-1]), shape).astype(np.int64).copy()
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def graph_calls_alone(folder: Path, repeats: int = 5) -> None:
    """Each chunk graph alone, side by side: the one-chunk graph once and 4 times against its batched form at B = 1
    and B = 4 (median ms; min over 3 alternating rounds), the pool's sessions' thread settings."""
    from omnisift_edge.artifact.folder import ExportFolder
    from omnisift_edge.artifact.onnx_runtime import ort_session
    from omnisift_edge.runtime.chunk_batch import batch_graphs

    export = ExportFolder.open(folder)
    batched, single = batch_graphs(export, 0.25), export.graphs_for(0.25)
    if not batched:
        print("(this export has no batched forms)")
        return
    rng, dims = np.random.default_rng(0), export.manifest.dims
    print("\n| graph, alone | one-chunk x1 | one-chunk x4 | batched B=1 | batched B=4 | B=4 / (x4) |\n|---|---|---|---|---|---|")
    for role, graph in batched.items():
        one, many = ort_session(export.file(single[role].file)), ort_session(export.file(graph.file))
        feeds1, feeds_b1, feeds_b4 = (_random_feeds(single[role], dims, None, rng), _random_feeds(graph, dims, 1, rng),
                                      _random_feeds(graph, dims, 4, rng))
        ways = {"x1": lambda: one.run(None, feeds1), "x4": lambda: [one.run(None, feeds1) for _ in range(4)],
                "b1": lambda: many.run(None, feeds_b1), "b4": lambda: many.run(None, feeds_b4)}
        ms = {k: [] for k in ways}
        for _ in range(3):
            for k, fn in ways.items():
                fn()
                seconds = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    fn()
                    seconds.append(time.perf_counter() - start)
                ms[k].append(float(np.median(seconds)) * 1e3)
        ms = {k: min(v) for k, v in ms.items()}
        print(f"| {role} | {ms['x1']:.1f} ms | {ms['x4']:.1f} ms | {ms['b1']:.1f} ms | {ms['b4']:.1f} ms | "
              f"x{ms['b4'] / ms['x4']:.2f} |", flush=True)


def report_burst(name: str, folder: Path, args) -> None:
    """4 cameras pushing chunks together through one pool, chunk batching on / off (/ with prefills), alternating."""
    ways = args.burst_ways.split(",")
    print(f"\n### {name}: 4 cameras pushing {args.burst} chunks each at the same moment, as fast as taken "
          f"(batch_gather_seconds {args.batch_gather:g})")
    print("| way | chunks/s | CPU s per chunk | cores used | load | vision encoder | audio encoder | compressor | "
          "prefill |\n|---|---|---|---|---|---|---|---|---|")
    for round_ in range(args.burst_rounds):
        for mode in ways if round_ % 2 == 0 else ways[::-1]:
            done = subprocess.run([sys.executable, __file__, "--burst-child", mode, "4", str(folder),
                                   str(args.max_context), str(args.burst), str(args.batch_gather)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"the {mode} burst child failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            stages = " | ".join(_call_summary(r, k) for k in ("vision_encoder", "audio_encoder", "compressor", "prefill"))
            print(f"| {mode} | {r['chunks_per_s']:.2f} | {r['cpu'] / (4 * args.burst):.3f} | {r['cores']:.2f} | "
                  f"{r['load']:.1f} | {stages} |", flush=True)
    graph_calls_alone(folder)


class _Search:
    """One way's search for the largest N held: doubling from --camera-start, then bisection to within 1/8."""

    def __init__(self, mode: str, start: int, limit: int):
        self.mode, self.limit, self.n = mode, limit, min(start, limit)
        self.held, self.failed, self.done = 0, None, False

    def record(self, held: bool) -> None:
        if held:
            self.held = self.n
        else:
            self.failed = self.n
        if self.failed is None:
            self.done = self.n >= self.limit
            self.n = min(2 * self.n, self.limit)
        elif self.failed - self.held <= max(1, self.held // 8):
            self.done = True
        else:
            self.n = (self.held + self.failed) // 2


def report_cameras(name: str, folder: Path, args) -> None:
    """Both ways searched in lockstep: each round runs the pool's next trial and the separate sessions' back
    to back (alternating which goes first), so the machine's load falls on both alike."""
    print(f"\n### {name}: cameras held at real time ({args.hold_seconds:g} s of 2-s chunks at real pace each)")
    print("| way | cameras | held | late chunks | p50 latency | max latency | RSS |")
    print("|---|---|---|---|---|---|---|")
    searches = [_Search(way, args.camera_start, args.separate_camera_limit if way == "separate" else args.camera_limit)
                for way in args.camera_ways.split(",")]
    round_ = 0
    while not all(s.done for s in searches):
        for search in searches[::1 if round_ % 2 == 0 else -1]:
            if search.done:
                continue
            result = hold(search.mode, search.n, folder, args.max_context, args.hold_seconds)
            print(f"| {search.mode} | {search.n} | {'yes' if result['held'] else 'no'} | {result['late']}/"
                  f"{result['chunks']} | {result['p50']:.2f} s | {result['max']:.2f} s | {result['rss']:.0f} MiB |",
                  flush=True)
            search.record(result["held"])
        round_ += 1
    held = {s.mode: s.held for s in searches}
    pooled, separate = held.get("pool", 0), held.get("separate", 0)
    ratio = f"x{pooled / separate:.2f}" if separate else "(separate sessions held none)"
    if "pool-batched" in held:
        print(f"{name}: the pool with chunk batching on holds {held['pool-batched']}")
    for search in searches:
        if search.held == search.limit:
            print(f"({search.mode}: held at the search limit {search.limit}; the real count may be higher)")
    print(f"\n{name}: pool holds {pooled} cameras, one session per camera {separate}: {ratio} (goal: at least 2x)")


def chunk_stages(folder: Path, max_context: int, repeats: int = 5) -> None:
    """Where one stream's chunk time goes (median ms per stage), and what batching 4 chunks' prefills could
    buy: one decoder call of 4 x K new rows over the past (batch 1: what GroupQueryAttention allows) against
    4 calls of K rows, timed alternately on the same cache (its length put back after each)."""
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    session = OmniSession(RuntimeConfig(folder, max_context=max_context))
    clip = synthetic_clip(2.0 * (repeats + 1), *session.resolution, seed=0)
    session.append_chunk(clip.frames, clip.pcm)
    stages = {k: np.median([r.seconds.get(k, 0.0) for r in session.reports[1:]]) * 1e3 for k in
              session.reports[0].seconds}
    kv, k = session.stream.kv, session.reports[-1].kept_video + session.reports[-1].kept_audio
    width, length = session.stream.embed_table.shape[1], kv.length
    embeds = np.random.default_rng(0).standard_normal((1, 4 * k, width)).astype(np.float32)
    positions = np.arange(length, length + 4 * k).reshape(1, 1, -1).repeat(3, 0)          # [3, 1, 4K]
    one, four = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        kv.step(embeds, positions, False)
        one.append(time.perf_counter() - start)
        kv.length = length
        start = time.perf_counter()
        for j in range(4):
            kv.step(embeds[:, j * k:(j + 1) * k], positions[..., j * k:(j + 1) * k], False)
        four.append(time.perf_counter() - start)
        kv.length = length
    print("chunk stages, median ms: " + ", ".join(f"{name} {ms:.1f}" for name, ms in stages.items()))
    print(f"prefill of 4 chunks' {4 * k} kept tokens over a {length}-token past: one call {np.median(one) * 1e3:.1f} "
          f"ms, 4 calls of {k} {np.median(four) * 1e3:.1f} ms (x{np.median(four) / np.median(one):.2f})")


def kv_slot_mib(folder: Path, max_context: int) -> float:
    from omnisift_edge.artifact.folder import ExportFolder

    export = ExportFolder.open(folder)
    d = export.manifest.dims
    return 2 * d.num_layers * d.kv_heads * d.head_dim * (max_context + 1) * np.dtype(export.float_type).itemsize / 2**20


def export_model(name: str, work: Path, resolution, max_context: int) -> Path:
    from omnisift_edge.export.stage import ExportConfig, export
    from omnisift_edge.model.load import ModelSource

    source = ModelSource()
    if name == "mid":
        from streaming import FULL, write_thinker_folder

        source = ModelSource(path=write_thinker_folder(work / "mid-model", FULL))
    out = work / f"{name}-export"
    if (out / "manifest.json").exists():                     # --work: an export made by an earlier run
        return out
    export(ExportConfig(out=out, source=source, ratios=(0.25,), resolution=resolution, max_context=max_context))
    return out


def report(name: str, folder: Path, args, counts) -> None:
    slot = kv_slot_mib(folder, args.max_context)
    print(f"\n### {name}: KV slot {slot:.1f} MiB per stream (planned)")
    if counts:
        print("| open streams | separate sessions RSS | pool RSS | pool: MiB per added stream |")
        print("|---|---|---|---|")
    first = None
    for n in counts:
        pooled = measure_rss("pool", n, folder, args.max_context, args.backend)
        separate = f"{measure_rss('separate', n, folder, args.max_context, args.backend):.0f} MiB" \
            if n <= args.separate_max \
            else "(not run: memory of the shared machine)"
        first = pooled if first is None else first
        per = "" if n == counts[0] else f"{(pooled - first) / (n - counts[0]):.1f}"
        print(f"| {n} | {separate} | {pooled:.0f} MiB | {per} |", flush=True)
    one, _ = decode_rate(folder, args.max_context, args.tokens, 1, args.backend)
    four, calls = decode_rate(folder, args.max_context, args.tokens, 4, args.backend)
    print(f"\ndecode, {args.tokens} tokens per answer: 1 stream {one:.1f} tok/s; 4 streams at once {four:.1f} tok/s "
          f"(x{four / one:.2f}); 4 streams' {calls['decode_steps']} steps in {calls['decode_batches']} decoder calls; "
          f"a 4-row decode call: {calls['in_place_ms']:.1f} ms in place (median), {calls['alone_ms']:.1f} ms alone")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--burst-child":
        burst_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--hold-child":
        hold_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,mid")
    parser.add_argument("--resolution", default="224x224")
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--separate-max", type=int, default=8, help="largest N run as separate sessions")
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the exports in this folder")
    parser.add_argument("--stages", action="store_true", help="time a chunk's stages and a 4-chunk prefill instead")
    parser.add_argument("--burst", type=int, default=0, help="chunk throughput (N chunks per camera) instead")
    parser.add_argument("--burst-ways", default="on,off", help=f"--burst: pools compared ({', '.join(BURST_WAYS)})")
    parser.add_argument("--burst-rounds", type=int, default=2, help="--burst: rounds of every way (alternating)")
    parser.add_argument("--batch-gather", type=float, default=0.02,
                        help="--burst: the scheduler's batch_gather_seconds (how long a batch waits for the others)")
    parser.add_argument("--cameras", action="store_true", help="search the cameras held at real time instead")
    parser.add_argument("--hold-seconds", type=float, default=20.0, help="media per camera in a --cameras trial")
    parser.add_argument("--camera-start", type=int, default=1, help="first N a --cameras search tries")
    parser.add_argument("--camera-limit", type=int, default=64, help="largest N a --cameras search tries (pool)")
    parser.add_argument("--camera-ways", default="pool,separate",
                        help="--cameras: ways searched in lockstep (pool, pool-batched: chunk batching on, separate)")
    parser.add_argument("--separate-camera-limit", type=int, default=64,
                        help="largest N tried as separate sessions (each holds its own graphs: memory)")
    args = parser.parse_args()
    resolution = tuple(int(x) for x in args.resolution.split("x"))
    counts = [int(x) for x in args.streams.split(",") if x]      # --streams "": decode throughput only
    print(f"{platform.node()}, {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"{dt.date.today()}, {args.backend} cpu, {args.resolution}, ratio 0.25, max_context {args.max_context}")
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        for name in args.models.split(","):
            folder = export_model(name, args.work or Path(tmp), resolution, args.max_context)
            title = "embedded default" if name == "default" else "random thinker 512 x 12"
            if args.stages:
                print(f"\n### {title}")
                chunk_stages(folder, args.max_context)
            elif args.burst:
                report_burst(title, folder, args)
            elif args.cameras:
                report_cameras(title, folder, args)
            else:
                report(title, folder, args, counts)


if __name__ == "__main__":
    main()
