"""What the batched graphs cost an export (issue 23): `export` of the embedded default with and without
--batch-graphs, side by side in one run (alternating, so the machine's load hits both alike), and the time of
each step (the batched graphs' export + check steps are named after them).

    python -m benchmarks.batch_graphs --resolution 448x448 --ratios 0.25 --rounds 3
    python -m benchmarks.batch_graphs --calls EXPORT_DIR --streams 4     # run time instead (below)

One unmeasured export first (imports, first model build). Prints each run's wall time, the ratio of the
medians (with / without), the batched steps' seconds, and the folder sizes (their weights are shared, so
the folder grows by the graphs' protos only). Results: docs/benchmarks.md.

`--calls DIR`: what a batch saves at run time in ONNX Runtime (CPU): per graph, B chunks as one batched
call against B one-chunk calls, side by side (alternating, best of --repeats each), on the export's
generated reference inputs (random chunks; the compressor's own example rows).
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


def calls(folder: Path, streams: int, repeats: int) -> None:
    """Print, per graph, B one-chunk calls against one batched call of B chunks (ms, best of `repeats`)."""
    from omnisift_edge.artifact.manifest import load_manifest
    from omnisift_edge.artifact.onnx_runtime import ort_session

    manifest = load_manifest(folder, verify=False)
    for graph in ("vision_encoder", "audio_encoder", "compressor"):
        rows, feed, single, batched = chunk_feeds(manifest, graph, streams)
        one, many = ort_session(folder / single.file), ort_session(folder / batched.file)
        best = {"one": float("inf"), "batch": float("inf")}
        for _ in range(repeats):
            for name, run in (("one", lambda: [one.run(None, r) for r in rows]), ("batch", lambda: many.run(None, feed))):
                started = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - started)
        print(f"{graph}: {streams} one-chunk calls {best['one'] * 1e3:.1f} ms, one call of {streams} chunks "
              f"{best['batch'] * 1e3:.1f} ms: {best['one'] / best['batch']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--ratios", default="0.25")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=Path, default=None, help="an export folder: time the calls instead")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.calls is not None:
        return calls(args.calls, args.streams, args.repeats)
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
