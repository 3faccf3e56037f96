"""ONNX Runtime sessions over an export's graphs, with their execution providers named explicitly.

Lives in the artifact layer because every stage opens the export's graphs the same way: export
validates them, engines records the reference outputs TensorRT is checked against, and the runtime
streams through them.
"""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.errors import UsageError, require

# ONNX Runtime fuses a weight-only int4/int8 DequantizeLinear + MatMul into MatMulNBits; at its default
# accuracy level (4) that kernel quantizes the activations to int8 as well. Level 0 keeps them float,
# so the graph computes what it says (x @ W'), as TensorRT and the export's PyTorch check do
# (docs/quantization.md has the speed and drift of both).
QDQ_MATMULNBITS_ACCURACY_LEVEL = "0"

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
