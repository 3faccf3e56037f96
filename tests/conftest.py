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


@pytest.fixture(scope="session")
def small_export(tmp_path_factory):
    """`small_export(ratios=..., resolution=..., **ExportConfig fields) -> folder`: the embedded default
    exported once per distinct setting for the whole run (112x84 by default: seconds, not minutes).

    The folders are shared: a test that changes files copies the folder first.
    """
    made = {}

    def make(ratios=(1.0, 0.25), resolution=(112, 84), **fields):
        key = (tuple(ratios), tuple(resolution), tuple(sorted(fields.items())))
        if key not in made:
            from omnisift_edge.export.stage import ExportConfig, export

            out = tmp_path_factory.mktemp("export") / "export"
            export(ExportConfig(out=out, ratios=tuple(ratios), resolution=tuple(resolution), **fields))
            made[key] = out
        return made[key]

    return make


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return _cuda_available()


def _tensorrt_rtx_available() -> bool:
    try:
        import tensorrt_rtx  # noqa: F401
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` / `trt` / `rtx` tests with the reason where CUDA, TensorRT or TensorRT-RTX is missing."""
    cuda, trt, rtx = _cuda_available(), None, None
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False"))
        if "trt" in item.keywords:
            trt = _tensorrt_available() if trt is None else trt
            if not trt:
                item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU (import tensorrt failed)"))
        if "rtx" in item.keywords:
            rtx = _tensorrt_rtx_available() if rtx is None else rtx
            if not rtx:
                item.add_marker(pytest.mark.skip(reason="needs TensorRT-RTX: import tensorrt_rtx failed "
                                                        "(pip install 'omnisift-edge[rtx]')"))
