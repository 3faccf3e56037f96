"""Shared fixtures: one seeded tiny model for the whole run, built in-process (no downloads)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    """The embedded default (seed 0), fp32, eval mode."""
    from omnisift_edge.model.load import ModelSource, load_model

    return load_model(ModelSource())


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """The embedded default written as the three folder kinds: {'full', 'thinker', 'omnisift'}."""
    from omnisift_edge.model.tiny import CHECKPOINT_KINDS, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: write_tiny_checkpoint(root / kind, kind, shard_bytes=8 << 20) for kind in CHECKPOINT_KINDS}
