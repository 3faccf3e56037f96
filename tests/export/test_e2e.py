"""The end-to-end export check in fp16 (issue 13.1): `export --dtype fp16` below ratio 1 passes.

The kept sets are compared for identical compressor inputs (the contract); each pipeline through
its own fp16 encoders is recorded as information, since the two backends round differently.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from omnisift_edge.export.stage import ExportConfig, export  # noqa: E402
from omnisift_edge.model.load import ModelSource  # noqa: E402


@pytest.mark.parametrize("resolution, ratios", [
    ((224, 224), (0.5,)),                                              # failed kept_equal before
    pytest.param((448, 448), (1.0, 0.5, 0.35, 0.25), marks=pytest.mark.slow),   # docs/engines.md's export
])
def test_fp16_export_below_ratio_1_passes(tmp_path, resolution, ratios):
    out = tmp_path / "art"
    artifact = export(ExportConfig(out=out, source=ModelSource(dtype="fp16"), ratios=ratios,
                                   resolution=resolution, dtype="fp16"))
    validation = json.loads((out / "manifest.json").read_text())["validation"]
    checks = {name: check for name, check in validation.items() if name.startswith("end_to_end")}
    assert len(checks) == len(ratios)
    for check in checks.values():
        assert check["kept_equal"] and check["tokens_equal"] and check["ok"]
        assert isinstance(check["pipelines_kept_equal"], bool)
    assert artifact.manifest.dtype == "fp16"
