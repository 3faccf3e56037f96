"""The learning test over selector seeds and LLM modes: `python -m benchmarks.train_learning_sweep` from the repo root (minutes).

Prints one row per run: held-out loss and the kept fraction of event audio tokens before -> after.
docs/train.md quotes its output.
"""

from __future__ import annotations

import sys

from omnisift_edge.model.load import ModelSource, load_model

from tests.train.tasks import event_dataset, learning_run


def main(seeds=range(8)) -> None:
    data = event_dataset(load_model(ModelSource()), 256 + 64)
    runs = [("full (joint, the authors')", dict(llm="full"))]
    runs.append(("frozen after LLM pretraining", dict(llm="frozen", pretrain_steps=60)))
    print("| LLM | selector seed | held-out loss | event tokens kept | all audio kept |\n|---|---|---|---|---|")
    for name, kwargs in runs:
        for seed in seeds:
            r = learning_run(data, selector_seed=seed, **kwargs)
            (l0, e0, _), (l1, e1, a1) = r["before"], r["after"]
            print(f"| {name} | {seed} | {l0:.3f} -> {l1:.4f} | {e0:.1%} -> {e1:.1%} | {a1:.1%} |", flush=True)


if __name__ == "__main__":
    main(range(int(sys.argv[1])) if len(sys.argv) > 1 else range(8))
