"""Export stage: model + ratios -> ONNX graphs and `manifest.json`, validated in ONNX Runtime.

Entry: `run(ExportConfig) -> ExportArtifact` (= `stage.export`). Importing this package is cheap;
torch, transformers, Optimum and ONNX load when an export runs. docs/export.md.
"""

from __future__ import annotations

from omnisift_edge.export.config import ExportArtifact, ExportConfig, ExportValidationError

__all__ = ["ExportArtifact", "ExportConfig", "ExportValidationError", "run"]


def run(cfg: ExportConfig, progress=lambda _: None) -> ExportArtifact:
    """Export, validate and lint `cfg` (see omnisift_edge.export.stage.export)."""
    from omnisift_edge.export.stage import export

    return export(cfg, progress)
