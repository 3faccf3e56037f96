"""The PyTorch reference backend's static KV cache: buffers allocated once, written in place.

The same cost model as ONNX Runtime's `decoder_gqa`: `model.inplace_kv.InPlaceDecoder` writes only
the new rows into [1, kv_heads, capacity, head_dim] per layer and attends over the valid rows.
With a max context the buffers are allocated once for the stream; without one they start at
`INITIAL_CAPACITY` rows and double when full (a reallocation, amortized).
"""

from __future__ import annotations

import numpy as np
import torch

from omnisift_edge.errors import UsageError
from omnisift_edge.model.inplace_kv import InPlaceDecoder, rotate_keys

INITIAL_CAPACITY = 2048


class TorchInPlaceCache:
    def __init__(self, thinker, capacity: int | None):
        cfg = thinker.config.text_config
        param = next(thinker.model.parameters())
        self.decoder = InPlaceDecoder(thinker)
        self.growable = capacity is None
        self.capacity = INITIAL_CAPACITY if capacity is None else int(capacity)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (1, cfg.num_key_value_heads, self.capacity, head_dim)                    # [1, kv, M, hd]
        self.buffers = [(torch.zeros(shape, dtype=param.dtype, device=param.device),
                         torch.zeros(shape, dtype=param.dtype, device=param.device))
                        for _ in range(cfg.num_hidden_layers)]
        self.inv_freq = thinker.model.rotary_emb.inv_freq.detach()                         # [hd/2]
        self.device = param.device
        self.length = 0

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
        total = self.length + n
        if total > self.capacity:
            if not self.growable:
                raise UsageError(f"the KV cache holds {self.capacity} tokens ({self.length} cached + {n} new); "
                                 "start a new stream or use a larger max context")
            self._grow(total)
        dev = self.device
        pos = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)).reshape(3, 1, n).to(dev)   # [3, 1, n]
        rows = torch.tensor([n - 1] if want_logits else [], dtype=torch.int64, device=dev)
        out = self.decoder(embeds, pos, torch.tensor([total - 1], dtype=torch.int32, device=dev),
                           torch.tensor([total], dtype=torch.int32, device=dev), rows, self.buffers)
        self.length = total
        return out["logits"][:, -1].float() if want_logits else None                    # [1, V]

    def drop(self, start: int, stop: int) -> None:
        """Remove cached rows [start, stop); later rows move down within the same buffers."""
        if not 0 <= start <= stop <= self.length:
            raise UsageError(f"cannot drop cached tokens [{start}, {stop}) of {self.length}")
        removed = stop - start
        for pair in self.buffers:
            for buf in pair:
                buf[:, :, start:self.length - removed] = buf[:, :, stop:self.length].clone()
                buf[:, :, self.length - removed:self.length] = 0
        self.length -= removed

    def rotate(self, delta: int) -> None:
        """Re-base every cached key's position by -delta (RoPE rotation; values carry no position)."""
        for key, _ in self.buffers:
            rotate_keys(key[:, :, :self.length], delta, self.inv_freq)
