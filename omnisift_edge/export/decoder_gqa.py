"""decoder_gqa.onnx: the thinker LLM on a KV cache written in place (ONNX Runtime's form of the decoder).

`tensors.decoder_gqa_graph`: inputs_embeds [B, S, D], position_ids [3, B, S], seqlens_k int32 [B],
total_sequence_length int32 [1], logits_index int64 [L], past_key_values.{i}.key/value
[B, kv, cache_length, hd] -> logits [B, L, V], present.{i}.key/value (the same buffers when bound to
the same OrtValues). Attention is `com.microsoft::GroupQueryAttention` (do_rotary=0; TMRoPE is applied
before it by the stock model code), so a call costs the new tokens plus attention over the valid rows.
TensorRT cannot parse GroupQueryAttention (no plugin in TensorRT-RTX 1.7), so TensorRT builds
`decoder_scatter.onnx` (its in-place form, `export.decoder_scatter`) or `decoder.onnx` (past in, present
out: TensorRT 10.3); all three are declared in the manifest's `kv_cache`.

Exported through Optimum as `decoder.onnx` is (`optimum.exporters.onnx.convert.export` with our
OnnxConfig, under its ModelPatcher); the attention patch is `model.inplace_kv`. `validate_decoder_gqa`
runs the runtime's own IOBinding cache (`runtime.kv_buffers.OrtInPlaceCache`) against PyTorch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.export.decoder import TOLERANCES, _check_dims, export_staged, module_in_dtype
from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.artifact.records import DECODER, DECODER_GQA
from omnisift_edge.artifact.tensors import Dims

GRAPH = DECODER_GQA


def kv_cache_record(dims: Dims, max_context: int, file: str) -> dict:
    """The manifest's `kv_cache`: which decoder form each runtime uses and how its cache is laid out."""
    return {
        DECODER: {"graph": DECODER, "kind": "past_present", "runtimes": ["tensorrt"],
                    "cache_axes": ["batch_size", "kv_heads", "past_sequence_length", "head_dim"],
                    "logits": "last row of every call"},
        GRAPH: {"graph": GRAPH, "file": file, "kind": "shared_buffer", "runtimes": ["onnxruntime"],
                "cache_axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "max_context": max_context,
                "attention": "com.microsoft::GroupQueryAttention, do_rotary 0, past and present one buffer",
                "logits": "rows in logits_index: none on a chunk prefill, the last for a question or decode"},
    }


def _module(thinker, dtype: str):
    from omnisift_edge.model.inplace_kv import InPlaceDecoder

    return module_in_dtype(InPlaceDecoder(thinker), thinker, dtype)


def export_decoder_gqa(thinker, dims: Dims, path, *, dtype: str = "fp32", opset: int = 17,
                       max_context: int | None = None, external_data: bool | None = None) -> Path:
    """Export the in-place form to `path` through Optimum; atomic (staged beside `path`, data first)."""
    for module in ("onnx", "onnxruntime", "optimum.exporters.onnx"):
        require(module, extra="export")
    from omnisift_edge.export.decoder_config import text_config
    from omnisift_edge.export.decoder_gqa_config import onnx_config_for

    path = Path(path)
    if dtype not in TOLERANCES:
        raise UsageError(f"decoder dtype must be one of {', '.join(TOLERANCES)} (got {dtype!r})")
    _check_dims(thinker, dims)
    limit = text_config(thinker.config).max_position_embeddings
    max_context = limit if max_context is None else int(max_context)
    return export_staged(_module(thinker, dtype), onnx_config_for(thinker, dtype), path, graph=GRAPH, dtype=dtype,
                         opset=opset, max_context=max_context, external_data=external_data)


@dataclasses.dataclass(frozen=True)
class InPlaceCheck:
    """ORT (IOBinding, one shared buffer per layer) vs PyTorch (DynamicCache), call by call."""

    dtype: str
    chunk_lengths: tuple[int, ...]
    decode_steps: int
    capacity: int
    logits_max_abs: tuple[float, ...]       # per call that asked for logits (the last chunk, decode steps)
    cache_max_abs: tuple[float, ...]        # per call: valid rows of every buffer vs torch's cache
    untouched: bool                         # rows past the valid length stayed zero (only new rows written)
    no_logits_on_prefill: bool              # a prefill without logits_index rows returned [1, 0, V]
    torch_tokens: tuple[int, ...]
    onnx_tokens: tuple[int, ...]
    atol: float
    rtol: float
    within_tolerance: bool

    @property
    def ok(self) -> bool:
        return self.within_tolerance and self.untouched and self.no_logits_on_prefill


def validate_decoder_gqa(onnx_path, thinker, manifest_entry: dict, rope: dict, *, capacity: int = 48,
                         chunk_lengths: tuple[int, ...] = (12, 7), decode_steps: int = 3, seed: int = 0,
                         atol: float | None = None, rtol: float | None = None) -> InPlaceCheck:
    """Prefill chunks (no logits but for the last), then greedy decode, through the runtime's
    `OrtInPlaceCache` (IOBinding, shared buffers of `capacity` rows) and through `thinker.model` on a
    DynamicCache; compares logits and the valid cache rows after every call."""
    from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache

    if sum(chunk_lengths) + decode_steps > capacity:
        raise UsageError(f"capacity {capacity} is too small for chunks {chunk_lengths} + {decode_steps} steps")
    cache = OrtInPlaceCache(ort_session(Path(onnx_path)), manifest_entry, capacity, rope)
    return check_in_place(cache, thinker, manifest_entry, lambda: cache.binding.get_outputs()[0].shape()[1],
                          capacity=capacity, chunk_lengths=chunk_lengths, decode_steps=decode_steps, seed=seed,
                          atol=atol, rtol=rtol)


def check_in_place(cache, thinker, manifest_entry: dict, logits_rows, *, capacity: int,
                   chunk_lengths: tuple[int, ...], decode_steps: int, seed: int, atol: float | None,
                   rtol: float | None) -> InPlaceCheck:
    """The call-by-call comparison of an in-place cache against PyTorch (shared by both in-place forms).

    `cache`: step(embeds, positions, want_logits) -> logits [V] | None, valid() -> valid rows per buffer,
    arrays[name] (the whole buffers), past_names, float_type; `logits_rows()`: rows of the last logits."""
    require("torch")
    from transformers import DynamicCache

    from omnisift_edge.export.decoder import _embed, _torch_step
    from omnisift_edge.export.decoder_config import gapped_positions, text_config

    cfg = text_config(thinker.config)
    graph_dtype = "fp16" if manifest_entry["inputs"][0]["dtype"] == "float16" else "fp32"
    atol = TOLERANCES[graph_dtype][0] if atol is None else atol
    rtol = TOLERANCES[graph_dtype][1] if rtol is None else rtol
    float_np = cache.float_type
    reference = DynamicCache(config=cfg)
    rng = np.random.Generator(np.random.PCG64(seed))
    logit_diffs, cache_diffs, torch_tokens, onnx_tokens = [], [], [], []
    close, untouched, no_logits, total, next_position = True, True, True, 0, 3
    for step in range(len(chunk_lengths) + decode_steps):
        if step < len(chunk_lengths):
            n = chunk_lengths[step]
            embeds = (rng.standard_normal((1, n, cfg.hidden_size)) * 0.5).astype(float_np)      # [1, n, D]
            positions = gapped_positions(1, n, start=next_position, rng=rng)                    # [3, 1, n]
        else:
            embeds = _embed(thinker, [torch_tokens[-1]]).astype(float_np)                       # [1, 1, D]
            positions = np.full((3, 1, 1), next_position, dtype=np.int64)
        want = step >= len(chunk_lengths) - 1
        total += embeds.shape[1]
        got = cache.step(embeds, positions, want_logits=want)
        ref = _torch_step(thinker, reference, embeds, positions, np.ones((1, total), np.int64))
        if not want:
            no_logits &= logits_rows() == 0
        else:
            logit_diffs.append(float(np.abs(got - ref[0][0, -1]).max()))
            close &= bool(np.allclose(got, ref[0][0, -1], atol=atol, rtol=rtol))
            torch_tokens.append(int(ref[0][0, -1].argmax()))
            onnx_tokens.append(int(got.argmax()))
        valid = cache.valid()
        cache_diffs.append(max(float(np.abs(v.astype(np.float32) - r).max()) for v, r in zip(valid, ref[1:])))
        close &= all(np.allclose(v.astype(np.float32), r, atol=atol, rtol=rtol) for v, r in zip(valid, ref[1:]))
        untouched &= all(not cache.arrays[n][:, :, total:].any() for n in cache.past_names)
        next_position = int(positions.max()) + 1
    return InPlaceCheck(graph_dtype, tuple(chunk_lengths), decode_steps, capacity, tuple(logit_diffs),
                        tuple(cache_diffs), bool(untouched), bool(no_logits), tuple(torch_tokens),
                        tuple(onnx_tokens), atol, rtol, bool(close))
