"""What the memory plan predicts for ONNX Runtime CPU's peak host memory of one decoder graph: the plan's
check against a runtime that runs here (tests/engines/test_memory.py, benchmarks/quantize.py). Split from
engines/memory.py (which re-exports these names), whose formulas it uses.
"""

from __future__ import annotations

from omnisift_edge.model.shape import ThinkerShape

ORT_ATTENTION_COPIES, ORT_MASK_BYTES = 4, 12   # calibration: see ort_cpu_decoder_peak
ORT_SESSION_BYTES = 12 << 20                    # a session's own structures (graph, kernels): resident minus weights


def ort_cpu_decoder_peak(shape: ThinkerShape, weights: int, *, dtype: str, sequence: int, past: int) -> int:
    """What the plan predicts for ONNX Runtime CPU's peak host memory of loading a decoder graph
    holding `weights` bytes and one call of `sequence` tokens on a cache of `past` (the check of the
    plan: tests/engines/test_memory.py, benchmarks/quantize.py).

    ONNX Runtime holds the parsed model and its initializer tensors together while it loads
    (2 x weights); then the weights, the cache in (past) and out (past + sequence), the last
    position's logits and the decoder's activations at that call. The exported attention (SDPA
    decomposed into MatMul, Add, Softmax, ...) keeps ORT_ATTENTION_COPIES [heads, S, T] tensors and
    ORT_MASK_BYTES per [S, T] element of masks live on ORT's CPU provider: calibrated on the
    embedded default at S=512, P=4096 (docs/quantization.md), checked on other shapes and models;
    plus ORT_SESSION_BYTES, the session's resident size beyond its weights (measured on the default).
    An fp16 graph runs in fp32 on the CPU provider (Casts inserted, fp32 copies of the weights
    folded): it is predicted as an fp32 graph of twice the weight bytes (measured: fp16 and fp32
    graphs of one model peak within 3% of each other, docs/benchmarks.md).
    """
    from omnisift_edge.engines.memory import MemoryConfig, activation_bytes, kv_per_token

    if dtype == "fp16":   # the CPU provider has few fp16 kernels: it inserts Casts and folds fp32 copies of the weights
        weights, dtype = 2 * weights, "fp32"
    cfg = MemoryConfig(shape, dtype=dtype, max_context=min(shape.text.max_position, max(past + sequence, 1)),
                       prefill=sequence)
    per_token = kv_per_token(cfg) // 2                                                # one buffer
    run = (weights + per_token * past + per_token * (past + sequence)
           + activation_bytes(cfg, past + sequence, attention_copies=ORT_ATTENTION_COPIES,
                              mask_bytes=ORT_MASK_BYTES)["decoder"])
    return ORT_SESSION_BYTES + max(2 * weights, run)
