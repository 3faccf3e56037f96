"""The export stage: model + ratios -> validated ONNX graphs and `manifest.json` in one folder.

`export(ExportConfig) -> ExportArtifact`. Everything is written into a hidden temporary folder
beside the output and swapped in at the very end (`omnisift_edge.atomic`'s staged-folder rules),
after validation and lint passed: an interrupted or failed export never leaves a folder that looks
complete, and never replaces a folder that is not a previous export.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

from omnisift_edge.export.config import ExportArtifact, ExportConfig


def _prepare_output(cfg: ExportConfig) -> Path:
    from omnisift_edge.export.replace import prepare_staging

    return prepare_staging(cfg.out, cfg.overwrite)   # only a previous export or an empty folder is replaced


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished folder in (synced, plain modes): atomically; the old one (if any) is removed
    only after the swap; `out` a symlink: the export it points to is replaced."""
    from omnisift_edge.export.replace import publish

    publish(staging, out)


def export(cfg: ExportConfig, progress: Callable[[str], None] = lambda _: None) -> ExportArtifact:
    """Export, validate and lint; the folder appears at `cfg.out` only if all of it passed."""
    from omnisift_edge.export import build

    started = time.perf_counter()
    staging = _prepare_output(cfg)
    try:
        with warnings.catch_warnings():
            # tracing static per-chunk shapes is intended: the tracer's "might not generalize" notes are noise
            warnings.filterwarnings("ignore", message=".*might cause the trace to be incorrect.*")
            warnings.filterwarnings("ignore", message="Exporting aten::index operator.*")
            artifact = build.build_folder(cfg, staging, progress)
        _publish(staging, cfg.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    artifact.folder = cfg.out
    artifact.seconds = time.perf_counter() - started
    return artifact

