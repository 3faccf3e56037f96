"""Train stage: fit OmniSIFT's audio selector (and optionally the thinker LLM) with the
straight-through estimator on video question-answer pairs. `train(TrainConfig) -> TrainArtifact`.

Importing this package is cheap (no torch): `TrainConfig` validates a run before anything loads,
and `train` imports torch, transformers and PyAV when it is called.
"""

from __future__ import annotations

from omnisift_edge.train.config import BadLine, TrainArtifact, TrainConfig

__all__ = ["BadLine", "TrainArtifact", "TrainConfig", "train"]


def train(cfg: TrainConfig, **kwargs) -> TrainArtifact:
    """Run `cfg` (see omnisift_edge.train.loop.train for the keyword arguments)."""
    from omnisift_edge.train.loop import train as _train

    return _train(cfg, **kwargs)
