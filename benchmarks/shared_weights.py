"""Export folder size and export time with and without the shared-weights pass (issue 11).

Each model is exported twice into a scratch folder, once with `export/build.py`'s pass replaced
by a no-op (the folder as it was before: decoder.onnx and decoder_gqa.onnx each holding the LLM's
weights) and once as shipped (one `shared_weights.data`), `--repeats` times each in turn (the
fastest shown: the machine is shared); the pass is also timed on its own on a copy of the first
folder. Models: the embedded default, and the mid-size random thinker
benchmarks/streaming.py builds (512 wide, 12 layers; seeded, no download).

    python benchmarks/shared_weights.py [--models default,mid] [--resolution 224x224] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def export_once(source, out: Path, resolution: tuple[int, int], share: bool) -> float:
    from contextlib import nullcontext
    from unittest import mock

    from omnisift_edge.export import build
    from omnisift_edge.export.stage import ExportConfig, export

    start = time.perf_counter()
    with nullcontext() if share else mock.patch.object(build, "_share_weights", lambda folder, manifest: None):
        export(ExportConfig(out=out, source=source, ratios=(1.0, 0.25), resolution=resolution, overwrite=True))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,mid")
    parser.add_argument("--resolution", default="224x224")
    parser.add_argument("--repeats", type=int, default=2, help="exports of each kind, in turn; the fastest is shown")
    args = parser.parse_args()
    resolution = tuple(int(x) for x in args.resolution.split("x"))

    from omnisift_edge.export.shared_weights import share_weights
    from omnisift_edge.model.load import ModelSource
    from streaming import FULL, write_thinker_folder

    work = Path(tempfile.mkdtemp(prefix="shared-weights-bench-"))
    print(f"{platform.node()}, {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"{dt.date.today()}, resolution {resolution[0]}x{resolution[1]}")
    print("| model | folder before | folder after | shared_weights.data | export before | export after | pass alone |")
    print("|---|---|---|---|---|---|---|")
    try:
        for name in args.models.split(","):
            if name == "default":
                source = ModelSource()
            else:
                source = ModelSource(path=write_thinker_folder(work / "mid-model", FULL))
            before, after = work / f"{name}-before", work / f"{name}-after"
            times = {False: [], True: []}
            for share in (False, True) * args.repeats:   # in turn: the first export of a process pays warm-up
                times[share].append(export_once(source, after if share else before, resolution, share))
            t_before, t_after = min(times[False]), min(times[True])
            copy = work / f"{name}-copy"
            shutil.copytree(before, copy)
            start = time.perf_counter()
            shared = share_weights(copy)
            t_pass = time.perf_counter() - start
            mb = 2**20
            label = "embedded default" if name == "default" else f"random thinker {FULL.hidden} x {FULL.layers}"
            print(f"| {label} | {folder_bytes(before) / mb:.1f} MiB | {folder_bytes(after) / mb:.1f} MiB | "
                  f"{shared.file_bytes / mb:.1f} MiB ({shared.tensors} tensors, {shared.references} references) | "
                  f"{t_before:.1f} s | {t_after:.1f} s | {t_pass:.2f} s |", flush=True)
            for folder in (before, after, copy):
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
