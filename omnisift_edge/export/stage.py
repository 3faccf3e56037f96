"""The export stage: model + ratios -> validated ONNX graphs and `manifest.json` in one folder.

`export(ExportConfig) -> ExportArtifact`. Everything is written into a hidden temporary folder
beside the output and renamed at the very end, after validation and lint passed: an interrupted
or failed export never leaves a folder that looks complete.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

from omnisift_edge.errors import UsageError
from omnisift_edge.export.config import ExportArtifact, ExportConfig


def _prepare_output(cfg: ExportConfig) -> Path:
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; choose another -o")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite to replace it, or choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished folder in: the old one (if any) is removed only after the rename."""
    _share(staging)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{int(time.time())}"
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def _share(folder: Path) -> None:
    """Give the staged files the modes a plain write would (temp files are created private)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
