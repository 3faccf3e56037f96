"""Small ONNX helpers shared by the graph exporters: atomic writes and ORT sessions on the CPU."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from omnisift_edge.errors import UsageError, require

TWO_GB = 2 * 1024**3


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".onnx") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it vanishes.

    An interrupted export never leaves a file at `path` that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


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
