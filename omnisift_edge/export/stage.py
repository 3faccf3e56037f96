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


def check_host_memory(cfg: ExportConfig) -> None:
    """Refuse, before anything is written, a model folder whose predicted export peak (model/host_memory.py,
    the measured fit `plan` prints) is more than this machine has available; OMNISIFT_EDGE_SKIP_MEMORY_CHECK=1
    tries anyway."""
    import os

    from omnisift_edge.model import host_memory

    if cfg.source.path is None or os.environ.get(host_memory.SKIP_ENV) == "1":
        return
    from omnisift_edge.errors import UsageError
    from omnisift_edge.model.load import read_folder_config
    from omnisift_edge.model.shape import ThinkerShape

    shape = ThinkerShape.from_config(read_folder_config(cfg.source.path)[0])
    need = host_memory.export_peak_bytes(shape, cfg.dtype, cfg.weights)
    have = host_memory.available_bytes()
    if have is not None and have < need:
        gb = host_memory.GB
        quant = f" --weights {cfg.weights}" if cfg.weights in ("int8", "int4") else ""
        raise UsageError(f"export --dtype {cfg.dtype}{quant} of this model needs about {need / gb:.1f} GB of host memory "
                         f"(omnisift-edge plan) but {have / gb:.1f} GB is available; close other programs or export "
                         f"on a machine with more memory ({host_memory.SKIP_ENV}=1 tries anyway)")


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
    from omnisift_edge.export.memory_trace import finish, traced

    progress = traced(progress)   # OMNISIFT_EDGE_TRACE_MEMORY=<file>: each step's memory peaks (a debug aid)
    started = time.perf_counter()
    check_host_memory(cfg)
    staging = _prepare_output(cfg)
    try:
        with warnings.catch_warnings():
            # tracing static per-chunk shapes is intended: the tracer's "might not generalize" notes are noise
            warnings.filterwarnings("ignore", message=".*might cause the trace to be incorrect.*")
            warnings.filterwarnings("ignore", message="Exporting aten::index operator.*")
            artifact = build.build_folder(cfg, staging, progress)
            finish()
        _publish(staging, cfg.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    artifact.folder = cfg.out
    artifact.seconds = time.perf_counter() - started
    return artifact

