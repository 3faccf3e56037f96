"""Small ONNX helpers shared by the graph exporters: atomic writes and ORT sessions on the CPU."""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.atomic import atomic_path as _atomic_path
from omnisift_edge.errors import UsageError, require

TWO_GB = 2 * 1024**3
# ONNX Runtime fuses a weight-only int4/int8 DequantizeLinear + MatMul into MatMulNBits; at its default
# accuracy level (4) that kernel quantizes the activations to int8 as well. Level 0 keeps them float,
# so the graph computes what it says (x @ W'), as TensorRT and the export's PyTorch check do
# (docs/quantization.md has the speed and drift of both).
QDQ_MATMULNBITS_ACCURACY_LEVEL = "0"


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
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", QDQ_MATMULNBITS_ACCURACY_LEVEL)
    return ort.InferenceSession(str(path), options, providers=list(providers))
