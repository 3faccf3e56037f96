"""Many cameras, one copy of the model: `open_pool(RuntimeConfig, max_streams=N) -> StreamPool`.

A pool opens an export once (manifest, tokenizer, embedding table, one ONNX Runtime session per
graph) and preallocates the KV storage of `max_streams` streams (runtime/slots.py: one buffer
[max_streams, kv_heads, max_context + 1, head_dim] per layer and kind). `pool.open_stream()` gives a
`PoolStream`: an `OmniSession` (append_chunk, append_file, finish, ask, ask_ids, close) on the
pool's graphs and one KV slot, with its own layout, prompt state and media buffers. Closing it
frees the slot for the next stream. Streams may be driven from different threads: every model call
goes through the pool's scheduler (runtime/scheduler.py), which runs the decode steps of all the
streams that are answering as one batched decoder call; a stream's results are the ones it gets
alone (tests/runtime/test_pool.py).

Bad input is the caller's alone: a stream that is not open (`pool.stream(id)`), one stream more
than `max_streams`, media for a closed stream, a wrong chunk: one `UsageError` to that caller; the
other streams and the slot count are unaffected. Backend: onnxruntime on the CPU with the in-place
decoder (`decoder_gqa`); TensorRT and torch pools are not built yet (docs/runtime.md).
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from omnisift_edge.artifact.manifest import DECODER_GQA
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.ort_pipeline import OrtStream
from omnisift_edge.runtime.scheduler import Scheduler
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig
from omnisift_edge.runtime.slots import SlotBuffers, SlotCache, decode_rows


class PoolFullError(UsageError):
    """Every slot of the pool holds an open stream."""


class _SharedExport:
    """The pool's export folder with its embedding table loaded once (every stream reads the same array)."""

    def __init__(self, export):
        self._export = export
        self._table = export.embed_table()                   # [V, D]

    def embed_table(self) -> np.ndarray:
        return self._table

    def __getattr__(self, name):
        return getattr(self._export, name)


class SlotStream(OrtStream):
    """An `OrtStream` on the pool's graphs and KV slot; its model calls go through the pool's scheduler."""

    def __init__(self, pool: "StreamPool", slot: int, prefix_ids: Sequence[int]):
        self.pool, self.slot = pool, slot
        super().__init__(pool.export, pool.ratio, prefix_ids, max_context=pool.max_context,
                         context=pool.cfg.context, kv_form="shared_buffer", threads=pool.cfg.ort_threads)

    def _open_graph(self, path, role, providers, threads):
        return self.pool.graph(path, role, threads)

    def _open_cache(self, export, inplace_entry, max_context, providers):
        """The slot's cache, zeroed between two model calls (a batched call may span a free slot)."""
        from omnisift_edge.artifact.manifest import Rope

        rope = (export.manifest.rope or Rope()).to_dict()
        return self.pool.scheduler.call(lambda: SlotCache(self.pool.slots, self.slot, self.sessions["decoder"],
                                                          inplace_entry.to_dict(), rope))

    def _step(self, embeds, positions, want_logits=True):
        if want_logits and embeds.shape[1] == 1:             # one answer token: batched with the others'
            self.kv.reserve(1)
            return self.pool.scheduler.decode(self.kv, embeds, positions.reshape(3, 1, 1))
        return self.pool.scheduler.call(lambda: OrtStream._step(self, embeds, positions, want_logits))

    def _encode_video(self, pixel_values, n_grids):
        return self.pool.scheduler.call(lambda: OrtStream._encode_video(self, pixel_values, n_grids))

    def _encode_audio(self, mel):
        return self.pool.scheduler.call(lambda: OrtStream._encode_audio(self, mel))

    def _compress(self, video, audio, n_grids, chunk_positions):
        return self.pool.scheduler.call(lambda: OrtStream._compress(self, video, audio, n_grids, chunk_positions))

    def _drop_kv(self, start, stop):          # the slot's rows must not move under a batched call
        self.pool.scheduler.call(lambda: OrtStream._drop_kv(self, start, stop))

    def _rotate_kv(self, delta):
        self.pool.scheduler.call(lambda: OrtStream._rotate_kv(self, delta))

    def close(self) -> None:
        self.kv.close()


class PoolStream(OmniSession):
    """One camera's stream in a pool: the `OmniSession` methods on a KV slot of the pool's buffers."""

    def __init__(self, pool: "StreamPool", stream_id: int, slot: int):
        self.__dict__.update(pool.shared)                    # export, tokenizer, spec, prompt: loaded once
        self.pool, self.id, self.slot = pool, stream_id, slot
        self._begin(SlotStream(pool, slot, self._prefix_ids))

    def ask_ids(self, question: str, *, max_new_tokens: int = 64):
        """`OmniSession.ask_ids`, counted as answering: the scheduler gathers its decode steps with the others'."""
        self.pool.scheduler.begin_answer()
        try:
            yield from super().ask_ids(question, max_new_tokens=max_new_tokens)
        finally:
            self.pool.scheduler.end_answer()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"stream {self.id} was closed; open a new one (pool.open_stream())")

    def close(self) -> None:
        """End the stream and free its slot (closing twice is harmless)."""
        if not self._closed:
            self._closed = True
            self.pool._release(self)


class StreamPool:
    """The graphs of one export loaded once, KV slots for `max_streams` streams (see the module docstring)."""

    def __init__(self, cfg: RuntimeConfig, max_streams: int):
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise UsageError(f"--max-streams must be a whole number of at least 1 (got {max_streams!r})")
        if cfg.backend != "onnxruntime" or cfg.device != "cpu":
            raise UsageError(f"a stream pool runs the onnxruntime backend on the cpu for now (got {cfg.backend} on "
                             f"{cfg.device}); use --backend onnxruntime --device cpu, or one session per stream")
        template = OmniSession.__new__(OmniSession)
        template._load(cfg)
        if template.export.manifest.kv_cache.get(DECODER_GQA) is None:
            raise UsageError(f"{cfg.folder} has no in-place decoder (decoder_gqa) for a pool; export again")
        self.cfg, self.max_streams = cfg, max_streams
        self.export = template.export = _SharedExport(template.export)
        self.shared = dict(template.__dict__)
        self.ratio = template.ratio
        self.max_context = cfg.max_context or template.manifest.max_context
        self._graphs: dict[str, object] = {}
        self._streams: dict[int, PoolStream] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self.scheduler = Scheduler(self._run_decodes)
        self.slots = self._allocate(template.export.manifest)

    def _allocate(self, manifest) -> SlotBuffers:
        from omnisift_edge.artifact.tensors import decoder_gqa_graph

        dims = manifest.dims
        names = decoder_gqa_graph(dims.num_layers).input_names[5:]
        return SlotBuffers(names, self.max_streams, dims.kv_heads, self.max_context, dims.head_dim,
                           self.export.float_type)

    def graph(self, path, role: str, threads: str):
        """The pool's one ONNX Runtime session of the graph at `path` (opened on first use)."""
        from omnisift_edge.artifact.onnx_runtime import ort_session

        key = str(path)
        with self._lock:
            if key not in self._graphs:
                self._graphs[key] = ort_session(path, threads=threads, spins=role == "decoder")
            return self._graphs[key]

    def _run_decodes(self, steps):
        caches, embeds, positions = zip(*steps)
        return decode_rows(self.slots, caches, embeds, positions)

    # -- streams ---------------------------------------------------------------------------------
    def open_stream(self) -> PoolStream:
        """A new stream on a free slot; `UsageError` when all `max_streams` are open."""
        with self._lock:
            slot = self.slots.take()
            if slot is None:
                raise PoolFullError(f"the pool is full: all {self.max_streams} streams are open; close one, or open "
                                 "the pool with a larger max_streams (--max-streams)")
            stream_id, self._next_id = self._next_id, self._next_id + 1
        try:
            stream = PoolStream(self, stream_id, slot)
        except BaseException:
            self.slots.give(slot)
            raise
        with self._lock:
            self._streams[stream_id] = stream
        return stream

    def stream(self, stream_id: int) -> PoolStream:
        """The open stream `stream_id`; `UsageError` if it is not open."""
        with self._lock:
            if stream_id not in self._streams:
                raise UsageError(f"stream {stream_id} is not open in this pool; open one with pool.open_stream()")
            return self._streams[stream_id]

    def _release(self, stream: PoolStream) -> None:
        with self._lock:
            self._streams.pop(stream.id, None)
            stream.stream.close()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def free_slots(self) -> int:
        return self.slots.free

    def close(self) -> None:
        """Close every open stream."""
        for stream in list(self._streams.values()):
            stream.close()


def open_pool(cfg: RuntimeConfig, *, max_streams: int) -> StreamPool:
    """Open an export once for up to `max_streams` concurrent streams (see the module docstring)."""
    return StreamPool(cfg, max_streams)
