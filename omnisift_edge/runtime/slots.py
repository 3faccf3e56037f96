"""A stream pool's KV storage: one preallocated buffer per layer and kind, a slot (row) per stream.

`SlotBuffers` holds, per past name of `decoder_gqa` (`past_key_values.{i}.key/value`), one zeroed
array [max_streams, kv_heads, capacity + 1, head_dim] and hands out slots (rows of axis 0). A stream's
`SlotCache` is an `OrtInPlaceCache` whose `allocate` takes the view [slot:slot+1] of those arrays
instead of allocating (runtime/kv_cache.py: only `allocate` creates storage), so a stream's own calls
(prefix, chunk prefill, question) run exactly as a lone `OmniSession`'s do, on its slot.

`decode_rows` runs the decode steps of several streams as ONE `decoder_gqa` call: the slots
[lo, hi) spanning them are bound as one contiguous batch (a view, no copy), each row with its own
position and valid length (GroupQueryAttention's `seqlens_k` is per batch row). Rows of the span
that are not decoding (a stream between chunks, a free slot) ride along with a zero embedding and
their own length, so their write lands on row `length`, past their valid rows: the `+ 1` row of
every slot is the scratch row a full stream's write lands on. Such a row costs one wasted decode
row (attention over its own cached rows); slots are handed out lowest first to keep spans short.
The pool runs ONNX Runtime on the CPU (the slot views wrap host memory).
"""

from __future__ import annotations

import heapq
from typing import Sequence

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache


class SlotBuffers:
    """The pool's KV arrays [max_streams, kv_heads, capacity + 1, head_dim] per past name, and its free slots."""

    def __init__(self, past_names: Sequence[str], max_streams: int, kv_heads: int, capacity: int, head_dim: int,
                 float_type):
        shape = (max_streams, kv_heads, capacity + 1, head_dim)         # [S, kv, M + 1 (scratch row), hd]
        self.arrays = {name: np.zeros(shape, float_type) for name in past_names}
        self.max_streams, self.capacity = int(max_streams), int(capacity)
        self._free = list(range(max_streams))                           # a heap: lowest slot first
        self.owners: dict[int, SlotCache] = {}                          # slot -> the cache on it

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self) -> int | None:
        """The lowest free slot, or None when every slot is in use."""
        return heapq.heappop(self._free) if self._free else None

    def give(self, slot: int) -> None:
        """Free `slot` for the next stream (its rows are zeroed when that stream's cache allocates)."""
        self.owners.pop(slot, None)
        if slot not in self._free:
            heapq.heappush(self._free, slot)

    def length(self, slot: int) -> int:
        """Valid rows in `slot` (0 for a free slot)."""
        cache = self.owners.get(slot)
        return cache.length if cache is not None else 0


class SlotCache(OrtInPlaceCache):
    """One stream's `decoder_gqa` cache on its slot of the pool's `SlotBuffers` (CPU)."""

    def __init__(self, buffers: SlotBuffers, slot: int, session, entry: dict, rope: dict):
        self.buffers, self.slot = buffers, int(slot)
        super().__init__(session, entry, buffers.capacity, rope)
        buffers.owners[self.slot] = self

    def allocate(self) -> None:
        """Views [1, kv, M + 1, hd] of the slot's rows (zeroed: the slot may have served a closed stream)."""
        s = self.slot
        self.arrays = {name: self.buffers.arrays[name][s:s + 1] for name in self.past_names}
        for array in self.arrays.values():
            array[...] = 0
        self.values = {name: self.ort.OrtValue.ortvalue_from_numpy(a) for name, a in self.arrays.items()}  # no copy
        self._bind_buffers()

    def close(self) -> None:
        """Give the slot back to the pool."""
        self.buffers.give(self.slot)


def decode_rows(buffers: SlotBuffers, caches: Sequence[SlotCache], embeds: Sequence[np.ndarray],
                positions: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One decoder call for one decode token per cache: embeds [1, 1, D], positions [3, 1, 1] each;
    returns each cache's logits [V] (fp32) and advances each by one row (see the module docstring)."""
    if len({c.slot for c in caches}) != len(caches):
        raise UsageError("one decode step per stream and call")
    first = caches[0]
    for cache in caches:
        cache.reserve(1)
    lo, hi = min(c.slot for c in caches), max(c.slot for c in caches) + 1
    rows = {c.slot - lo: i for i, c in enumerate(caches)}
    width = int(embeds[0].shape[-1])
    batch_embeds = np.zeros((hi - lo, 1, width), first.float_type)                           # [B, 1, D]
    batch_positions = np.zeros((3, hi - lo, 1), np.int64)                                    # [3, B, 1]
    seqlens = np.array([buffers.length(s) for s in range(lo, hi)], np.int32)                # rows before this call
    for row, i in rows.items():
        batch_embeds[row] = embeds[i][0]
        batch_positions[:, row] = np.asarray(positions[i]).reshape(3, 1)
    binding = first.session.io_binding()
    binding.bind_output(first.logits_name, "cpu")
    for past, present in zip(first.past_names, first.present_names):
        value = first.ort.OrtValue.ortvalue_from_numpy(buffers.arrays[past][lo:hi])          # [B, kv, M + 1, hd]
        binding.bind_ortvalue_input(past, value)
        binding.bind_ortvalue_output(present, value)
    binding.bind_cpu_input(first.embeds_name, batch_embeds)
    binding.bind_cpu_input(first.positions_name, batch_positions)
    binding.bind_cpu_input(first.seqlens_name, seqlens)                                      # new row at `length`
    binding.bind_cpu_input(first.total_name, np.array([int(seqlens.max()) + 1], np.int32))
    binding.bind_cpu_input(first.logits_index_name, np.array([0], np.int64))
    first.session.run_with_iobinding(binding)
    logits = binding.get_outputs()[0].numpy()                                               # [B, 1, V]
    for cache in caches:
        cache.append(1)
    return [logits[c.slot - lo, -1].astype(np.float32) for c in caches]
