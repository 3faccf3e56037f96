"""Small ONNX helper shared by the graph exporters: atomic writes with the .onnx suffix."""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.atomic import atomic_path as _atomic_path


def atomic_path(path: Path, suffix: str = ".onnx"):
    """`omnisift_edge.atomic.atomic_path` with an .onnx suffix (onnx.save picks its format by it)."""
    return _atomic_path(path, suffix)
