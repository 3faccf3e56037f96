"""The thinker LLM on a KV cache allocated once and written in place (the `decoder_gqa` form).

One attention call writes only the new keys/values into a preallocated buffer
[B, kv_heads, capacity, head_dim] at rows [past, past + S) and attends over the valid rows
[0, past + S), never over the whole buffer and never copying it. That is the semantics of ONNX
Runtime's `com.microsoft::GroupQueryAttention` with past and present sharing one buffer
(`past_present_share_buffer`), so the same code is

- the PyTorch reference backend's static cache (eager: the buffer is written in place), and
- the traced module of the `decoder_gqa` export: `GroupQueryAttention.symbolic` emits the contrib
  op (no rotary inside: TMRoPE's 3-row rotation is applied by the stock model code before it).

Nothing is forked: transformers' own `Qwen2_5OmniAttention` runs; we register an attention function
(`AttentionInterface`) and pass a tiny cache object whose `update` returns the new keys/values
unchanged, so the attention function receives exactly GQA's inputs. The mask builders are skipped
by handing the model a precomputed (empty) mask mapping: GQA derives the causal mask from
`seqlens_k` (valid length after this call - 1) and `total_sequence_length`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
from torch import nn

ATTENTION_NAME = "omnisift_inplace_gqa"   # our entry in transformers' AttentionInterface


def _causal_attention(query, keys, values, past: int, scale: float):
    """query [B, H, S, hd] at rows past..past+S-1; keys/values [B, kv, past + S, hd] -> [B, H, S, hd].

    Grouped-query attention without repeating the keys: the H / kv query heads of one kv head are
    folded into its query rows ([B, kv, groups * S, hd]), so SDPA reads each cached key once."""
    b, h, s, hd = query.shape
    kv, total = keys.shape[1], keys.shape[2]
    groups = h // kv
    q = query.reshape(b, kv, groups * s, hd)                                       # head = kv_head * groups + g
    mask = None
    if s > 1:   # row i sees cache rows [0, past + i], the same for every head of a group
        rows = past + torch.arange(s, device=query.device)
        mask = (torch.arange(total, device=query.device)[None, :] <= rows[:, None]).repeat(groups, 1)  # [g*S, T]
    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(b, h, s, hd)


def _gqa_eager(query, key, value, past_key, past_value, seqlens_k, total_length, num_heads, kv_heads, scale,
               in_place: bool):
    """GroupQueryAttention (shared buffer, no rotary) in PyTorch. query [B, S, H*hd], key/value [B, S, kv*hd],
    past_key/value [B, kv, M, hd]; every batch row has the same valid length seqlens_k + 1 (the runtime's case)."""
    b, s, _ = query.shape
    hd = past_key.shape[-1]
    total = int(seqlens_k.reshape(-1)[0]) + 1
    past = total - s
    present_key = past_key if in_place else past_key.clone()
    present_value = past_value if in_place else past_value.clone()
    present_key[:, :, past:total] = key.view(b, s, kv_heads, hd).transpose(1, 2)      # only the new rows
    present_value[:, :, past:total] = value.view(b, s, kv_heads, hd).transpose(1, 2)
    q = query.view(b, s, num_heads, hd).transpose(1, 2)                               # [B, H, S, hd]
    out = _causal_attention(q, present_key[:, :, :total], present_value[:, :, :total], past, scale)
    return out.transpose(1, 2).reshape(b, s, num_heads * hd), present_key, present_value


class GroupQueryAttention(torch.autograd.Function):
    """Traced as one `com.microsoft::GroupQueryAttention` node (the TorchScript exporter calls `symbolic`)."""

    @staticmethod
    def forward(ctx, query, key, value, past_key, past_value, seqlens_k, total_length, num_heads, kv_heads, scale):
        return _gqa_eager(query, key, value, past_key, past_value, seqlens_k, total_length, num_heads, kv_heads,
                          scale, in_place=False)

    @staticmethod
    def symbolic(g, query, key, value, past_key, past_value, seqlens_k, total_length, num_heads, kv_heads, scale):
        out, present_key, present_value = g.op(
            "com.microsoft::GroupQueryAttention", query, key, value, past_key, past_value, seqlens_k, total_length,
            num_heads_i=num_heads, kv_num_heads_i=kv_heads, scale_f=scale, do_rotary_i=0, outputs=3)
        out.setType(query.type())
        present_key.setType(past_key.type())
        present_value.setType(past_value.type())
        return out, present_key, present_value


class InPlaceKV:
    """What the model sees as its cache for one call: `update` hands the new keys/values through; the
    attention function writes them into `buffers[layer]` (in place, or as new values when exporting)."""

    def __init__(self, buffers, seqlens_k, total_length):
        self.buffers = list(buffers)            # per layer (key, value) [B, kv, M, hd]
        self.seqlens_k = seqlens_k              # int32 [B]: valid length after this call - 1
        self.total_length = total_length        # int32 [1]: the same, + 1, over the batch
        self.present = [None] * len(self.buffers)

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        return key_states, value_states         # the new rows only: GQA appends them itself


def inplace_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, kv_cache=None,
                      **kwargs):
    """transformers attention function: query [B, H, S, hd] (rotated), key/value [B, kv, S, hd] (new rows)."""
    b, _, s, _ = query.shape
    # head counts as Python ints from the module (traced shapes would be tensors: not op attributes)
    h, kv, hd = module.config.num_attention_heads, module.config.num_key_value_heads, module.head_dim
    q = query.transpose(1, 2).reshape(b, s, h * hd)                                   # [B, S, H*hd]
    k = key.transpose(1, 2).reshape(b, s, kv * hd)                                    # [B, S, kv*hd]
    v = value.transpose(1, 2).reshape(b, s, kv * hd)
    past_key, past_value = kv_cache.buffers[module.layer_idx]
    scale = float(scaling if scaling is not None else hd ** -0.5)
    if torch.onnx.is_in_onnx_export():
        out, pk, pv = GroupQueryAttention.apply(q, k, v, past_key, past_value, kv_cache.seqlens_k,
                                                kv_cache.total_length, h, kv, scale)
    else:
        out, pk, pv = _gqa_eager(q, k, v, past_key, past_value, kv_cache.seqlens_k, kv_cache.total_length, h, kv,
                                 scale, in_place=True)
    kv_cache.present[module.layer_idx] = (pk, pv)
    return out.view(b, s, h, hd), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, inplace_attention)


@contextlib.contextmanager
def attention_implementation(config, name: str):
    """Use attention function `name` for the duration (the thinker's config is shared: restore it)."""
    old = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old


def _layers(past_key_values):
    """Per layer (key, value) from a tuple of pairs or a transformers cache (Optimum converts tuples)."""
    if hasattr(past_key_values, "layers"):
        return [(layer.keys, layer.values) for layer in past_key_values.layers]
    return [tuple(kv) for kv in past_key_values]


class InPlaceDecoder(nn.Module):
    """`thinker.model` + `lm_head` on in-place KV buffers: what `decoder_gqa.onnx` computes.

    inputs_embeds [B, S, D]; position_ids [3, B, S] (TMRoPE rows, not derived from the cache);
    seqlens_k int32 [B] = valid rows after this call - 1; total_sequence_length int32 [1] = seqlens_k + 1;
    logits_index int64 [L]: which of the S new rows get logits (empty on a chunk prefill, [S - 1] for a
    question or a decode step); past_key_values: per layer (key, value) [B, kv, M, hd] buffers.
    Returns {"logits": [B, L, V], "present": per layer (key, value) [B, kv, M, hd]} (the same buffers
    in eager mode, written at rows [seqlens_k + 1 - S, seqlens_k + 1)).
    """

    def __init__(self, thinker):
        super().__init__()
        register()
        self.model = thinker.model
        self.lm_head = thinker.lm_head
        self.config = thinker.config

    def forward(self, inputs_embeds, position_ids, seqlens_k, total_sequence_length, logits_index,
                past_key_values):
        cache = InPlaceKV(_layers(past_key_values), seqlens_k, total_sequence_length)
        return run_on_cache(self, ATTENTION_NAME, inputs_embeds, position_ids, logits_index, cache)


def run_on_cache(decoder: nn.Module, attention: str, inputs_embeds, position_ids, logits_index, cache) -> OrderedDict:
    """The thinker's forward on an in-place `cache` (its `present` the outputs) with attention routed to the
    registered `attention` entry; logits of the rows in `logits_index` only. Shared by the in-place forms."""
    s = inputs_embeds.shape[1]
    with attention_implementation(decoder.model.config, attention):
        out = decoder.model(inputs_embeds=inputs_embeds, position_ids=position_ids,
                            attention_mask={"full_attention": None, "sliding_attention": None},
                            past_key_values=cache, use_cache=True, return_dict=True, kv_cache=cache,
                            cache_position=torch.arange(s, device=inputs_embeds.device))
    hidden = out.last_hidden_state.index_select(1, logits_index)                       # [B, L, D]
    logits = decoder.lm_head(hidden)                                                   # [B, L, V]
    return OrderedDict([("logits", logits), ("present", tuple(cache.present))])


def rotate_keys(keys: torch.Tensor, delta: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Re-base cached keys [..., n, hd] by -delta positions, in place: RoPE by -delta * inv_freq on every
    frequency (the 3 TMRoPE rows share the shift, so the section split does not matter). Returns `keys`."""
    angle = -float(delta) * inv_freq.to(torch.float64)                               # [hd/2]
    cos = torch.cat([angle.cos(), angle.cos()]).to(keys.dtype)                         # [hd]
    sin = torch.cat([angle.sin(), angle.sin()]).to(keys.dtype)
    half = keys.shape[-1] // 2
    rotated = torch.cat([-keys[..., half:], keys[..., :half]], dim=-1)                 # rotate_half
    keys.copy_(keys * cos + rotated * sin)
    return keys
