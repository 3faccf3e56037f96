"""The thinker LLM on a static KV cache updated by a scatter (the `decoder_scatter` form, TensorRT's in-place cache).

One attention call scatters the S new keys/values into the cache [B, kv_heads, cache_length, head_dim]
at rows [write_index, write_index + S), then attends over the valid rows [0, write_index + S) of the
updated cache (causal for S > 1). That is ONNX's `TensorScatter` (opset 24, axis 2, mode linear),
which TensorRT's ONNX parser (TensorRT >= 10.15, TensorRT-RTX) turns into an IKVCacheUpdateLayer whose
output IS the cache input: bound to one device buffer, the engine writes only the new rows.

The TorchScript exporter stops at opset 20, so while tracing `TensorScatter.symbolic` emits a node of
our own domain (`SCATTER_DOMAIN::TensorScatter`); `export.decoder.scatter` converts the graph to opset
24 and renames that node to the standard op. `ValidRows.symbolic` emits one ONNX `Slice` whose end is
the tensor write_index + S (the valid length), so the traced graph reads only the valid rows.

Nothing is forked: transformers' own attention module runs; we register an `AttentionInterface`
function and pass a tiny cache object whose `update` hands the new rows through, as `inplace_kv` does.
In eager mode the same function writes the rows into the caller's buffers in place.
"""

from __future__ import annotations


import torch
from torch import nn

from omnisift_edge.model.inplace_kv import _causal_attention, _layers, run_on_cache

ATTENTION_NAME = "omnisift_scatter_kv"     # our entry in transformers' AttentionInterface
SCATTER_DOMAIN = "omnisift"                # the traced node's domain until the opset-24 rewrite
CACHE_AXIS = 2                             # [B, kv, cache_length, hd]: rows are axis 2


def _scatter_eager(cache, update, start: int, in_place: bool):
    """cache [B, kv, M, hd] with rows [start, start + S) replaced by update [B, kv, S, hd]."""
    out = cache if in_place else cache.clone()
    out[:, :, start:start + update.shape[2]] = update
    return out


class TensorScatter(torch.autograd.Function):
    """Traced as one `SCATTER_DOMAIN::TensorScatter(cache, update, write_index)` node (axis 2)."""

    @staticmethod
    def forward(ctx, cache, update, write_index):
        return _scatter_eager(cache, update, int(write_index.reshape(-1)[0]), in_place=False)

    @staticmethod
    def symbolic(g, cache, update, write_index):
        out = g.op(f"{SCATTER_DOMAIN}::TensorScatter", cache, update, write_index, axis_i=CACHE_AXIS)
        out.setType(cache.type())
        return out


class ValidRows(torch.autograd.Function):
    """cache [B, kv, M, hd] -> its rows [0, length) as one ONNX Slice with a tensor end (length int64 [1])."""

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
        self.write_index = write_index          # int64 [1]: rows already cached
        self.present = [None] * len(self.buffers)

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        return key_states, value_states         # the new rows only: the attention function writes them


def scatter_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, kv_cache=None,
                      **kwargs):
    """transformers attention function: query [B, H, S, hd] (rotated), key/value [B, kv, S, hd] (new rows)."""
    s = query.shape[2]
    past_key, past_value = kv_cache.buffers[module.layer_idx]                       # [B, kv, M, hd]
    scale = float(scaling if scaling is not None else module.head_dim ** -0.5)
    if torch.onnx.is_in_onnx_export():
        present_key = TensorScatter.apply(past_key, key, kv_cache.write_index)
        present_value = TensorScatter.apply(past_value, value, kv_cache.write_index)
        total = kv_cache.write_index + s                                              # int64 [1]
        keys, values = ValidRows.apply(present_key, total), ValidRows.apply(present_value, total)
        past = keys.shape[2] - s              # traced from the slice's shape: write_index
    else:
        past = int(kv_cache.write_index.reshape(-1)[0])
        present_key = _scatter_eager(past_key, key, past, in_place=True)
        present_value = _scatter_eager(past_value, value, past, in_place=True)
        keys, values = present_key[:, :, :past + s], present_value[:, :, :past + s]  # [B, kv, past + S, hd]
    out = _causal_attention(query, keys, values, past, scale)                         # [B, H, S, hd]
    kv_cache.present[module.layer_idx] = (present_key, present_value)
    return out.transpose(1, 2), None                                                  # [B, S, H, hd]


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, scatter_attention)


class ScatterDecoder(nn.Module):
    """`thinker.model` + `lm_head` on a static cache updated by a scatter: what `decoder_scatter.onnx` computes.

    inputs_embeds [B, S, D]; position_ids [3, B, S] (TMRoPE rows); write_index int64 [1] = rows already
    cached; logits_index int64 [L] (none on a chunk prefill, [S - 1] for a question or a decode step);
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
