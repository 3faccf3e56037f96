"""The stream pool's TensorRT backend: the engines of one build loaded once, a device KV slot per stream.

`TrtPoolBackend` is what `runtime.pool.StreamPool` asks of a backend (`PoolBackend` there), the
TensorRT twin of runtime/pool_ort.py:
- the engines of the build (`RuntimeConfig.target`) are loaded once: one Polygraphy `TrtRunner` per
  engine, shared by every stream (`runners`); every call goes through the pool's scheduler, so one
  runs at a time and the decoder's active profile is the backend's (`use_profile`);
- one device buffer per layer and kind holds every stream's cache, [max_streams, kv, rows, hd]
  (`DeviceSlots`); a stream's cache is its slot, so its own calls (prefix, chunk prefill, question)
  run exactly as a lone `TrtStream`'s do (`trt_kv.StaticDeviceKV` / `DeviceKV` on the slot's memory);
- the decode steps of every answering stream are one engine call (`run_decodes`):
  - in place (`decoder_scatter`, TensorRT >= 10.15 / TensorRT-RTX): the slots [lo, hi) spanning them
    are the batch, bound where they lie (no copy), each row with its own write index (the form takes
    one per row: artifact/tensors.py) on the engine's `in_place_decode` profile. Rows of the span that
    are not decoding ride along as in runtime/slots.py: a zero embedding written at their own length,
    past their valid rows; the last row of every slot is kept free for a full slot's write (a
    stream's capacity is the engine's cache_length - 1).
  - past/present (`decoder`, TensorRT 10.3 / JetPack 6): the slots are gathered into a batch past
    [B, kv, T, hd] (T = the longest stream's rows; a shorter stream's rows padded and masked out by
    its attention_mask row), the engine's decode profile runs it, and each stream's rows plus its new
    one are copied back into its slot (device-to-device copies planned by `gather_copies` /
    `scatter_copies`: kv per stream and layer each way, the fallback's price).
- the chunks that arrive together (`batch_chunks`, the default; `run_batch`): the encoders and compressor as
  one call each of the batched engines where the build has them (runtime/chunk_batch.py; loaded instead
  of the one-chunk engines), and the chunk prefills of equal kept counts (`prefill_key`) as one decoder
  call on the batched chunk-prefill profile (engines/profiles.py `in_place_prefill` / `prefill_batch`):
  in place, per run of consecutive slots (no riders: they would write S rows), each row's S rows at its
  own write_index; past/present, the decode steps' gather with S new rows. A run of one, or rows no
  profile holds, is the stream's own call.
The engines' decode profile takes at most the build's `--max-streams` rows: a pool asking for more is
refused (`check_build_streams`). The plans of the copies and the batch's feeds are plain numpy
(checked on the CPU: tests/runtime/test_pool_trt.py, with TensorRT stood in for by ONNX Runtime on
the same graphs); the engines themselves need a GPU (the `trt` test there, docs/runtime.md).
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from omnisift_edge.artifact.manifest import DECODER
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime import chunk_batch as cb
from omnisift_edge.runtime.slots import SlotBook, slot_runs
from omnisift_edge.runtime.trt_pipeline import SCATTER, TrtStream, choose_profile, open_runners, scatter_limits


def check_build_streams(build, wanted: int, folder, target: str) -> None:
    """A pool of `wanted` streams on engines whose decode profile takes `build.max_streams` rows, or one line."""
    built = int(getattr(build, "max_streams", 1) or 1)
    if wanted > built:
        raise UsageError(f"the {target} engines take decode batches of up to {built} stream{'s' if built > 1 else ''} "
                         f"(built with --max-streams {built}); rebuild with omnisift-edge build {folder} --target {target} "
                         f"--max-streams {wanted}, or open the pool with max_streams={built}")


class DeviceSlots(SlotBook):
    """One device buffer per past name, [max_streams, kv, rows, hd]: slot s is bytes [s, s + 1) x slot_bytes."""

    def __init__(self, past_names, max_streams: int, kv_heads: int, rows: int, head_dim: int, float_type, memory):
        super().__init__(max_streams)
        self.memory, self.float_type = memory, np.dtype(float_type)
        self.kv_heads, self.rows, self.head_dim = int(kv_heads), int(rows), int(head_dim)
        self.head_row = self.head_dim * self.float_type.itemsize              # bytes of one row of one head
        self.slot_bytes = self.kv_heads * self.rows * self.head_row
        self.buffers = {name: memory.allocate(self.max_streams * self.slot_bytes) for name in past_names}

    def at(self, name: str, slot: int):
        """The device memory of `slot` in `name`'s buffer."""
        return self.memory.offset(self.buffers[name], slot * self.slot_bytes)

    def zero(self, slot: int) -> None:
        for name in self.buffers:
            self.memory.from_host(self.at(name, slot), np.zeros(self.slot_bytes, np.uint8))

    def span(self, name: str, lo: int, hi: int):
        """Slots [lo, hi) of `name` as one batch view [hi - lo, kv, rows, hd] (no copy)."""
        return self.memory.view(self.at(name, lo), (hi - lo, self.kv_heads, self.rows, self.head_dim), self.float_type)

    def close(self) -> None:
        for buffer in self.buffers.values():
            self.memory.free(buffer)
        self.buffers = {}


def decode_span(slots: Sequence[int]) -> tuple[int, int]:
    """[lo, hi): the slots one in-place batched decode binds (every decoding slot, and the idle ones between)."""
    if len(set(slots)) != len(slots):
        raise UsageError("one decode step per stream and call")
    return min(slots), max(slots) + 1


def span_feeds(slots: Sequence[int], embeds, positions, lengths: Sequence[int], float_type) -> tuple:
    """(embeds [B, 1, D], positions [3, B, 1], write_index int64 [B]) of an in-place decode over the span of
    `slots` (B = its width); `lengths[r]` = valid rows of span row r; idle rows get zeros at their own length."""
    lo, hi = decode_span(slots)
    width = int(np.asarray(embeds[0]).shape[-1])
    batch_embeds = np.zeros((hi - lo, 1, width), float_type)                                # [B, 1, D]
    batch_positions = np.zeros((3, hi - lo, 1), np.int64)                                   # [3, B, 1]
    for i, slot in enumerate(slots):
        batch_embeds[slot - lo] = np.asarray(embeds[i])[0]
        batch_positions[:, slot - lo] = np.asarray(positions[i]).reshape(3, 1)
    return batch_embeds, batch_positions, np.asarray(lengths, np.int64)


def batch_mask(lengths: Sequence[int], past: int, new: int = 1) -> np.ndarray:
    """attention_mask [B, past + new] of a gathered call: row b's own rows [0, lengths[b]), padding up to
    `past` masked, and the `new` rows (columns past ..; one for a decode step, a chunk's kept tokens for a
    prefill: the decoder's causal mask orders them among themselves)."""
    mask = (np.arange(past + new)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)   # [B, T + S]
    mask[:, past:] = 1
    return mask


def gather_copies(slots: Sequence[int], lengths: Sequence[int], past: int, kv_heads: int, head_row: int,
                  slot_bytes: int) -> np.ndarray:
    """Copies (source offset, destination offset, bytes) [n, 3] from slots holding [1, kv, L, hd] packed
    (`trt_kv.DeviceKV`'s layout) into a batch past [B, kv, past, hd], row b from slots[b] (rows [0, L) of
    each head; the rest of the row is padding the mask hides)."""
    copies = []
    for b, (slot, n) in enumerate(zip(slots, lengths)):
        for h in range(kv_heads):
            if n:
                copies.append((slot * slot_bytes + h * n * head_row, (b * kv_heads + h) * past * head_row, n * head_row))
    return np.asarray(copies, np.int64).reshape(-1, 3)


def scatter_copies(slots: Sequence[int], lengths: Sequence[int], past: int, kv_heads: int, head_row: int,
                   slot_bytes: int, new: int = 1) -> np.ndarray:
    """Copies [n, 3] from a batch present [B, kv, past + new, hd] back into the slots, packed as
    [1, kv, L + new, hd]: each head's own rows [0, L) and the new rows (present columns past ..) after them."""
    copies = []
    for b, (slot, n) in enumerate(zip(slots, lengths)):
        for h in range(kv_heads):
            source = (b * kv_heads + h) * (past + new) * head_row                              # present row b, head h
            target = slot * slot_bytes + h * (n + new) * head_row
            if n:
                copies.append((source, target, n * head_row))
            copies.append((source + past * head_row, target + n * head_row, new * head_row))
    return np.asarray(copies, np.int64).reshape(-1, 3)


def prefill_profile(entry, batch: int, n: int, past: int | None = None) -> int | None:
    """The index of a decoder engine profile (its build report `entry`) that takes a prefill of `batch` rows of
    `n` new tokens each after `past` cached ones (in place: `past` None, and no logits row), or None."""
    for index, profile in enumerate(entry.profiles):
        axes = profile.get("axes", {})
        rows, seq = axes.get("batch_size", (1, 1, 1)), axes.get("sequence_length")
        if batch < 2 or rows[2] < batch or seq is None or not seq[0] <= n <= seq[2]:
            continue
        held = axes.get("past_sequence_length") if past is not None else axes.get("logits_length")
        if held is not None and held[0] <= (past or 0) <= held[2]:
            return index
    return None


def engine_batch_limit(entry) -> int:
    """The most rows an engine's profiles take on their batch axis (1: none, or a build without one)."""
    most = 1
    for profile in entry.profiles:
        rows = profile.get("axes", {}).get(cb.BATCH_AXIS)
        most = max(most, int(rows[2])) if rows is not None else most
    return most


def run_copies(memory, source, target, copies: np.ndarray) -> None:
    """Device-to-device: each (source offset, target offset, bytes) of `copies`, from `source` into `target`."""
    for src, dst, nbytes in copies.tolist():
        memory.copy_in(memory.offset(target, dst), memory.view(memory.offset(source, src), (nbytes,), np.uint8), nbytes)


class _SlotCache:
    """A stream's cache on its slot: `allocate` takes the slot's memory instead of allocating; closing frees the slot."""

    def __init__(self, slots: DeviceSlots, slot: int, *args, **kwargs):
        self.slots, self.slot = slots, int(slot)
        super().__init__(*args, **kwargs)
        slots.owners[self.slot] = self

    def allocate(self) -> None:
        self.slots.zero(self.slot)
        self.buffers = {name: self.slots.at(name, self.slot) for name in self.past_names}
        self.shape = (1, self.kv_heads, self.slots.rows, self.head_dim)                     # [1, kv, rows, hd]
        self.length = 0

    def close(self) -> None:
        self.slots.give(self.slot)
        self.buffers = {}


def slot_cache_class(kind):
    """`kind` (trt_kv.StaticDeviceKV or DeviceKV) on a pool slot."""
    return type(f"Slot{kind.__name__}", (_SlotCache, kind), {})


class SlotTrtStream(cb.PoolChunkCalls, TrtStream):
    """A `TrtStream` on the pool's engines and KV slot; its model calls go through the pool's scheduler."""

    def __init__(self, pool, slot: int, prefix_ids: Sequence[int]):
        self.pool, self.slot = pool, slot
        super().__init__(pool.export, pool.ratio, prefix_ids, target=pool.cfg.target, max_context=pool.max_context,
                         context=pool.cfg.context)

    @property
    def _profile(self):                          # the shared decoder runner's active profile
        return self.pool.backend.profile

    @_profile.setter
    def _profile(self, value):
        self.pool.backend.profile = value

    def _open_runners(self, files: dict) -> dict:
        return self.pool.backend.runners(files)

    def _new_cache(self, kind, past_names, present_names, capacity: int, shape: dict):
        slots = self.pool.backend.slots
        rows = capacity - 1 if self.in_place else capacity        # in place: the last row is the idle rows' scratch
        return slot_cache_class(kind)(slots, self.slot, past_names, present_names, capacity=rows, memory=slots.memory,
                                      **shape)

    def _step(self, embeds, positions, want_logits=True):
        n, backend = embeds.shape[1], self.pool.backend
        if want_logits and n == 1:                           # one answer token: batched with the others'
            self.kv.reserve(1)
            return self.pool.scheduler.decode(self, embeds, positions.reshape(3, 1, 1))
        if not want_logits and n > 1 and backend.batches_prefill:   # a chunk (or prompt) prefill: batched with
            self.kv.reserve(n)                                     # the other streams' of n rows (checked first)
            return self.pool.scheduler.prefill(cb.prefill_key(n), self, embeds, np.asarray(positions).reshape(3, n),
                                               rank=self._rank)
        return self.pool.scheduler.call(lambda: self._own_step(embeds, positions, want_logits), rank=self._rank)

    def _own_step(self, embeds, positions, want_logits):
        if self.in_place:
            self.pool.backend.use_profile(0)
        return TrtStream._step(self, embeds, positions, want_logits)

    def close(self) -> None:
        """Free the slot; the engines stay loaded for the pool's other streams."""
        if getattr(self, "kv", None) is not None:
            self.kv.close()
            self.kv = None
        self.runners = {}


class TrtPoolBackend:
    """TensorRT engines loaded once, one device KV slot per stream, decode steps batched (see the module docstring)."""

    name = "tensorrt"
    batch_chunks_default = True     # a GPU's chunk calls are weight-bound: one batched call shares the weight reads

    def __init__(self, pool, template):
        from omnisift_edge.errors import require
        from omnisift_edge.runtime import trt_kv
        from omnisift_edge.runtime.trt_env import check_compatible, require_device_for, require_tensorrt

        export = template.export
        self.target, self.build = export.build(pool.cfg.target)
        check_build_streams(self.build, pool.max_streams, export.path, self.target)   # before TensorRT or a GPU
        trt = require_tensorrt(self.build.flavour)
        require("polygraphy", extra="engines")
        check_compatible(self.build, str(trt.__version__), require_device_for(self.build), export.path)
        from omnisift_edge.runtime.pool_ort import _SharedExport

        self.pool, self.in_place = pool, SCATTER in self.build.engines
        self.export = template.export = _SharedExport(export)     # the embedding table loaded once
        self.profile: int | None = None
        self._runners: dict | None = None
        self._lock = threading.Lock()
        self.memory = trt_kv.CudaMemory()
        self.slots, self.gathered = self._allocate(export, pool)
        chunks = getattr(pool, "batch_chunks", True) and pool.max_streams > 1
        self.batched, self.batch_rows = self._batched(export, pool) if chunks else ({}, 1)
        decoder = self.build.engines[SCATTER if self.in_place else DECODER]
        self.batches_prefill = chunks and any(                  # a profile of several rows of several tokens
            p.get("axes", {}).get("batch_size", (1, 1, 1))[2] > 1 and p.get("axes", {}).get("sequence_length",
                                                                                            (1, 1, 1))[2] > 1
            for p in decoder.profiles)

    def _batched(self, export, pool) -> tuple[dict, int]:
        """(role -> GraphInfo of the batched forms whose engines this build holds (`build --max-streams N` of an
        export with them: all three, or {}), the most rows each takes)."""
        graphs = cb.batch_graphs(export, pool.ratio)
        engines = [self.build.engines.get(g.key) for g in graphs.values()]
        if not graphs or any(e is None or not (export.path / e.file).is_file() for e in engines):
            return {}, 1
        most = min(engine_batch_limit(e) for e in engines)
        return (graphs, most) if most > 1 else ({}, 1)

    def _allocate(self, export, pool) -> tuple[DeviceSlots, DeviceSlots | None]:
        """The slots [max_streams, kv, rows, hd] per past name; past/present also a batch past of the same size."""
        dims = export.manifest.dims
        if self.in_place:
            names, rows = export.manifest.form_entry(SCATTER).input_names[4:], scatter_limits(self.build)[1]
        else:
            names = export.graphs_for(pool.ratio)["decoder"].input_names[3:]
            rows = self.build.max_context or export.manifest.max_context
        make = lambda: DeviceSlots(names, pool.max_streams, dims.kv_heads, rows, dims.head_dim,  # noqa: E731
                                   export.float_type, self.memory)
        return make(), None if self.in_place else make()

    def runners(self, files: dict) -> dict:
        """The pool's one TrtRunner per engine (opened by the first stream); where the batched chunk engines serve
        a role, they are loaded instead of its one-chunk engine (weights resident once; a chunk alone is a
        batch of one), under the batched graph's key."""
        with self._lock:
            if self._runners is None:
                files = {role: path for role, path in files.items() if role not in self.batched}
                files.update({g.key: self.pool.export.path / self.build.engines[g.key].file
                              for g in self.batched.values()})
                self._runners = open_runners(files, self.pool.export.path, self.target)
            return self._runners

    def use_profile(self, index: int):
        """The decoder runner, on optimization profile `index`."""
        runner = self._runners["decoder"]
        if self.profile != index:
            runner.set_profile(index)
            self.profile = index
        return runner

    def open_stream(self, slot: int, prefix_ids: Sequence[int]) -> SlotTrtStream:
        return SlotTrtStream(self.pool, slot, prefix_ids)

    def run_decodes(self, steps) -> list[np.ndarray]:
        """One engine call for one decode token per stream: (stream, embeds [1, 1, D], positions [3, 1, 1]) each;
        each stream's logits [V] (fp32), its cache one row longer."""
        streams, embeds, positions = zip(*steps)
        run = self._decode_in_place if self.in_place else self._decode_gathered
        return run(streams, embeds, positions)

    def _decode_in_place(self, streams, embeds, positions) -> list[np.ndarray]:
        first, slots = streams[0], [s.kv.slot for s in streams]
        lo, hi = decode_span(slots)
        names = first.scatter_inputs                             # embeds, positions, write_index, logits_index
        lengths = [self.slots.length(s) for s in range(lo, hi)]
        feeds = dict(zip(names[:3], span_feeds(slots, embeds, positions, lengths, first.float_type)))
        feeds[names[3]] = np.array([0], np.int64)                                              # one logits row each
        feeds.update({name: self.slots.span(name, lo, lo + len(lengths)) for name in first.kv.past_names})
        out = self.use_profile(1 if len(self.build.engines[SCATTER].profiles) > 1 else 0).infer(
            feeds, copy_outputs_to_host=False)                    # presents: the slots, written in place
        self._check_in_place(first, out, lo)
        for stream in streams:
            stream.kv.length += 1
        logits = self.memory.to_host(out[first.logits_name])                                   # [B, 1, V]
        return [logits[slot - lo, -1].astype(np.float32) for slot in slots]

    def _check_in_place(self, first, out, lo: int) -> None:
        for past, present in zip(first.kv.past_names, first.kv.present_names):
            if not self.memory.same_memory(out[present], self.slots.at(past, lo)):
                raise UsageError(f"the decoder engine returned {present} in its own memory, not in the pool's slots; "
                                 "upgrade polygraphy (>= 0.53.6) or rebuild the engines")

    def _decode_gathered(self, streams, embeds, positions) -> list[np.ndarray]:
        out = self._run_gathered(streams, embeds, positions, 1, None)
        logits = self.memory.to_host(out[streams[0].logits_name])                              # [B, 1, V]
        return [logits[b, -1].astype(np.float32) for b in range(len(streams))]

    def _run_gathered(self, streams, embeds, positions, new: int, index: int | None) -> dict:
        """One past/present call of `new` rows per stream over its slot gathered into a masked batch past
        [B, kv, T, hd] (T: the longest stream's rows), each stream's rows and new ones copied back; the outputs."""
        first, slots = streams[0], [s.kv.slot for s in streams]
        lengths = [s.kv.length for s in streams]
        past, book = max(lengths), self.slots
        shape = (book.kv_heads, book.head_row, book.slot_bytes)
        embeds_name, positions_name, mask_name = first.decoder_inputs
        feeds = {embeds_name: np.concatenate([np.asarray(e) for e in embeds]).astype(first.float_type),   # [B, S, D]
                 positions_name: np.concatenate([np.asarray(p).reshape(3, 1, new) for p in positions], axis=1),
                 mask_name: batch_mask(lengths, past, new)}                                               # [B, T + S]
        batch = (len(streams), book.kv_heads, past, book.head_dim)
        for name in first.kv.past_names:
            run_copies(self.memory, book.buffers[name], self.gathered.buffers[name],
                       gather_copies(slots, lengths, past, *shape))
            feeds[name] = self.memory.view(self.gathered.buffers[name], batch, book.float_type)   # [B, kv, T, hd]
        if index is None:
            index, _ = choose_profile(first.profiles, 1, past)
        out = self.use_profile(index).infer(feeds, copy_outputs_to_host=False)
        for name, present in zip(first.kv.past_names, first.kv.present_names):
            run_copies(self.memory, out[present], book.buffers[name],
                       scatter_copies(slots, lengths, past, *shape, new=new))
        for stream in streams:
            stream.kv.length += new
        return out

    # -- batches of other calls (Scheduler.batch) ---------------------------------------------------------------
    def run_batch(self, kind: str, items) -> list:
        """The calls `Scheduler.batch` gathered (equal keys), each call's result in order: "prefill" (stream,
        embeds [1, n, D], positions [3, n]) of several streams; "vision_encoder" / "audio_encoder" /
        "compressor": rows at batch 1 (runtime/chunk_batch.py) through the batched engine, at most its rows per
        call, its outputs split per row."""
        if kind == "prefill":
            return self._prefill(items)
        graph = self.batched.get(kind)
        if graph is None:
            raise ValueError(f"the tensorrt pool batches no {kind!r} calls")
        runner, rows, results = self._runners[graph.key], [row for (row,) in items], []
        for start in range(0, len(rows), self.batch_rows):
            part = rows[start:start + self.batch_rows]
            out = TrtStream._run(runner, cb.stack_rows(graph, part))                   # each [B, ...] (or [3, B, ...])
            results += cb.split_rows(graph, [out[name] for name in graph.output_names], len(part))
        return results

    def _prefill(self, items) -> list[None]:
        """Chunk prefills of n rows each: in place, one call per run of consecutive slots (bound where they lie);
        past/present, one gathered call; a run of one, or rows no profile takes, each stream's own call."""
        slots = [stream.kv.slot for stream, _, _ in items]
        if len(set(slots)) != len(slots):
            raise UsageError("one prefill per stream and call")
        n = int(np.asarray(items[0][1]).shape[1])
        for run in slot_runs([stream.kv for stream, _, _ in items]) if self.in_place else [list(range(len(items)))]:
            group = [items[i] for i in run]
            if len(group) < 2 or not self._prefill_together(group, n):
                for stream, embeds, positions in group:
                    stream._own_step(embeds, positions, False)
        return [None] * len(items)

    def _prefill_together(self, group, n: int) -> bool:
        """One engine call for the group's prefills (True), or False where no profile takes it."""
        streams, embeds, positions = zip(*group)
        if not self.in_place:
            index = prefill_profile(self.build.engines[DECODER], len(group), n, max(s.kv.length for s in streams))
            if index is not None:
                self._run_gathered(streams, embeds, positions, n, index)
            return index is not None
        index = prefill_profile(self.build.engines[SCATTER], len(group), n)
        if index is None:
            return False
        first, lo = streams[0], streams[0].kv.slot                       # the group: slots lo, lo + 1, ...
        names = first.scatter_inputs                                     # embeds, positions, write_index, logits_index
        feeds = {names[0]: np.concatenate([np.asarray(e) for e in embeds]).astype(first.float_type),      # [B, n, D]
                 names[1]: np.stack([np.asarray(p).reshape(3, n) for p in positions], axis=1),           # [3, B, n]
                 names[2]: np.array([s.kv.length for s in streams], np.int64),                           # [B]
                 names[3]: np.zeros(0, np.int64)}                                                        # no logits
        feeds.update({name: self.slots.span(name, lo, lo + len(group)) for name in first.kv.past_names})
        out = self.use_profile(index).infer(feeds, copy_outputs_to_host=False)      # presents: the slots, in place
        self._check_in_place(first, out, lo)
        for stream in streams:
            stream.kv.length += n
        return True
