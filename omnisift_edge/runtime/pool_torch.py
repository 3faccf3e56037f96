"""The stream pool's torch backend: one model for every stream, KV slots of torch buffers, decode steps batched.

`TorchPoolBackend` is what `runtime.pool.StreamPool` asks of a backend (`PoolBackend` there):
- the model the export was made from is loaded once (`session.load_export_model`, as a torch
  `OmniSession` loads it), with one chunk compressor shared by the streams;
- `TorchSlots`: per layer one key and one value buffer [max_streams, kv_heads, max_context,
  head_dim] on the model's device and dtype, zeroed at open, one slot (row of axis 0) per stream;
- a stream is a `SlotTorchStream`: a `TorchStream` whose cache (`SlotTorchCache`) is the
  `TorchInPlaceCache` of runtime/torch_kv.py on the view [slot:slot+1] of those buffers (only
  `allocate` differs), so its own calls (prefix, chunk prefill, question, drop, rotate) are
  exactly a lone stream's; every model call goes through the pool's scheduler;
- `run_decodes`: the decode steps (one token each) of every answering stream in ONE forward of the
  thinker's LLM (transformers' own modeling code; attention routed to `rows_attention`, a registered
  `AttentionInterface` entry, with a small cache object as `model.inplace_kv` does): inputs_embeds
  [B, 1, D], position ids [3, B, 1] (each row its own TMRoPE position), and per row its slot, its
  write index (its cache length) and its valid length: each row's new key/value is written into
  its slot at its own index, and attends over its slot's rows [0, length] (a boolean mask per row
  over the span [0, max length]). Only the decoding slots are read: a contiguous run of slots is a
  view, others are gathered; streams that are not decoding are untouched.

A stream's kept sets, logits (fp32 within 1e-5) and greedy answers equal the same stream run alone
(tests/runtime/test_pool_torch.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from omnisift_edge.errors import UsageError
from omnisift_edge.model.inplace_kv import InPlaceDecoder, InPlaceKV, run_on_cache
from omnisift_edge.runtime.slots import SlotBook
from omnisift_edge.runtime.torch_kv import TorchInPlaceCache, kv_geometry
from omnisift_edge.runtime.torch_pipeline import TorchStream, chunk_compressor

ROWS_ATTENTION = "omnisift_pool_rows"     # our entry in transformers' AttentionInterface


class TorchSlots(SlotBook):
    """The pool's KV buffers, per layer (key, value) [max_streams, kv, capacity, hd], and its free slots."""

    def __init__(self, thinker, max_streams: int, capacity: int):
        super().__init__(max_streams)
        layers, kv_heads, head_dim, dtype, device = kv_geometry(thinker)
        shape = (max_streams, kv_heads, capacity, head_dim)                          # [S, kv, M, hd]
        self.buffers = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                        for _ in range(layers)]
        self.capacity = int(capacity)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for pair in self.buffers for b in pair)


class SlotTorchCache(TorchInPlaceCache):
    """One stream's `TorchInPlaceCache` on its slot of the pool's `TorchSlots` (never grows)."""

    def __init__(self, slots: TorchSlots, slot: int, thinker):
        self.slots, self.slot = slots, int(slot)
        super().__init__(thinker, slots.capacity)

    def allocate(self) -> None:
        """Views [1, kv, M, hd] of the slot's rows, zeroed (the slot may have served a closed stream)."""
        s = self.slot
        self.buffers = [(key[s:s + 1], value[s:s + 1]) for key, value in self.slots.buffers]
        for pair in self.buffers:
            for buf in pair:
                buf.zero_()
        self.length = 0

    def close(self) -> None:
        """Give the slot back to the pool."""
        self.slots.give(self.slot)


class RowsKV(InPlaceKV):
    """The model's cache for one batched decode call: row b writes into slot `slots[b]` at row `lengths[b]`
    and attends over that slot's rows [0, lengths[b]]."""

    def __init__(self, buffers, slots: Sequence[int], lengths: Sequence[int], device):
        super().__init__(buffers, None, None)
        self.rows = torch.tensor(list(slots), dtype=torch.long, device=device)         # [B] slot of each row
        self.lengths = torch.tensor(list(lengths), dtype=torch.long, device=device)    # [B] write index
        total = max(lengths) + 1
        lo, hi = min(slots), max(slots) + 1
        self.span = slice(lo, hi) if list(slots) == list(range(lo, hi)) else None     # contiguous: a view
        valid = torch.arange(total, device=device)[None, :] <= self.lengths[:, None]   # [B, T]
        self.mask = valid[:, None, None, :]                                             # [B, 1, 1, T]
        self.total = total

    def rows_of(self, buf: torch.Tensor) -> torch.Tensor:
        """The decoding slots' rows [0, total) of `buf` [S, kv, M, hd] -> [B, kv, T, hd]."""
        valid = buf[:, :, :self.total]                                                 # [S, kv, T, hd] (a view)
        return valid[self.span] if self.span is not None else valid.index_select(0, self.rows)   # copies B x T rows


def rows_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, kv_cache=None, **kwargs):
    """transformers attention function for `RowsKV`: query [B, H, 1, hd] (rotated), key/value [B, kv, 1, hd]."""
    b, h, s, hd = query.shape                                                          # s == 1
    kv = module.config.num_key_value_heads
    past_key, past_value = kv_cache.buffers[module.layer_idx]                          # [S, kv, M, hd]
    past_key[kv_cache.rows, :, kv_cache.lengths] = key[:, :, -1]                       # [B, kv, hd] at own index
    past_value[kv_cache.rows, :, kv_cache.lengths] = value[:, :, -1]
    q = query.reshape(b, kv, (h // kv) * s, hd)                                        # GQA folded, as inplace_kv
    scale = float(scaling if scaling is not None else hd ** -0.5)
    out = torch.nn.functional.scaled_dot_product_attention(q, kv_cache.rows_of(past_key), kv_cache.rows_of(past_value),
                                                           attn_mask=kv_cache.mask, scale=scale)
    kv_cache.present[module.layer_idx] = (past_key, past_value)
    return out.reshape(b, h, s, hd).transpose(1, 2), None                              # [B, 1, H, hd]


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ROWS_ATTENTION, rows_attention)


@torch.inference_mode()
def decode_rows(decoder: InPlaceDecoder, slots: TorchSlots, caches: Sequence[SlotTorchCache],
                embeds: Sequence[torch.Tensor], positions: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """One forward for one decode token per cache: embeds [1, 1, D], positions [3, 1(, 1)] each; returns
    each cache's logits [1, V] (float) and advances each by one row (see the module docstring)."""
    if len({c.slot for c in caches}) != len(caches):
        raise UsageError("one decode step per stream and call")
    for cache in caches:
        cache.reserve(1)
    order = sorted(range(len(caches)), key=lambda i: caches[i].slot)                 # rows by slot
    device = embeds[0].device
    batch_embeds = torch.cat([embeds[i] for i in order])                               # [B, 1, D]
    pos = np.stack([np.asarray(positions[i], np.int64).reshape(3, 1) for i in order], axis=1)   # [3, B, 1]
    cache = RowsKV(slots.buffers, [caches[i].slot for i in order], [caches[i].length for i in order], device)
    out = run_on_cache(decoder, ROWS_ATTENTION, batch_embeds, torch.from_numpy(pos).to(device),
                       torch.tensor([0], dtype=torch.long, device=device), cache)
    logits = out["logits"][:, -1].float()                                               # [B, V]
    result = [None] * len(caches)
    for row, i in enumerate(order):
        caches[i].append(1)
        result[i] = logits[row:row + 1]                                                 # [1, V]
    return result


class SlotTorchStream(TorchStream):
    """A `TorchStream` on the pool's model and a KV slot; its model calls go through the pool's scheduler."""

    def __init__(self, pool, slot: int, prefix_ids: Sequence[int]):
        self.pool, self.slot = pool, slot
        backend = pool.backend
        super().__init__(backend.model, prefix_ids, **backend.options, max_context=pool.max_context,
                         context=pool.cfg.context)

    def _call(self, fn):
        """`fn()` in its turn on the scheduler (in inference mode: the runner may be another stream's thread)."""
        def job():
            with torch.inference_mode():
                return fn()
        return self.pool.scheduler.call(job)

    def _open_cache(self, max_context):
        return self._call(lambda: SlotTorchCache(self.pool.backend.slots, self.slot, self.model.thinker))

    def _open_compressor(self, compression):
        return self.pool.backend.compressor

    def _step(self, embeds, positions, want_logits=True):
        if want_logits and embeds.shape[1] == 1:             # one answer token: batched with the others'
            self.kv.reserve(1)
            return self.pool.scheduler.decode(self.kv, embeds, positions)
        return self._call(lambda: TorchStream._step(self, embeds, positions, want_logits))

    def _encode_video(self, pixel_values, n_grids):
        return self._call(lambda: TorchStream._encode_video(self, pixel_values, n_grids))

    def _encode_audio(self, mel):
        return self._call(lambda: TorchStream._encode_audio(self, mel))

    def _compress(self, video, audio, n_grids, chunk_positions):
        return self._call(lambda: TorchStream._compress(self, video, audio, n_grids, chunk_positions))

    def _drop_kv(self, start, stop):
        self._call(lambda: TorchStream._drop_kv(self, start, stop))

    def _rotate_kv(self, delta):
        self._call(lambda: TorchStream._rotate_kv(self, delta))

    def close(self) -> None:
        self.kv.close()


class TorchPoolBackend:
    """The torch reference on `cfg.device`: one model, one `TorchSlots`, batched decode steps."""

    name = "torch"

    def __init__(self, pool, template):
        from omnisift_edge.runtime.session import load_export_model, torch_stream_options

        self.pool = pool
        self.model = load_export_model(pool.cfg, template.manifest)
        self.options = torch_stream_options(template.manifest, template.plan)      # grid_hw, compression
        compression = self.options["compression"]
        self.compressor = None               # shared by the streams; a stream refuses a missing selector itself
        if not compression.is_identity and self.model.selector is not None:
            self.compressor = chunk_compressor(self.model, compression)
        self.decoder = InPlaceDecoder(self.model.thinker)
        register()
        self.slots = TorchSlots(self.model.thinker, pool.max_streams, pool.max_context)

    def open_stream(self, slot: int, prefix_ids: Sequence[int]) -> SlotTorchStream:
        return SlotTorchStream(self.pool, slot, prefix_ids)

    def run_decodes(self, steps):
        caches, embeds, positions = zip(*steps)
        return decode_rows(self.decoder, self.slots, caches, embeds, positions)
