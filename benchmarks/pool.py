"""Many cameras on one copy of the model (issue 23): memory per stream and batched decode throughput.

For each model (the embedded default, and the 512-wide 12-layer random thinker of
benchmarks/streaming.py), exported once at --resolution, ratio 0.25, --max-context:

- resident memory (VmRSS, each configuration in a fresh child process) with N = 1, 2, 4, 8 open
  streams, each fed one 2-s chunk: N separate `OmniSession`s against one `open_pool(max_streams=8)`
  with N streams; the pool's KV slots are allocated up front, so its cost per stream is the
  activations and its slot, planned as kv bytes per token x (max_context + 1) x layers;
- aggregate decode tokens/s of 4 streams answering at once (4 threads, one pool: their decode steps
  share decoder calls) against one stream answering alone in the same pool, side by side.

    python benchmarks/pool.py [--models default,mid] [--resolution 224x224] [--max-context 1024] [--tokens 32]
                              [--backend onnxruntime|torch]
"""

from __future__ import annotations

import argparse
import datetime as dt
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
    pool.close()
    return sum(counts) / wall, calls


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
          f"(x{four / one:.2f}); 4 streams' {calls['decode_steps']} steps in {calls['decode_batches']} decoder calls")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,mid")
    parser.add_argument("--resolution", default="224x224")
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--separate-max", type=int, default=8, help="largest N run as separate sessions")
    args = parser.parse_args()
    resolution = tuple(int(x) for x in args.resolution.split("x"))
    counts = [int(x) for x in args.streams.split(",") if x]      # --streams "": decode throughput only
    print(f"{platform.node()}, {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"{dt.date.today()}, {args.backend} cpu, {args.resolution}, ratio 0.25, max_context {args.max_context}")
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        for name in args.models.split(","):
            folder = export_model(name, Path(tmp), resolution, args.max_context)
            report("embedded default" if name == "default" else "random thinker 512 x 12", folder, args, counts)


if __name__ == "__main__":
    main()
