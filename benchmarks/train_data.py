"""Training throughput with the clips decoded in the main thread against decoded ahead by workers.

`train()` decodes each step's clips (PyAV, resize, log-mel) on `--workers` threads while the
previous step trains. This runs the same short training twice per round, `workers=0` and
`workers=N` alternating (the machine is shared and noisy), on generated mp4 clips and the
embedded default, and prints seconds per step and their ratio. The two runs must end with the same
selector (checked), since the workers change when clips decode, not which.

    python benchmarks/train_data.py [--clips 8] [--seconds 6] [--resolution 448x448] [--steps 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # the generated clips come from the tests

from omnisift_edge.train import TrainConfig, train  # noqa: E402
from tests.train.tasks import event_clip, write_mp4  # noqa: E402


def write_data(folder: Path, clips: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(clips):
        frames, pcm, _, answer = event_clip(rng, seconds=seconds, size=448)
        write_mp4(folder / f"c{i}.mp4", frames, pcm)
        lines.append(json.dumps({"video": f"c{i}.mp4", "question": "Which sound?", "answer": answer}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def timed_run(data: Path, out: Path, args, workers: int) -> tuple[float, float, dict]:
    """(median seconds per step after the first, seconds until the first step ended, the selector's tensors)."""
    cfg = TrainConfig(data=data, out=out, resolution=args.resolution, max_steps=args.steps, batch_size=args.batch,
                      lr=1e-3, save_every=0, workers=workers)
    started = time.perf_counter()
    marks = []
    artifact = train(cfg, progress=lambda _: None, bar=False, on_step=lambda _: marks.append(time.perf_counter()))
    steps = np.diff(marks)                                  # step k's end to step k+1's end: decode + train
    return float(statistics.median(steps)), marks[0] - started, _tensors(artifact.compressor)


def _tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; embedded default, "
          f"{args.clips} clips of {args.seconds:g} s at {args.resolution}, batch {args.batch}, {args.steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_data(tmp, args.clips, args.seconds)
        results: dict[int, list[tuple[float, float]]] = {0: [], args.workers: []}
        selectors = {}
        for r in range(args.rounds):
            for workers in (0, args.workers) if r % 2 == 0 else (args.workers, 0):
                step, check, selector = timed_run(data, tmp / f"out-{r}-{workers}", args, workers)
                results[workers].append((step, check))
                selectors.setdefault(workers, selector)
        a, b = selectors[0], selectors[args.workers]
        differ = [k for k in a if not np.array_equal(a[k], b[k])]
        assert not differ, f"the workers changed the trained selector: {differ}"
    step0 = statistics.median(s for s, _ in results[0])
    stepn = statistics.median(s for s, _ in results[args.workers])
    check0 = statistics.median(c for _, c in results[0])
    checkn = statistics.median(c for _, c in results[args.workers])
    print(f"seconds per step (median of {args.rounds} runs): workers=0 {step0:.3f}, workers={args.workers} "
          f"{stepn:.3f} -> {step0 / stepn:.2f}x")
    print(f"model load + data check + first step (s): workers=0 {check0:.2f}, workers={args.workers} {checkn:.2f} -> "
          f"{check0 / checkn:.2f}x")
    print("same selector with and without workers: yes")


if __name__ == "__main__":
    main()
