"""What the batched graphs cost an export (issue 23): `export` of the embedded default with and without
--batch-graphs, side by side in one run (alternating, so the machine's load hits both alike), and the time of
each step (the batched graphs' export + check steps are named after them).

    python -m benchmarks.batch_graphs --resolution 448x448 --ratios 0.25 --rounds 3

One unmeasured export first (imports, first model build). Prints each run's wall time, the ratio of the medians (with / without), the batched steps' seconds, and the
folder sizes (their weights are shared, so the folder grows by the graphs' protos only).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--ratios", default="0.25")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
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
