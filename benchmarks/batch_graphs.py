"""What the batched graphs cost an export (issue 23): `export` of the embedded default with and without
--batch-graphs, side by side in one run (alternating, so the machine's load hits both alike), and the time of
each step (the batched graphs' export + check steps are named after them).

    python -m benchmarks.batch_graphs --resolution 448x448 --ratios 0.25 --rounds 3
    python -m benchmarks.batch_graphs --calls EXPORT_DIR --streams 4     # run time instead (below)

One unmeasured export first (imports, first model build). Prints each run's wall time, the ratio of the
medians (with / without), the batched steps' seconds, and the folder sizes (their weights are shared, so
the folder grows by the graphs' protos only). Results: docs/benchmarks.md.

`--calls DIR [DIR ...]`: what a batch saves at run time in ONNX Runtime (CPU): per graph, B chunks as one
batched call against B one-chunk calls, and the batched form at B = 1 against the one-chunk graph, wall and
CPU ms (the process's CPU time: less sensitive to a loaded machine than wall time), all folders and ways
interleaved round by round in one process (several folders: e.g. an export of main against one of a branch),
on the export's generated reference inputs (distinct random chunks; the compressor's own example rows).
Exports of the embedded default and the 512 x 12 random thinker: `benchmarks/pool.py --work DIR` keeps them.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path


def one_export(out: Path, resolution: tuple[int, int], ratios: tuple[float, ...], batch: bool) -> tuple[float, dict]:
    """(seconds, step -> seconds) of one export of the embedded default into `out`."""
    from omnisift_edge.export.stage import ExportConfig, export

    steps, last = {}, [None, time.perf_counter()]

    def progress(step: str) -> None:
        now = time.perf_counter()
        if last[0] is not None:
            steps[last[0]] = steps.get(last[0], 0.0) + now - last[1]
        last[:] = [step, now]

    started = time.perf_counter()
    export(ExportConfig(out=out, ratios=ratios, resolution=resolution, batch_graphs=batch), progress=progress)
    seconds = time.perf_counter() - started
    steps[last[0]] = steps.get(last[0], 0.0) + time.perf_counter() - last[1]
    return seconds, steps


def chunk_feeds(manifest, graph: str, streams: int) -> tuple[list[dict], dict]:
    """(B one-chunk feeds, the batched graph's feed of the same B rows) for one of the export's graphs."""
    import numpy as np
    import torch

    from omnisift_edge.export.batch_graphs import stack_chunks
    from omnisift_edge.export.compressor import case_inputs
    from omnisift_edge.export.encoders import example_features, example_pixels

    dims, key = manifest.dims, graph if graph != "compressor" else manifest.ratios[0].graph
    single, batched = manifest.graph(key), manifest.graph(key.replace("compressor_r", "compressor_batch_r")
                                                          if graph == "compressor" else f"{graph}_batch")
    if graph == "vision_encoder":
        rows = [{"pixel_values": example_pixels(dims, seed=s).numpy()} for s in range(streams)]
        return rows, {"pixel_values": np.stack([r["pixel_values"] for r in rows])}, single, batched
    if graph == "audio_encoder":
        rows = [{"input_features": example_features(dims, seed=s).numpy(), "valid_frames": np.array([200])}
                for s in range(streams)]
        return rows, {"input_features": np.stack([r["input_features"] for r in rows]),
                      "valid_frames": np.full(streams, 200)}, single, batched
    kept = dataclasses.replace(dims, kept_tokens=manifest.ratios[0].kept_total)
    tensors = [case_inputs(kept, torch.float32, s) for s in range(streams)]
    rows = [dict(zip(single.input_names, (t.numpy() for t in r))) for r in tensors]
    return rows, dict(zip(batched.input_names, (t.numpy() for t in stack_chunks(tensors)))), single, batched


GRAPHS = ("vision_encoder", "audio_encoder", "compressor")
WAYS = ("x1", "x4", "b1", "b4")   # one-chunk graph once, 4 times (4 rows); batched form at B = 1, at B = 4


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms of this process: all ONNX Runtime threads) of `repeats` calls after one."""
    import numpy as np

    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        started, used = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - used)
    return float(np.median(wall)) * 1e3, float(np.median(cpu)) * 1e3


def _ways(folder: Path, graph: str, streams: int) -> dict:
    """way -> a call: `streams` one-chunk calls (x4), one batched call of as many rows (b4), and both at one row."""
    from omnisift_edge.artifact.manifest import load_manifest
    from omnisift_edge.artifact.onnx_runtime import ort_session

    rows, feed, single, batched = chunk_feeds(load_manifest(folder, verify=False), graph, streams)
    one, many = ort_session(folder / single.file), ort_session(folder / batched.file)
    first = {k: v[:1] if k != "chunk_position_ids" else v[:, :1] for k, v in feed.items()}   # B = 1: row 0
    return {"x1": lambda: one.run(None, rows[0]), "x4": lambda: [one.run(None, r) for r in rows],
            "b1": lambda: many.run(None, first), "b4": lambda: many.run(None, feed)}


def calls(folders: list[Path], streams: int, repeats: int, rounds: int = 3) -> None:
    """Per export folder and graph: B one-chunk calls against one batched call of B chunks, and the batched form
    at B = 1 against the one-chunk graph, side by side in one process (every folder's and way's timings
    interleaved round by round; min over rounds of the median ms, wall and CPU), the pool's session settings."""
    import os

    ways = {(f, g): _ways(f, g, streams) for f in folders for g in GRAPHS}
    wall = {key: {w: [] for w in WAYS} for key in ways}
    cpu = {key: {w: [] for w in WAYS} for key in ways}
    for _ in range(rounds):
        for key, fns in ways.items():
            for way in WAYS:
                w, c = _timed(fns[way], repeats)
                wall[key][way].append(w)
                cpu[key][way].append(c)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after the run; B = {streams}; ms: wall (CPU)")
    print(f"| export | graph | one-chunk x1 | one-chunk x{streams} | batched B=1 | batched B={streams} | "
          f"B={streams} / x{streams} wall | CPU | B=1 / x1 wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (folder, graph) in ways:
        w = {k: min(v) for k, v in wall[(folder, graph)].items()}
        c = {k: min(v) for k, v in cpu[(folder, graph)].items()}
        cells = " | ".join(f"{w[k]:.1f} ({c[k]:.1f})" for k in WAYS)
        print(f"| {folder.parent.name}/{folder.name} | {graph} | {cells} | x{w['b4'] / w['x4']:.2f} | x{c['b4'] / c['x4']:.2f} | "
              f"x{w['b1'] / w['x1']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--ratios", default="0.25")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=Path, nargs="+", default=None,
                        help="export folders: time the calls instead (several: side by side, e.g. before / after)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--call-rounds", type=int, default=3, help="--calls: rounds (all folders and ways in each)")
    args = parser.parse_args()
    if args.calls is not None:
        return calls(args.calls, args.streams, args.repeats, args.call_rounds)
    h, w = (int(v) for v in args.resolution.split("x"))
    ratios = tuple(float(r) for r in args.ratios.split(","))
    times = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        one_export(Path(tmp) / "warmup", (h, w), ratios, True)   # imports, the model's first build: not measured
        for round_ in range(args.rounds):
            for batch in ((True, False) if round_ % 2 == 0 else (False, True)):
                out = Path(tmp) / f"r{round_}-{batch}"
                seconds, steps = one_export(out, (h, w), ratios, batch)
                times[batch].append(seconds)
                size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                batched = {k: round(v, 2) for k, v in steps.items() if "batch" in k}
                print(f"round {round_} batch_graphs={batch}: {seconds:.1f} s, folder {size / 2**20:.1f} MiB"
                      + (f", batched steps {batched} = {sum(batched.values()):.1f} s" if batched else ""))
    with_, without = statistics.median(times[True]), statistics.median(times[False])
    print(f"median {with_:.1f} s with --batch-graphs, {without:.1f} s without: {with_ / without:.2f}x "
          f"(+{with_ - without:.1f} s) at {args.resolution}, ratios {args.ratios}")


if __name__ == "__main__":
    main()
