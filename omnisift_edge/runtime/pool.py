"""Many cameras, one copy of the model: `open_pool(RuntimeConfig, max_streams=N) -> StreamPool`.

A pool opens an export once (manifest, tokenizer, embedding table, one ONNX Runtime session per
graph) and preallocates the KV storage of `max_streams` streams (runtime/slots.py: one buffer
[max_streams, kv_heads, max_context + 1, head_dim] per layer and kind). `pool.open_stream()` gives a
`PoolStream`: an `OmniSession` (append_chunk, append_file, finish, ask, ask_ids, close) on the
pool's graphs and one KV slot, with its own layout, prompt state and media buffers. Closing it
frees the slot for the next stream. Streams may be driven from different threads: every model call
goes through the pool's scheduler (runtime/scheduler.py), which batches across streams:

- the decode steps of all the streams that are answering: one decoder call;
- the prompt prefixes of streams opened together: one prefill;
- with `batch_chunks=True`, the chunks that arrive together: their vision encoder, audio encoder and
  compressor calls as one call each of the export's batched forms (where the export has them:
  `vision_encoder_batch`, `audio_encoder_batch`, `compressor_batch_r{ratio}`), at most the backend's
  `max_batch` rows a call. The default (None) is the backend's `batch_chunks_default`: on for TensorRT
  (a GPU's calls are weight-bound, a batch shares the weight reads), off for ONNX Runtime on the CPU
  (measured: 0.9-1.0x the chunks/s, and at 32 cameras late chunks and 4x the RSS; docs/benchmarks.md);
- with `batch_prefill=True` as well, their prefills (equal kept counts) as one decoder call (ONNX
  Runtime: `decoder_scatter`, a write index per row, in place). Off by default: on the CPU one call of
  4 x K rows measured 1.1-1.4x the time of 4 `decoder_gqa` calls at equal pasts and 2x at mixed ones
  (the scatter form's attention is plain ops over the longest row's past), and its session holds a
  second copy of the decoder's weights (+445 MiB at 512x12); docs/runtime.md. A GPU's weight-bound
  calls may gain.
The keys and the stacking are runtime/chunk_batch.py's; what each backend batches, its module's docstring.

Not batched: a question and its prompt text (one stream's rows with logits), cache edits of the
sliding context (drop, rotate). `batch_chunks=False` runs every chunk call alone (one call per chunk
and graph, the one-chunk graphs). A stream's results are the ones it gets alone either way
(tests/runtime/test_pool.py, test_pool_batch.py).

Bad input is the caller's alone: a stream that is not open (`pool.stream(id)`), one stream more
than `max_streams`, media for a closed stream, a wrong chunk: one `UsageError` to that caller; the
other streams and the slot count are unaffected.

Backends (`BACKENDS`): what a pool needs of one is `PoolBackend` below. onnxruntime on the CPU with
the in-place decoder (`decoder_gqa`) is runtime/pool_ort.py; TensorRT (engines loaded once, device KV
slots, `build --max-streams N` engines) is runtime/pool_trt.py; torch (the model the export was made
from, KV slots of torch buffers) is runtime/pool_torch.py.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Protocol, Sequence

from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.scheduler import Scheduler
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

BACKENDS = {"onnxruntime": "omnisift_edge.runtime.pool_ort:OrtPoolBackend",    # backend -> "module:class"
            "tensorrt": "omnisift_edge.runtime.pool_trt:TrtPoolBackend",
            "torch": "omnisift_edge.runtime.pool_torch:TorchPoolBackend"}


class PoolFullError(UsageError):
    """Every slot of the pool holds an open stream."""


class PoolSlots(Protocol):
    """A backend's KV storage for `max_streams` streams: slots handed out lowest first, given back on close."""

    max_streams: int

    @property
    def free(self) -> int: ...
    def take(self) -> int | None: ...
    def give(self, slot: int) -> None: ...


class PoolBackend(Protocol):
    """What a pool needs of a backend: built as `Backend(pool, template)` (template: an `OmniSession` whose
    `_load` ran; a backend may replace `template.export` with a shared wrapper), it owns the loaded graphs
    and the slots, opens a stream's pipeline stream on a slot (its model calls go through
    `pool.scheduler`) and runs a batch of decode steps (`Scheduler.decode` arguments) in one call; it may
    also run batches of other calls (`run_batch(kind, items)`, `Scheduler.batch` arguments: prefills,
    a chunk's encoders and compressor)."""

    slots: PoolSlots

    def open_stream(self, slot: int, prefix_ids: Sequence[int]) -> Any: ...
    def run_decodes(self, steps: Sequence[tuple]) -> Sequence[Any]: ...


def _backend_class(name: str):
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


class PoolStream(OmniSession):
    """One camera's stream in a pool: the `OmniSession` methods on a KV slot of the pool's buffers."""

    def __init__(self, pool: "StreamPool", stream_id: int, slot: int):
        self.__dict__.update(pool.shared)                    # export, tokenizer, spec, prompt: loaded once
        self.pool, self.id, self.slot = pool, stream_id, slot
        self._begin(pool.backend.open_stream(slot, self._prefix_ids))

    def _media(self, method, *args, **kwargs):
        """An `OmniSession` media call, counted as pushing: a batch of chunk calls waits briefly for this stream's
        next call while it prepares its chunk (runtime/scheduler.py, `begin_chunk`)."""
        self.pool.scheduler.begin_chunk()
        try:
            return method(*args, **kwargs)
        finally:
            self.pool.scheduler.end_chunk()

    def append_chunk(self, frames, pcm):
        return self._media(super().append_chunk, frames, pcm)

    def append_file(self, path, **kwargs):
        return self._media(super().append_file, path, **kwargs)

    def finish(self):
        return self._media(super().finish)

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

    def __init__(self, cfg: RuntimeConfig, max_streams: int, batch_chunks: bool | None = None,
                 batch_prefill: bool = False):
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise UsageError(f"--max-streams must be a whole number of at least 1 (got {max_streams!r})")
        if cfg.backend not in BACKENDS:
            raise UsageError(f"a stream pool runs the {' or '.join(BACKENDS)} backend for now (got {cfg.backend}); "
                             f"use --backend {next(iter(BACKENDS))}, or one session per stream")
        template = OmniSession.__new__(OmniSession)
        template._load(cfg)
        self.cfg, self.max_streams = cfg, max_streams
        backend = _backend_class(cfg.backend)
        if batch_chunks is None:                            # the backend's measured choice
            batch_chunks = getattr(backend, "batch_chunks_default", False)
        self.batch_chunks, self.batch_prefill = bool(batch_chunks), bool(batch_chunks and batch_prefill)
        self.ratio = template.ratio
        self.max_context = cfg.max_context or template.manifest.max_context
        self._streams: dict[int, PoolStream] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self.backend: PoolBackend = backend(self, template)
        self.export = template.export                       # the backend may have wrapped it (shared tables)
        self.shared = dict(template.__dict__)
        self.scheduler = Scheduler(self.backend.run_decodes, run_batch=getattr(self.backend, "run_batch", None),
                                   max_batch=getattr(self.backend, "max_batch", None))
        self.slots = self.backend.slots

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


def open_pool(cfg: RuntimeConfig, *, max_streams: int, batch_chunks: bool | None = None,
              batch_prefill: bool = False) -> StreamPool:
    """Open an export once for up to `max_streams` concurrent streams (see the module docstring).
    `batch_chunks`: the encoder and compressor calls of chunks that arrive together as one call (False: each
    alone; None: the backend's default, on for TensorRT, off for ONNX Runtime on the CPU); `batch_prefill`:
    their prefills too (ONNX Runtime; slower on the CPU; see the docstring)."""
    return StreamPool(cfg, max_streams, batch_chunks, batch_prefill)
