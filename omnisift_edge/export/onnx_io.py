"""Small ONNX helpers shared by the graph exporters: atomic writes and ORT sessions on the CPU."""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.atomic import atomic_path as _atomic_path
from omnisift_edge.errors import UsageError, require

TWO_GB = 2 * 1024**3


def atomic_path(path: Path, suffix: str = ".onnx"):
    """`omnisift_edge.atomic.atomic_path` with an .onnx suffix (onnx.save picks its format by it)."""
    return _atomic_path(path, suffix)


def ort_session(path: Path, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session with its providers named explicitly (the CPU one by default)."""
    ort = require("onnxruntime", extra="export")
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise UsageError(f"ONNX Runtime here has no {', '.join(missing)} (it has "
                         f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA, "
                         "or use --device cpu")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers))
