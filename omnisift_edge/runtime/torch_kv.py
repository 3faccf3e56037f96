"""The PyTorch reference backend's static KV cache: buffers allocated once, written in place.

The same cost model as ONNX Runtime's `decoder_gqa`: `model.inplace_kv.InPlaceDecoder` writes only
the new rows into [1, kv_heads, capacity, head_dim] per layer and attends over the valid rows.
With a max context the buffers are allocated once for the stream; without one they start at
`INITIAL_CAPACITY` rows and double when full (a reallocation, amortized). It implements
runtime/kv_cache.py's protocol (allocate, bind, append, drop, rotate, reset).
"""

from __future__ import annotations

import numpy as np
import torch

from omnisift_edge.runtime.kv_cache import KVCache
from omnisift_edge.model.inplace_kv import InPlaceDecoder, rotate_keys

INITIAL_CAPACITY = 2048


def kv_geometry(thinker) -> tuple[int, int, int, torch.dtype, torch.device]:
    """(layers, kv_heads, head_dim, dtype, device) of the thinker LLM's KV buffers."""
    cfg = thinker.config.text_config
    param = next(thinker.model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, param.dtype, param.device


class TorchInPlaceCache(KVCache):
    """runtime/kv_cache.py's protocol over torch buffers [1, kv, capacity, hd], one pair (key, value) per layer."""

    larger = "use a larger max context"

    def __init__(self, thinker, capacity: int | None):
        self.decoder = InPlaceDecoder(thinker)
        self.growable = capacity is None
        self.capacity = INITIAL_CAPACITY if capacity is None else int(capacity)
        self.layers, self.kv_heads, self.head_dim, self.dtype, self.device = kv_geometry(thinker)
        self.inv_freq = thinker.model.rotary_emb.inv_freq.detach()                         # [hd/2]
        self.allocate()

    def allocate(self) -> None:
        shape = (1, self.kv_heads, self.capacity, self.head_dim)                          # [1, kv, M, hd]
        self.buffers = [(torch.zeros(shape, dtype=self.dtype, device=self.device),
                         torch.zeros(shape, dtype=self.dtype, device=self.device))
                        for _ in range(self.layers)]
        self.length = 0

    def bind(self) -> list:
        """The (key, value) buffers of every layer, which `InPlaceDecoder` writes in place."""
        return self.buffers

    def _grow(self, need: int) -> None:
        capacity = self.capacity
        while capacity < need:
            capacity *= 2
        grown = []
        for key, value in self.buffers:
            pair = []
            for buf in (key, value):
                new = buf.new_zeros((*buf.shape[:2], capacity, buf.shape[3]))
                new[:, :, :self.length] = buf[:, :, :self.length]
                pair.append(new)
            grown.append(tuple(pair))
        self.buffers, self.capacity = grown, capacity

    def step(self, embeds: torch.Tensor, positions: np.ndarray, want_logits: bool) -> torch.Tensor | None:
        """Append embeds [1, n, D] at positions [3, n]; logits [1, V] (float) of the last row, or None."""
        n = int(embeds.shape[1])
        self.reserve(n)
        total = self.length + n
        dev = self.device
        pos = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)).reshape(3, 1, n).to(dev)   # [3, 1, n]
        rows = torch.tensor([n - 1] if want_logits else [], dtype=torch.int64, device=dev)
        out = self.decoder(embeds, pos, torch.tensor([total - 1], dtype=torch.int32, device=dev),
                           torch.tensor([total], dtype=torch.int32, device=dev), rows, self.bind())
        self.append(n)
        return out["logits"][:, -1].float() if want_logits else None                    # [1, V]

    def _drop(self, start: int, stop: int) -> None:
        removed = stop - start
        for pair in self.buffers:
            for buf in pair:
                buf[:, :, start:self.length - removed] = buf[:, :, stop:self.length].clone()
                buf[:, :, self.length - removed:self.length] = 0

    def _rotate(self, delta: int) -> None:
        for key, _ in self.buffers:
            rotate_keys(key[:, :, :self.length], delta, self.inv_freq)
