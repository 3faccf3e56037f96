"""decoder.onnx: the thinker LLM with a KV cache, exported through Optimum and checked in ONNX Runtime.

One graph serves prefill (sequence_length > 1; a first prefill passes an empty past,
past_sequence_length 0) and decode (sequence_length 1). Its inputs and outputs are exactly
`tensors.decoder_graph(num_layers)`: inputs_embeds [B, S, D], position_ids [3, B, S] (TMRoPE; kept
tokens keep their original positions), attention_mask [B, P + S], past_key_values.{i}.key/value
[B, kv, P, hd] -> logits [B, 1, V] (last position only), present.{i}.key/value [B, kv, P + S, hd].

The export goes through Optimum: `past_present_config.ThinkerDecoderOnnxConfig` is registered with its
TasksManager for `qwen2_5_omni_thinker`, `optimum.exporters.onnx.convert.export` traces the
`ThinkerDecoder` wrapper under Optimum's model patcher, and `validate_model_outputs` checks the
graph at the dummy shapes. `validate_decoder` then checks what the runtime does: a prefill on an
empty cache with gapped positions, then decode steps feeding the presents back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.artifact.tensors import Dims, decoder_graph
from omnisift_edge.export.decoder.checks import (
    TOLERANCES,
    check_export,
    embed,
    gapped_positions,
    head_dim,
    text_config,
    tolerances,
    torch_step,
)
from omnisift_edge.export.decoder.trace import export_staged, module_in_dtype

GRAPH = "decoder"


def _decoder_module(thinker, dtype: str):
    """The module to trace, in `dtype`: the thinker's own modules when the dtype matches, else a copy."""
    from omnisift_edge.export.decoder.past_present_config import ThinkerDecoder

    return module_in_dtype(ThinkerDecoder(thinker), thinker, dtype)


def export_decoder(thinker, dims: Dims, path, *, dtype: str = "fp32", opset: int = 17,
                   max_context: int | None = None, external_data: bool | None = None,
                   check: bool = True) -> Path:
    """Export the thinker's LLM to `path` (decoder.onnx) through Optimum; returns `path`.

    dtype "fp32" or "fp16" (the graph's float inputs/outputs and weights). max_context: the longest
    KV cache (total_sequence_length) the graph is meant for, recorded in the graph's metadata for
    engine profiles; at most the model's max_position_embeddings (the default). external_data:
    None writes `<name>.onnx.data` only when the graph is over 2 GB, True always, False never
    (an error for graphs over 2 GB). check: run Optimum's output validation at the dummy shapes.
    The files appear at `path` only when complete: everything is written in a temporary folder
    beside it and moved into place with os.replace, data first.
    """
    for module in ("onnx", "onnxruntime", "optimum.exporters.onnx"):   # optimum-onnx: Optimum's ONNX exporter
        require(module, extra="export")
    from optimum.exporters.onnx.convert import validate_model_outputs

    from omnisift_edge.export.decoder.past_present_config import onnx_config_for

    path = Path(path)
    max_context = check_export(thinker, dims, dtype, max_context)
    if path.suffix != ".onnx":
        raise UsageError(f"the decoder graph file must end in .onnx (got {path.name})")
    module = _decoder_module(thinker, dtype)
    config = onnx_config_for(thinker, dtype)

    def validate(staged: Path, output_names: list[str]) -> None:
        atol = config.ATOL_FOR_VALIDATION if dtype == "fp32" else TOLERANCES["fp16"][0]
        validate_model_outputs(config, module, staged, output_names, atol=atol,
                               device=str(next(module.parameters()).device), use_subprocess=False)

    return export_staged(module, config, path, graph=GRAPH, dtype=dtype, opset=opset, max_context=max_context,
                         external_data=external_data, validate=validate if check else None)


@dataclasses.dataclass(frozen=True)
class DecoderCheck:
    """ORT vs PyTorch on prefill chunks (the first on an empty past), then decode steps feeding presents back."""

    dtype: str
    batch_size: int
    chunk_lengths: tuple[int, ...]
    decode_steps: int
    logits_max_abs: tuple[float, ...]      # per call: each prefill chunk, then each decode step
    present_max_abs: tuple[float, ...]
    torch_tokens: tuple[tuple[int, ...], ...]   # per call, per batch row: argmax of the last logits
    onnx_tokens: tuple[tuple[int, ...], ...]
    atol: float
    rtol: float
    within_tolerance: bool                 # every logit and present within atol + rtol * |torch|

    @property
    def tokens_match(self) -> bool:
        return self.torch_tokens == self.onnx_tokens

    @property
    def ok(self) -> bool:
        # an argmax flip while every logit is within tolerance is a near-tie, not an export bug
        return self.within_tolerance


def validate_decoder(onnx_path, thinker, *, dtype: str | None = None, atol: float | None = None,
                     rtol: float | None = None, batch_size: int = 1, chunk_lengths: tuple[int, ...] = (12, 7),
                     decode_steps: int = 2, seed: int = 0) -> DecoderCheck:
    """Run `onnx_path` in ONNX Runtime (CPUExecutionProvider) and the thinker in PyTorch, as the
    runtime does: prefill chunks of `chunk_lengths` tokens with gapped 3-row positions, the first on
    an empty cache ([B, kv, 0, hd] past), then `decode_steps` greedy steps (the torch argmax token's
    embedding at the next text position, for both); the ORT presents are always fed back as past.
    Compares logits and presents after every call; attention masks are all ones. dtype (the
    graph's, read from it when None) picks the default tolerances of `TOLERANCES`.
    """
    from omnisift_edge.export.memory_trace import mark

    mark("decoder: ONNX Runtime check")
    require("torch")
    from transformers import DynamicCache

    if not chunk_lengths or min(chunk_lengths) < 1 or batch_size < 1 or decode_steps < 0:
        raise UsageError(f"need a batch size >= 1, positive chunk lengths and decode steps >= 0 (got "
                         f"{batch_size}, {chunk_lengths}, {decode_steps})")
    cfg = text_config(thinker.config)
    graph = decoder_graph(cfg.num_hidden_layers)
    session = ort_session(Path(onnx_path))
    types = {i.name: i.type for i in session.get_inputs()}
    graph_dtype = "fp16" if types[graph.inputs[0].name] == "tensor(float16)" else "fp32"
    if dtype is not None and dtype != graph_dtype:
        raise UsageError(f"{onnx_path} is an {graph_dtype} graph, not {dtype}; pass dtype={graph_dtype!r}")
    atol, rtol = tolerances(graph_dtype, atol, rtol)
    float_np = np.float16 if graph_dtype == "fp16" else np.float32
    rng = np.random.Generator(np.random.PCG64(seed))
    b, kv, hd = batch_size, cfg.num_key_value_heads, head_dim(cfg)

    past = [np.zeros((b, kv, 0, hd), float_np)] * (2 * cfg.num_hidden_layers)           # [B, kv, 0, hd]
    cache = DynamicCache(config=cfg)
    diffs, tokens, close, total, next_position = [], [], True, 0, 3
    for step in range(len(chunk_lengths) + decode_steps):
        if step < len(chunk_lengths):   # a prefill chunk: kept tokens at gapped positions
            n = chunk_lengths[step]
            embeds = (rng.standard_normal((b, n, cfg.hidden_size)) * 0.5).astype(float_np)   # [B, n, D]
            positions = gapped_positions(b, n, start=next_position, rng=rng)                 # [3, B, n]
        else:           # a decode step: the torch greedy token at the next text position (3 rows equal)
            embeds = embed(thinker, tokens[-1][0]).astype(float_np)                         # [B, 1, D]
            positions = np.full((3, b, 1), next_position, dtype=np.int64)                    # [3, B, 1]
        total += embeds.shape[1]
        mask = np.ones((b, total), dtype=np.int64)                                           # [B, P + n]
        got = session.run(graph.output_names, dict(zip(graph.input_names, [embeds, positions, mask, *past])))
        ref = torch_step(thinker, cache, embeds, positions, mask)
        got = [g.astype(np.float32) for g in got]   # logits [B, 1, V], presents [B, kv, P + n, hd]
        diffs.append((float(np.abs(got[0] - ref[0]).max()),
                      max(float(np.abs(g - r).max()) for g, r in zip(got[1:], ref[1:]))))
        close &= all(np.allclose(g, r, atol=atol, rtol=rtol) for g, r in zip(got, ref))
        tokens.append((tuple(ref[0][:, -1].argmax(-1).tolist()), tuple(got[0][:, -1].argmax(-1).tolist())))
        next_position = int(positions.max()) + 1
        past = [p.astype(float_np) for p in got[1:]]    # the runtime feeds the presents back as past
    return DecoderCheck(graph_dtype, b, tuple(chunk_lengths), decode_steps,
                        logits_max_abs=tuple(d[0] for d in diffs), present_max_abs=tuple(d[1] for d in diffs),
                        torch_tokens=tuple(t[0] for t in tokens), onnx_tokens=tuple(t[1] for t in tokens),
                        atol=atol, rtol=rtol, within_tolerance=bool(close))
