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
`prefill_rows` runs the first prefill (the prompt prefix) of several streams as one call per run of
consecutive slots; GroupQueryAttention takes S > 1 new rows over a past only at batch 1 ("batch_size
must be 1 when sequence_length > 1 and past context is given"). `scatter_rows` runs the chunk
prefills of several streams (S kept rows each, over pasts of any lengths) as one `decoder_scatter` call
per run of consecutive slots: ONNX TensorScatter with a write index per row, the slot span bound as both
past and present, so ONNX Runtime 1.32's CPU kernel writes the new rows in place (its output is its
input: no copy of the cache; measured in docs/runtime.md, benchmarks/pool_scatter.py) and each row
attends over its own rows under the graph's per-row causal mask. The pool uses it only with
`open_pool(..., batch_prefill=True)`: on the CPU it measured slower than one `decoder_gqa` call per
chunk (runtime/pool.py). The pool runs ONNX Runtime on the CPU (the slot views wrap host memory).
"""

from __future__ import annotations

import heapq
from typing import Sequence

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache


class SlotBook:
    """Which of `max_streams` slots are free (handed out lowest first, to keep decode spans short) and whose cache
    holds the others: the bookkeeping every pool backend's slots share (this module's, pool_torch's, pool_trt's)."""

    def __init__(self, max_streams: int):
        self.max_streams = int(max_streams)
        self._free = list(range(self.max_streams))                      # a heap: lowest slot first
        self.owners: dict[int, object] = {}                             # slot -> the cache on it

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


class SlotBuffers(SlotBook):
    """The pool's KV arrays [max_streams, kv_heads, capacity + 1, head_dim] per past name, and its free slots."""

    def __init__(self, past_names: Sequence[str], max_streams: int, kv_heads: int, capacity: int, head_dim: int,
                 float_type):
        super().__init__(max_streams)
        shape = (max_streams, kv_heads, capacity + 1, head_dim)         # [S, kv, M + 1 (scratch row), hd]
        self.arrays = {name: np.zeros(shape, float_type) for name in past_names}
        self.capacity = int(capacity)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


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


def _run_span(buffers: SlotBuffers, first: SlotCache, lo: int, embeds: np.ndarray, positions: np.ndarray,
              seqlens: np.ndarray, logits_index: np.ndarray) -> np.ndarray | None:
    """One `decoder_gqa` call on the slots [lo, lo + B): embeds [B, S, D], positions [3, B, S], seqlens [B]
    (each row's valid length after the call, minus 1); the logits [B, len(logits_index), V] or None."""
    hi = lo + embeds.shape[0]
    binding = first.session.io_binding()
    binding.bind_output(first.logits_name, "cpu")
    for past, present in zip(first.past_names, first.present_names):
        value = first.ort.OrtValue.ortvalue_from_numpy(buffers.arrays[past][lo:hi])          # [B, kv, M + 1, hd]
        binding.bind_ortvalue_input(past, value)
        binding.bind_ortvalue_output(present, value)
    binding.bind_cpu_input(first.embeds_name, np.ascontiguousarray(embeds, dtype=first.float_type))
    binding.bind_cpu_input(first.positions_name, np.ascontiguousarray(positions, dtype=np.int64))
    binding.bind_cpu_input(first.seqlens_name, seqlens.astype(np.int32))
    binding.bind_cpu_input(first.total_name, np.array([int(seqlens.max()) + 1], np.int32))
    binding.bind_cpu_input(first.logits_index_name, logits_index.astype(np.int64))
    first.session.run_with_iobinding(binding)
    return binding.get_outputs()[0].numpy() if len(logits_index) else None


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
    logits = _run_span(buffers, first, lo, batch_embeds, batch_positions, seqlens, np.array([0]))  # [B, 1, V]
    for cache in caches:
        cache.append(1)
    return [logits[c.slot - lo, -1].astype(np.float32) for c in caches]


def slot_runs(caches: Sequence[SlotCache]) -> list[list[int]]:
    """Indices into `caches` grouped in runs of consecutive slots (each run: one batched prefill call)."""
    order = sorted(range(len(caches)), key=lambda i: caches[i].slot)
    runs: list[list[int]] = []
    for i in order:
        if runs and caches[i].slot == caches[runs[-1][-1]].slot + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def prefill_rows(buffers: SlotBuffers, caches: Sequence[SlotCache], embeds: Sequence[np.ndarray],
                 positions: Sequence[np.ndarray]) -> list[None]:
    """The first prefill of several streams into their empty caches, n tokens each (embeds [1, n, D],
    positions [3, 1, n]): one decoder call per run of consecutive slots, no logits. Only empty caches:
    onnxruntime's GroupQueryAttention refuses S > 1 new rows over a past unless the batch is 1 ("batch_size
    must be 1 when sequence_length > 1 and past context is given"), so a chunk's prefill runs alone. Only
    prefilling rows go in a call: a row riding along would cost a whole prefill row."""
    if len({c.slot for c in caches}) != len(caches):
        raise UsageError("one prefill per stream and call")
    n = {int(e.shape[1]) for e in embeds}
    if len(n) != 1:
        raise UsageError(f"a batched prefill takes rows of one length (got {sorted(n)})")
    if any(c.length for c in caches):
        raise UsageError("a batched prefill goes into empty caches only (GroupQueryAttention: batch 1 over a past)")
    n = n.pop()
    for cache in caches:
        cache.reserve(n)
    for run in slot_runs(caches):
        batch_embeds = np.concatenate([embeds[i] for i in run], axis=0)                     # [B, n, D]
        batch_positions = np.concatenate([np.asarray(positions[i]).reshape(3, 1, n) for i in run], axis=1)  # [3, B, n]
        seqlens = np.full(len(run), n - 1, np.int32)                                        # valid rows after, - 1
        _run_span(buffers, caches[run[0]], caches[run[0]].slot, batch_embeds, batch_positions, seqlens,
                  np.zeros(0, np.int64))
        for i in run:
            caches[i].append(n)
    return [None] * len(caches)


def scatter_rows(buffers: SlotBuffers, session, names: Sequence[str], caches: Sequence[SlotCache],
                 embeds: Sequence[np.ndarray], positions: Sequence[np.ndarray]) -> list[None]:
    """The chunk prefills of several streams, n kept rows each (embeds [1, n, D], positions [3, 1, n]) over
    pasts of any lengths: one `decoder_scatter` call per run of consecutive slots (`session`; `names`: its
    embeds, positions, write_index and logits_index inputs), each row written at its own length, no logits.
    A run of one slot goes through its own cache's `decoder_gqa` call instead (exactly a lone stream's)."""
    if len({c.slot for c in caches}) != len(caches):
        raise UsageError("one prefill per stream and call")
    n = {int(e.shape[1]) for e in embeds}
    if len(n) != 1:
        raise UsageError(f"a batched prefill takes rows of one length (got {sorted(n)})")
    n = n.pop()
    for cache in caches:
        cache.reserve(n)
    for run in slot_runs(caches):
        if len(run) == 1:
            caches[run[0]].step(embeds[run[0]], np.asarray(positions[run[0]]).reshape(3, 1, n), False)
            continue
        _scatter_span(buffers, session, names, [caches[i] for i in run],
                      np.concatenate([embeds[i] for i in run], axis=0),                              # [B, n, D]
                      np.concatenate([np.asarray(positions[i]).reshape(3, 1, n) for i in run], axis=1))  # [3, B, n]
        for i in run:
            caches[i].append(n)
    return [None] * len(caches)


def _scatter_span(buffers: SlotBuffers, session, names: Sequence[str], run: Sequence[SlotCache],
                  embeds: np.ndarray, positions: np.ndarray) -> None:
    """One `decoder_scatter` call on the consecutive slots of `run`: embeds [B, n, D], positions [3, B, n]."""
    first, lo = run[0], run[0].slot
    embeds_name, positions_name, write_name, logits_index_name = names
    binding = session.io_binding()
    binding.bind_output(first.logits_name, "cpu")                                           # [B, 0, V]
    for past, present in zip(first.past_names, first.present_names):
        value = first.ort.OrtValue.ortvalue_from_numpy(buffers.arrays[past][lo:lo + len(run)])  # [B, kv, M + 1, hd]
        binding.bind_ortvalue_input(past, value)
        binding.bind_ortvalue_output(present, value)            # the same memory: TensorScatter writes in place
    binding.bind_cpu_input(embeds_name, np.ascontiguousarray(embeds, dtype=first.float_type))
    binding.bind_cpu_input(positions_name, np.ascontiguousarray(positions, dtype=np.int64))
    binding.bind_cpu_input(write_name, np.array([c.length for c in run], np.int64))        # [B] rows cached
    binding.bind_cpu_input(logits_index_name, np.zeros(0, np.int64))
    session.run_with_iobinding(binding)
