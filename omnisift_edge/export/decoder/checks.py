"""The checks every decoder form shares: its arguments before the export, its graph against PyTorch after.

Before: `check_export` (dtype, the sizes against the model, max_context within the model's
max_position_embeddings) runs at the top of every form's exporter, so the forms refuse the same
things with the same line. After: `torch_step` is the PyTorch reference (the thinker on a
DynamicCache, as the PyTorch runtime calls it), `check_in_place` the call-by-call comparison of an
in-place cache (decoder_gqa, decoder_scatter) against it. Nothing here imports Optimum: `text_config`,
`head_dim` and `gapped_positions` are needed by modules (reference inputs, tests) that export nothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from omnisift_edge.artifact.tensors import Dims
from omnisift_edge.errors import UsageError, require

DTYPES = ("fp32", "fp16")
# default (atol, rtol) of the validators per graph dtype (the torch side runs in the thinker's dtype)
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2)}


def text_config(config):
    """The LLM's config (`Qwen2_5OmniTextConfig`) of a thinker config, or the config itself."""
    return getattr(config, "text_config", config)


def head_dim(config) -> int:
    cfg = text_config(config)
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def decoder_dims(thinker, dims: Dims) -> Dims:
    """`dims` with the decoder's sizes (layers, kv heads, head dim, vocab) read from `thinker`."""
    cfg = text_config(thinker.config)
    return dataclasses.replace(dims, hidden=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
                               kv_heads=cfg.num_key_value_heads, head_dim=head_dim(cfg), vocab=cfg.vocab_size)


def check_dims(thinker, dims: Dims) -> None:
    """`dims` must hold the model's decoder sizes (one line naming each that differs)."""
    want = decoder_dims(thinker, dims)
    wrong = [f"{name} {getattr(dims, name)} (model: {getattr(want, name)})"
             for name in ("hidden", "num_layers", "kv_heads", "head_dim", "vocab")
             if getattr(dims, name) != getattr(want, name)]
    if wrong:
        raise UsageError(f"decoder sizes do not match the model: {', '.join(wrong)}; "
                         "build them with omnisift_edge.export.decoder.decoder_dims(thinker, dims)")


def check_max_context(thinker, max_context: int | None) -> int:
    """`max_context` (None: the model's limit) within 1..max_position_embeddings, as an int."""
    limit = text_config(thinker.config).max_position_embeddings
    max_context = limit if max_context is None else int(max_context)
    if not 0 < max_context <= limit:
        raise UsageError(f"max context must be in 1..{limit} (the model's max_position_embeddings); "
                         f"got {max_context}")
    return max_context


def check_export(thinker, dims: Dims, dtype: str, max_context: int | None) -> int:
    """What every form's exporter checks first: dtype, sizes, max_context; returns the max_context to record."""
    if dtype not in DTYPES:
        raise UsageError(f"decoder dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    check_dims(thinker, dims)
    return check_max_context(thinker, max_context)


def tolerances(graph_dtype: str, atol: float | None, rtol: float | None) -> tuple[float, float]:
    """(atol, rtol): the given ones, or the defaults of `TOLERANCES` for the graph's dtype."""
    return (TOLERANCES[graph_dtype][0] if atol is None else atol, TOLERANCES[graph_dtype][1] if rtol is None else rtol)


def gapped_positions(batch: int, length: int, *, start: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [3, B, S] TMRoPE-like positions: increasing temporal row with gaps (dropped tokens),
    height/width rows that differ from it, as kept video tokens of a compressed chunk have."""
    steps = rng.integers(1, 4, size=(batch, length))                                   # gaps of 0-2
    t = start + np.cumsum(steps, axis=1) - steps[:, :1]                                # [B, S]
    h = t + rng.integers(0, 3, size=(batch, length))
    w = t + rng.integers(0, 5, size=(batch, length))
    return np.stack([t, h, w]).astype(np.int64)                                        # [3, B, S]


def torch_step(thinker, cache, embeds: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """The reference: `thinker.model` + `lm_head` on a DynamicCache, as the PyTorch runtime calls it."""
    torch = require("torch")

    param = next(thinker.parameters())
    with torch.inference_mode():
        out = thinker.model(inputs_embeds=torch.from_numpy(embeds).to(param.device, param.dtype),     # [B, n, D]
                            position_ids=torch.from_numpy(positions).to(param.device),               # [3, B, n]
                            attention_mask=torch.from_numpy(mask).to(param.device),                  # [B, P + n]
                            past_key_values=cache, use_cache=True)
        logits = thinker.lm_head(out.last_hidden_state[:, -1:])                                      # [B, 1, V]
    presents = [x for layer in cache.layers for x in (layer.keys, layer.values)]                    # [B, kv, P + n, hd]
    return [t.float().cpu().numpy() for t in (logits, *presents)]


def embed(thinker, ids) -> np.ndarray:
    """Text embeddings [B, 1, D] of one token id per batch row."""
    torch = require("torch")

    with torch.inference_mode():
        table = thinker.get_input_embeddings()
        return table(torch.tensor(ids, device=table.weight.device)[:, None]).float().cpu().numpy()


@dataclasses.dataclass(frozen=True)
class InPlaceCheck:
    """ORT (one buffer per layer and kind, written in place) vs PyTorch (DynamicCache), call by call."""

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


def check_capacity(capacity: int, chunk_lengths: tuple[int, ...], decode_steps: int) -> None:
    if sum(chunk_lengths) + decode_steps > capacity:
        raise UsageError(f"capacity {capacity} is too small for chunks {chunk_lengths} + {decode_steps} steps")


def _in_place_inputs(thinker, hidden: int, step: int, chunk_lengths, tokens: list[int], next_position: int,
                     rng, float_np):
    """The inputs of call `step`: a prefill chunk (random embeddings at gapped positions) or a decode step
    (the torch greedy token's embedding at the next text position, 3 rows equal)."""
    if step < len(chunk_lengths):
        n = chunk_lengths[step]
        embeds = (rng.standard_normal((1, n, hidden)) * 0.5).astype(float_np)                      # [1, n, D]
        return embeds, gapped_positions(1, n, start=next_position, rng=rng)                        # [3, 1, n]
    embeds = embed(thinker, [tokens[-1]]).astype(float_np)                                         # [1, 1, D]
    return embeds, np.full((3, 1, 1), next_position, dtype=np.int64)                               # [3, 1, 1]


def check_in_place(cache, thinker, manifest_entry: dict, logits_rows, *, capacity: int,
                   chunk_lengths: tuple[int, ...], decode_steps: int, seed: int, atol: float | None,
                   rtol: float | None) -> InPlaceCheck:
    """The call-by-call comparison of an in-place cache against PyTorch (shared by both in-place forms).

    `cache`: step(embeds, positions, want_logits) -> logits [V] | None, valid() -> valid rows per buffer,
    arrays[name] (the whole buffers), past_names, float_type; `logits_rows()`: rows of the last logits."""
    require("torch")
    from transformers import DynamicCache

    cfg = text_config(thinker.config)
    graph_dtype = "fp16" if manifest_entry["inputs"][0]["dtype"] == "float16" else "fp32"
    atol, rtol = tolerances(graph_dtype, atol, rtol)
    reference = DynamicCache(config=cfg)
    rng = np.random.Generator(np.random.PCG64(seed))
    logit_diffs, cache_diffs, torch_tokens, onnx_tokens = [], [], [], []
    close, untouched, no_logits, total, next_position = True, True, True, 0, 3
    for step in range(len(chunk_lengths) + decode_steps):
        embeds, positions = _in_place_inputs(thinker, cfg.hidden_size, step, chunk_lengths, torch_tokens,
                                             next_position, rng, cache.float_type)
        want = step >= len(chunk_lengths) - 1
        total += embeds.shape[1]
        got = cache.step(embeds, positions, want_logits=want)
        ref = torch_step(thinker, reference, embeds, positions, np.ones((1, total), np.int64))
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
