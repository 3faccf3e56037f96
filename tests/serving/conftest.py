"""One export of the embedded default (56x56, ratio 0.25) shared by the serving tests."""

from __future__ import annotations

import pytest

RES = (56, 56)


@pytest.fixture(scope="session")
def serving_export(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("optimum.exporters.onnx")
    from omnisift_edge.export.stage import ExportConfig, export

    out = tmp_path_factory.mktemp("serve") / "export"
    export(ExportConfig(out=out, ratios=(0.25,), resolution=RES))
    return out
