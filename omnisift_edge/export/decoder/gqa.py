"""decoder_gqa.onnx: the thinker LLM on a KV cache written in place (ONNX Runtime's form of the decoder).

`tensors.decoder_gqa_graph`: inputs_embeds [B, S, D], position_ids [3, B, S], seqlens_k int32 [B],
total_sequence_length int32 [1], logits_index int64 [L], past_key_values.{i}.key/value
[B, kv, cache_length, hd] -> logits [B, L, V], present.{i}.key/value (the same buffers when bound to
the same OrtValues). Attention is `com.microsoft::GroupQueryAttention` (do_rotary=0; TMRoPE is applied
before it by the stock model code), so a call costs the new tokens plus attention over the valid rows.
TensorRT cannot parse GroupQueryAttention (no plugin in TensorRT-RTX 1.7), so TensorRT builds
`decoder_scatter.onnx` (its in-place form, `export.decoder.scatter`) or `decoder.onnx` (past in, present
out: TensorRT 10.3); all three are declared in the manifest's `kv_cache`.

Exported through Optimum as `decoder.onnx` is (`optimum.exporters.onnx.convert.export` with our
OnnxConfig, under its ModelPatcher); the attention patch is `model.inplace_kv`. `validate_decoder_gqa`
runs the runtime's own IOBinding cache (`runtime.kv_buffers.OrtInPlaceCache`) against PyTorch
(`checks.check_in_place`, which the scatter form's validator shares).
"""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.artifact.tensors import Dims
from omnisift_edge.errors import require
from omnisift_edge.export.decoder.checks import InPlaceCheck, check_capacity, check_export, check_in_place
from omnisift_edge.export.decoder.forms import GQA, PAST_PRESENT
from omnisift_edge.export.decoder.trace import export_staged, module_in_dtype

GRAPH = GQA.graph
ATTENTION = "com.microsoft::GroupQueryAttention, do_rotary 0, past and present one buffer"


def kv_cache_record(dims: Dims, max_context: int, file: str) -> dict:
    """The manifest's `kv_cache`: which decoder form each runtime uses and how its cache is laid out."""
    return {
        PAST_PRESENT.graph: PAST_PRESENT.kv_cache_entry(logits=PAST_PRESENT.logits),
        GRAPH: GQA.kv_cache_entry(file=file, max_context=max_context, attention=ATTENTION, logits=GQA.logits),
    }


def _module(thinker, dtype: str):
    from omnisift_edge.model.inplace_kv import InPlaceDecoder

    return module_in_dtype(InPlaceDecoder(thinker), thinker, dtype)


def export_decoder_gqa(thinker, dims: Dims, path, *, dtype: str = "fp32", opset: int = 17,
                       max_context: int | None = None, external_data: bool | None = None) -> Path:
    """Export the in-place form to `path` through Optimum; atomic (staged beside `path`, data first)."""
    for module in ("onnx", "onnxruntime", "optimum.exporters.onnx"):
        require(module, extra="export")
    from omnisift_edge.export.decoder.gqa_config import onnx_config_for

    max_context = check_export(thinker, dims, dtype, max_context)
    return export_staged(_module(thinker, dtype), onnx_config_for(thinker, dtype), Path(path), graph=GRAPH,
                         dtype=dtype, opset=opset, max_context=max_context, external_data=external_data)


def validate_decoder_gqa(onnx_path, thinker, manifest_entry: dict, rope: dict, *, capacity: int = 48,
                         chunk_lengths: tuple[int, ...] = (12, 7), decode_steps: int = 3, seed: int = 0,
                         atol: float | None = None, rtol: float | None = None) -> InPlaceCheck:
    """Prefill chunks (no logits but for the last), then greedy decode, through the runtime's
    `OrtInPlaceCache` (IOBinding, shared buffers of `capacity` rows) and through `thinker.model` on a
    DynamicCache; compares logits and the valid cache rows after every call."""
    from omnisift_edge.export.memory_trace import mark

    mark("decoder_gqa: ONNX Runtime check")
    from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache

    check_capacity(capacity, chunk_lengths, decode_steps)
    cache = OrtInPlaceCache(ort_session(Path(onnx_path)), manifest_entry, capacity, rope)
    return check_in_place(cache, thinker, manifest_entry, lambda: cache.binding.get_outputs()[0].shape()[1],
                          capacity=capacity, chunk_lengths=chunk_lengths, decode_steps=decode_steps, seed=seed,
                          atol=atol, rtol=rtol)
