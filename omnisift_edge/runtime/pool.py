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
        if cfg.backend not in BACKENDS:
            raise UsageError(f"a stream pool runs the {' or '.join(BACKENDS)} backend for now (got {cfg.backend}); "
                             f"use --backend {next(iter(BACKENDS))}, or one session per stream")
        template = OmniSession.__new__(OmniSession)
        template._load(cfg)
        self.cfg, self.max_streams = cfg, max_streams
        self.ratio = template.ratio
        self.max_context = cfg.max_context or template.manifest.max_context
        self._streams: dict[int, PoolStream] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self.backend: PoolBackend = _backend_class(cfg.backend)(self, template)
        self.export = template.export                       # the backend may have wrapped it (shared tables)
        self.shared = dict(template.__dict__)
        self.scheduler = Scheduler(self.backend.run_decodes, run_batch=getattr(self.backend, "run_batch", None))
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


def open_pool(cfg: RuntimeConfig, *, max_streams: int) -> StreamPool:
    """Open an export once for up to `max_streams` concurrent streams (see the module docstring)."""
    return StreamPool(cfg, max_streams)
