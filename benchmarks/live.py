"""Live streams: lag, drops and capture CPU at real pace, and lag staying bounded when inference is slower.

Two runs in one process on the same export and the same generated clip, played at its real pace
(`--realtime`, exactly as a camera delivers it):
  real pace  the stream alone: lag median / p95 per chunk, drops, CPU of the capture thread
             (demux, audio resampling, RGB conversion and resize) as % of one core;
  slow       a question with a long answer after every chunk, so inference is slower than real
             time: the queue (2 chunks, policy oldest) drops chunks and the lag stays bounded.

    python benchmarks/live.py [--export DIR] [--resolution 448x448] [--seconds 30]

Without --export it exports the embedded default at --resolution, ratio 0.25, to a temp folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnisift_edge.live.source import SourceConfig  # noqa: E402
from omnisift_edge.live.watch import WatchConfig, watch  # noqa: E402
from omnisift_edge.runtime.session import RuntimeConfig  # noqa: E402
from tests.helpers import write_clip  # noqa: E402


def run(export: Path, clip: Path, seconds: float, slow: bool) -> dict:
    cfg = WatchConfig(runtime=RuntimeConfig(export, ratio=0.25, context_policy="sliding"),
                      source=SourceConfig(str(clip), realtime=True), seconds=seconds, queue=2, drop_policy="oldest",
                      question="Describe everything you see and hear in detail." if slow else None,
                      ask_every=2.0 if slow else None, max_new_tokens=96)
    wall, cpu = time.monotonic(), time.process_time()
    report = watch(cfg)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    lags = np.asarray(report.lags_ms)
    return {"chunks": report.captured, "processed": report.processed, "dropped": report.dropped,
            "lag_p50_ms": float(np.percentile(lags, 50)), "lag_p95_ms": float(np.percentile(lags, 95)),
            "capture_cpu_pct": 100 * report.capture_cpu_s / wall, "process_cpu_pct": 100 * cpu / wall,
            "answers": len(report.answers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=None)
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    h, w = (int(v) for v in args.resolution.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="live-bench-"))
    export = args.export
    if export is None:
        from omnisift_edge.export.stage import ExportConfig
        from omnisift_edge.export.stage import export as do_export

        export = tmp / "export"
        do_export(ExportConfig(out=export, ratios=(0.25,), resolution=(h, w)))
    clip = write_clip(tmp / "clip.mp4", seconds=args.seconds + 4, w=w, h=h, fps=25)
    chunk_ms = 2000.0
    print(f"export {export} ({h}x{w}, ratio 0.25, onnxruntime CPU), {args.seconds:g} s at real pace, 25 fps source")
    print(f"{'run':<10} {'chunks':>6} {'done':>5} {'drops':>5} {'lag p50':>9} {'lag p95':>9} "
          f"{'p95/chunk':>9} {'capture CPU':>11} {'process CPU':>11} {'answers':>7}")
    for name, slow in (("real pace", False), ("slow", True)):
        r = run(export, clip, args.seconds, slow)
        print(f"{name:<10} {r['chunks']:>6} {r['processed']:>5} {r['dropped']:>5} {r['lag_p50_ms']:>7.0f}ms "
              f"{r['lag_p95_ms']:>7.0f}ms {r['lag_p95_ms'] / chunk_ms:>8.2f}x {r['capture_cpu_pct']:>10.1f}% "
              f"{r['process_cpu_pct']:>10.1f}% {r['answers']:>7}")


if __name__ == "__main__":
    main()
