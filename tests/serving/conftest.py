"""One export of the embedded default (56x56, ratio 0.25) shared by the serving tests (tests/conftest.py's)."""

from __future__ import annotations

import pytest

RES = (56, 56)


@pytest.fixture(scope="session")
def serving_export(small_export):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("optimum.exporters.onnx")
    return small_export(ratios=(0.25,), resolution=RES)
