"""The thinker LLM on a static KV cache updated by a scatter (the `decoder_scatter` form, TensorRT's in-place cache).

One attention call scatters the S new keys/values of each batch row b into the cache [B, kv_heads,
cache_length, head_dim] at rows [write_index[b], write_index[b] + S), then attends over that row's valid
rows [0, write_index[b] + S) of the updated cache (causal for S > 1). Each batch row has its own write
index and so its own valid length: a stream pool's decode steps at different lengths are one call
(runtime/pool_trt.py); one stream is batch 1. That is ONNX's `TensorScatter` (opset 24, axis 2, mode linear),
which TensorRT's ONNX parser (TensorRT >= 10.15, TensorRT-RTX) turns into an IKVCacheUpdateLayer whose
output IS the cache input: bound to one device buffer, the engine writes only the new rows.

The TorchScript exporter stops at opset 20, so while tracing `TensorScatter.symbolic` emits a node of
our own domain (`SCATTER_DOMAIN::TensorScatter`); `export.decoder.scatter` converts the graph to opset
24 and renames that node to the standard op. `ValidRows.symbolic` emits one ONNX `Slice` whose end is
the tensor max(write_index) + S (the longest valid length), so the traced graph reads only rows some
batch row holds; `row_causal_mask` masks, per batch row, the rows past its own length.

Nothing is forked: transformers' own attention module runs; we register an `AttentionInterface`
function and pass a tiny cache object whose `update` hands the new rows through, as `inplace_kv` does.
In eager mode the same function writes the rows into the caller's buffers in place.
"""

from __future__ import annotations


import torch
from torch import nn

from omnisift_edge.model.inplace_kv import _layers, run_on_cache

ATTENTION_NAME = "omnisift_scatter_kv"     # our entry in transformers' AttentionInterface
SCATTER_DOMAIN = "omnisift"                # the traced node's domain until the opset-24 rewrite
CACHE_AXIS = 2                             # [B, kv, cache_length, hd]: rows are axis 2


def _scatter_eager(cache, update, starts, in_place: bool):
    """cache [B, kv, M, hd] with rows [starts[b], starts[b] + S) of batch row b replaced by update[b]
    (update [B, kv, S, hd], starts int64 [B]: each row its own write index)."""
    out = cache if in_place else cache.clone()
    s = update.shape[2]
    for b, start in enumerate(starts.reshape(-1).expand(cache.shape[0]).tolist()):
        out[b, :, start:start + s] = update[b]
    return out


def row_causal_mask(write_index, s, total, groups: int):
    """[B, 1, groups * S, T] bool: query row i of batch row b sees cache rows [0, write_index[b] + i], the
    same for every head of a group (rows of other streams' longer valid regions, and this row's unwritten
    tail, are masked). write_index int64 [B]; S new rows; T cache rows read."""
    rows = write_index.reshape(-1, 1, 1) + torch.arange(s, device=write_index.device).reshape(1, -1, 1)  # [B, S, 1]
    cols = torch.arange(total, device=write_index.device).reshape(1, 1, -1)                            # [1, 1, T]
    return (cols <= rows).repeat(1, groups, 1).unsqueeze(1)                                            # [B, 1, gS, T]


def _row_attention(query, keys, values, write_index, scale: float):
    """query [B, H, S, hd] at rows write_index[b]..+S-1 of each batch row; keys/values [B, kv, T, hd]
    -> [B, H, S, hd]. Grouped-query attention with each batch row's own valid length (a pool's batch)."""
    b, h, s, hd = query.shape
    kv, total = keys.shape[1], keys.shape[2]
    groups = h // kv
    q = query.reshape(b, kv, groups * s, hd)                                        # head = kv_head * groups + g
    mask = row_causal_mask(write_index, s, total, groups)
    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(b, h, s, hd)


class TensorScatter(torch.autograd.Function):
    """Traced as one `SCATTER_DOMAIN::TensorScatter(cache, update, write_index)` node (axis 2; write_index
    [B]: ONNX TensorScatter's write_indices, one per batch row)."""

    @staticmethod
    def forward(ctx, cache, update, write_index):
        return _scatter_eager(cache, update, write_index, in_place=False)

    @staticmethod
    def symbolic(g, cache, update, write_index):
        out = g.op(f"{SCATTER_DOMAIN}::TensorScatter", cache, update, write_index, axis_i=CACHE_AXIS)
        out.setType(cache.type())
        return out


class ValidRows(torch.autograd.Function):
    """cache [B, kv, M, hd] -> its rows [0, length) as one ONNX Slice with a tensor end (length int64 [1]:
    the longest row's valid length; shorter rows are masked)."""

    @staticmethod
    def forward(ctx, cache, length):
        return cache[:, :, :int(length.reshape(-1)[0])].clone()

    @staticmethod
    def symbolic(g, cache, length):
        zero = g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64))
        axis = g.op("Constant", value_t=torch.tensor([CACHE_AXIS], dtype=torch.int64))
        return g.op("Slice", cache, zero, length, axis)


class ScatterKV:
    """What the model sees as its cache for one call: `update` hands the new keys/values through;
    the attention function scatters them into `buffers[layer]` at `write_index`."""

    def __init__(self, buffers, write_index):
        self.buffers = list(buffers)            # per layer (key, value) [B, kv, M, hd]
        self.write_index = write_index          # int64 [B]: rows already cached, per batch row
        self.present = [None] * len(self.buffers)

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        return key_states, value_states         # the new rows only: the attention function writes them


def scatter_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, kv_cache=None,
                      **kwargs):
    """transformers attention function: query [B, H, S, hd] (rotated), key/value [B, kv, S, hd] (new rows)."""
    s = query.shape[2]
    past_key, past_value = kv_cache.buffers[module.layer_idx]                       # [B, kv, M, hd]
    scale = float(scaling if scaling is not None else module.head_dim ** -0.5)
    write_index = kv_cache.write_index                                                # int64 [B]
    if torch.onnx.is_in_onnx_export():
        present_key = TensorScatter.apply(past_key, key, write_index)
        present_value = TensorScatter.apply(past_value, value, write_index)
        total = write_index.max().reshape(1) + s                                       # int64 [1]
        keys, values = ValidRows.apply(present_key, total), ValidRows.apply(present_value, total)
    else:
        present_key = _scatter_eager(past_key, key, write_index, in_place=True)
        present_value = _scatter_eager(past_value, value, write_index, in_place=True)
        total = int(write_index.max()) + s
        keys, values = present_key[:, :, :total], present_value[:, :, :total]          # [B, kv, T, hd]
    out = _row_attention(query, keys, values, write_index, scale)                     # [B, H, S, hd]
    kv_cache.present[module.layer_idx] = (present_key, present_value)
    return out.transpose(1, 2), None                                                  # [B, S, H, hd]


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, scatter_attention)


class ScatterDecoder(nn.Module):
    """`thinker.model` + `lm_head` on a static cache updated by a scatter: what `decoder_scatter.onnx` computes.

    inputs_embeds [B, S, D]; position_ids [3, B, S] (TMRoPE rows); write_index int64 [B] = rows already
    cached in each batch row (a pool's streams, each at its own length); logits_index int64 [L] (none on a chunk prefill, [S - 1] for a question or a decode step);
    past_key_values: per layer (key, value) [B, kv, M, hd]. Returns {"logits": [B, L, V], "present": per
    layer (key, value) [B, kv, M, hd]} (in eager mode the same buffers, rows [write_index, +S) written).
    """

    def __init__(self, thinker):
        super().__init__()
        register()
        self.model = thinker.model
        self.lm_head = thinker.lm_head
        self.config = thinker.config

    def forward(self, inputs_embeds, position_ids, write_index, logits_index, past_key_values):
        cache = ScatterKV(_layers(past_key_values), write_index)
        return run_on_cache(self, ATTENTION_NAME, inputs_embeds, position_ids, logits_index, cache)
