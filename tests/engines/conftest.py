"""One small export of the embedded default for every engines test (112x84, ratios 1 and 0.25)."""

from __future__ import annotations

import shutil

import pytest

RESOLUTION = (112, 84)
RATIOS = (1.0, 0.25)


@pytest.fixture(scope="session")
def engine_export(small_export):
    """A pristine export folder (tests/conftest.py's, shared); tests that change files use `export_copy`."""
    return small_export(ratios=RATIOS, resolution=RESOLUTION)


@pytest.fixture(scope="session")
def engine_manifest(engine_export):
    from omnisift_edge.artifact.manifest import read_manifest

    return read_manifest(engine_export)


@pytest.fixture
def export_copy(engine_export, tmp_path):
    target = tmp_path / "export"
    shutil.copytree(engine_export, target)
    return target


@pytest.fixture(scope="session")
def recorded_export(engine_export, tmp_path_factory):
    """A copy of the export with the ONNX Runtime reference recorded."""
    from omnisift_edge.export.reference import record_reference

    target = tmp_path_factory.mktemp("recorded") / "export"
    shutil.copytree(engine_export, target)
    record_reference(target)
    return target


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail here even where TensorRT is installed."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
