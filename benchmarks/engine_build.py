"""Engine builds: size and build time per graph, export dtype and target, side by side in one run.

Exports the embedded default once per dtype, builds every graph for each target whose flavour is
installed (TensorRT-RTX builds on any machine; a full-TensorRT target needs TensorRT and its GPU,
else it is reported as skipped with the reason), and prints per graph the ONNX size, the engine
size, engine/ONNX and the build time, then the fp16/fp32 ratios of the same graph.

    python benchmarks/engine_build.py --resolution 448x448 --ratios 1,0.5 --dtypes fp32,fp16 --targets rtx
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from omnisift_edge.engines.build import build_engines
from omnisift_edge.engines.plan import BuildConfig
from omnisift_edge.errors import UsageError
from omnisift_edge.export.stage import ExportConfig, export


def onnx_bytes(folder: Path, name: str) -> int:
    """The graph with its weights, wherever they are (its own .data or the shared_weights.data)."""
    from omnisift_edge.artifact.manifest import graph_file_bytes, read_manifest

    return graph_file_bytes(folder, read_manifest(folder, verify=False), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--ratios", default="1,0.5")
    parser.add_argument("--dtypes", default="fp32,fp16")
    parser.add_argument("--targets", default="rtx")
    args = parser.parse_args()
    height, width = (int(x) for x in args.resolution.split("x"))
    ratios = tuple(float(r) for r in args.ratios.split(","))
    print(f"# {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}, "
          f"{args.resolution}, ratios {args.ratios}")
    rows: dict[tuple[str, str, str], tuple[int, int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            folder = Path(tmp) / dtype
            t0 = time.perf_counter()
            try:
                export(ExportConfig(out=folder, ratios=ratios, resolution=(height, width), dtype=dtype))
            except Exception as exc:   # an export that fails its own validation: say so, go on
                print(f"{dtype}: export failed: {str(exc).splitlines()[0][:200]}")
                continue
            print(f"{dtype}: exported in {time.perf_counter() - t0:.1f} s")
            for target in args.targets.split(","):
                try:
                    art = build_engines(BuildConfig(folder, target=target))
                except UsageError as exc:
                    print(f"{dtype} {target}: skipped: {exc}")
                    continue
                print(f"{dtype} {target}: {art.report['flavour']} {art.report['tensorrt']}, compute capability "
                      f"{art.report['compute_capability']}, {art.seconds:.1f} s in all")
                for graph, entry in art.report["engines"].items():
                    rows[(target, graph, dtype)] = (onnx_bytes(folder, entry["onnx"]), entry["bytes"],
                                                    entry["build_seconds"])
    print("\n| target | graph | dtype | ONNX MB | engine MB | engine/ONNX | build s |\n|---|---|---|---|---|---|---|")
    for (target, graph, dtype), (onnx, engine, seconds) in rows.items():
        print(f"| {target} | {graph} | {dtype} | {onnx / 1e6:.2f} | {engine / 1e6:.2f} | {engine / onnx:.2f} | {seconds:.2f} |")
    pairs = [(k, rows[(k[0], k[1], "fp16")]) for k in rows if k[2] == "fp32" and (k[0], k[1], "fp16") in rows]
    if pairs:
        print("\n| target | graph | engine fp16/fp32 | build fp16/fp32 |\n|---|---|---|---|")
        for (target, graph, _), half in pairs:
            full = rows[(target, graph, "fp32")]
            print(f"| {target} | {graph} | {half[1] / full[1]:.2f} | {half[2] / max(full[2], 1e-3):.2f} |")


if __name__ == "__main__":
    main()
