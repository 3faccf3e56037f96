"""The Triton Python-backend model: one `OmniSession` per camera sequence, answers streamed back.

`StreamTable` is the logic and knows nothing of Triton: CORRID -> session, opened on START,
closed on END or after `EVICT_AFTER` x the idle timeout without a request. On ONNX Runtime (CPU) a
model instance opens the export once, as a stream pool of `max_streams` KV slots (runtime/pool.py):
every camera's session is a stream of it, and a camera beyond the pool gets "the server is full". Triton forgets the
sequence at 1x (a later request without START is refused by Triton itself), but the model is not
told, and a request can wait in the instance's queue behind other cameras' work while Triton
already counts it as delivered: the extra half is slack so a live stream is never dropped. Each request yields `Reply`s:
the answer's text pieces as they decode, then one final reply with the kept counts of the chunks
this request completed and the answer's token ids. The session's `UsageError`s (wrong frame size,
media after the stream ended, a full context...) become request errors; the server keeps serving.

`TritonPythonModel` is the thin Triton side. Tensors cross the stub through DLPack
(`np.from_dlpack`, `Tensor.from_dlpack`), not `as_numpy()`/`Tensor(name, array)`: the stub in
nvidia-pytriton 0.7 is built against numpy 1.x and reads numpy 2 arrays wrongly (inputs
arrive garbled, outputs empty); DLPack does not depend on numpy's ABI.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.serving.protocol import DEFAULT_MAX_NEW_TOKENS, INPUTS, OUTPUTS

EVICT_AFTER = 1.5          # x the sequence batcher's idle timeout (see the module docstring)


@dataclass
class Reply:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    kept: list[tuple[int, int]] = field(default_factory=list)    # (video, audio) per completed chunk
    final: bool = False
    open_streams: int = 0


@dataclass
class _Stream:
    session: Any
    last: float
    frames: int = 0
    busy: bool = False


class StreamTable:
    """CORRID -> OmniSession for one model instance (see the module docstring)."""

    def __init__(self, open_session: Callable[[], Any], idle_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic):
        self._open = open_session
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def evict_idle(self) -> list[int]:
        """Drop the sessions silent for longer than the idle timeout; return their ids."""
        now = self._clock()
        with self._lock:
            gone = [cid for cid, s in self._streams.items() if not s.busy and now - s.last > self.idle_seconds]
            for cid in gone:
                self._streams.pop(cid).session.close()          # a pool stream frees its slot
        return gone

    def handle(self, corrid: int, *, start: bool = False, end: bool = False, frames: np.ndarray | None = None,
               pcm: np.ndarray | None = None, question: str | None = None,
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> Iterator[Reply]:
        """Serve one request of sequence `corrid`: open/close it, append a chunk, answer a question."""
        self.evict_idle()
        if start:
            with self._lock:                    # a new START starts a live stream over: free its slot first
                old = self._streams.pop(corrid, None)
            if old is not None:
                old.session.close()
            session = self._open()              # outside the lock: opening loads graphs
            with self._lock:
                self._streams[corrid] = _Stream(session, self._clock())
        with self._lock:
            stream = self._streams.get(corrid)
            if stream is None:
                raise UsageError(f"stream {corrid} is not open here (never started, ended, or silent for more than "
                                 f"{self.idle_seconds:g} s); start it again with sequence_start=True")
            stream.busy = True
        try:
            yield from self._serve(stream, frames, pcm, question, max_new_tokens)
        finally:
            with self._lock:
                stream.busy = False
                stream.last = self._clock()
                if end and self._streams.get(corrid) is stream:
                    self._streams.pop(corrid).session.close()

    def _serve(self, stream: _Stream, frames, pcm, question, max_new_tokens) -> Iterator[Reply]:
        session = stream.session
        before = len(session.reports)
        ids: list[int] = []
        if (frames is None) != (pcm is None):
            raise UsageError("a chunk needs both FRAMES (uint8 [T, H, W, 3]) and PCM (float32 [N], 16 kHz)")
        if frames is not None:
            session.append_chunk(frames, pcm)
            stream.frames += len(frames)
        if question is not None:
            if stream.frames == 0:
                raise UsageError("this stream has no media yet; send at least one chunk (FRAMES + PCM) before a question")
            for piece in session.ask(question, max_new_tokens=max_new_tokens):
                yield Reply(text=piece, open_streams=len(self))
            ids = list(session.last_answer_ids)
        kept = [(r.kept_video, r.kept_audio) for r in session.reports[before:]]
        yield Reply(token_ids=ids, kept=kept, final=True, open_streams=len(self))


class Lanes:
    """One worker thread per camera: a camera's requests run in order, different cameras' at the same
    time (so a pool batches their decode steps; runtime/scheduler.py). A lane ends after `idle`
    seconds without work. `run` must not raise (the model's `_serve` turns every error into a reply)."""

    def __init__(self, run: Callable[[Any], None], idle: float):
        self._run, self._idle = run, idle
        self._lanes: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lanes)

    def submit(self, key: int, item: Any) -> None:
        with self._lock:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = queue.Queue()
                threading.Thread(target=self._work, args=(key, lane), daemon=True).start()
            lane.put(item)

    def _work(self, key: int, lane: queue.Queue) -> None:
        while True:
            try:
                item = lane.get(timeout=self._idle)
            except queue.Empty:
                with self._lock:                 # submit() puts under this lock: nothing is lost
                    if lane.empty():
                        del self._lanes[key]
                        return
                continue
            self._run(item)


def open_streams(runtime, max_streams: int) -> Callable[[], Any]:
    """What opens a camera's session: a stream of one pool (the graphs, engines or torch model loaded
    once, `max_streams` KV slots; runtime/pool.py), else (onnxruntime on a GPU, which has no pool yet)
    a session of its own. Fails at load (a bad export, missing
    engines), not on the first camera."""
    from omnisift_edge.runtime.session import open_session

    if runtime.backend == "onnxruntime" and runtime.device != "cpu":
        open_session(runtime).close()
        return lambda: open_session(runtime)
    from omnisift_edge.runtime.pool import PoolFullError, open_pool

    pool = open_pool(runtime, max_streams=max_streams)

    def open_stream():
        try:
            return pool.open_stream()
        except PoolFullError:
            raise UsageError(f"the server is full: all {max_streams} camera streams of this model instance are "
                             "open; end one (sequence_end), or serve with a larger --max-streams or --instances") \
                from None

    return open_stream


def _outputs(reply: Reply) -> dict[str, np.ndarray]:
    """The response tensors (every OUTPUT, empty where it does not apply)."""
    kept = np.asarray(reply.kept, np.int32).reshape(-1, 2)          # (chunks, 2)
    values = {
        "TEXT": np.frombuffer(reply.text.encode("utf-8"), np.uint8),
        "TOKEN_IDS": np.asarray(reply.token_ids, np.int64),
        "KEPT_VIDEO": np.ascontiguousarray(kept[:, 0]),
        "KEPT_AUDIO": np.ascontiguousarray(kept[:, 1]),
        "OPEN_STREAMS": np.asarray([reply.open_streams], np.int32),
    }
    # writable C-contiguous copies: numpy refuses to export read-only arrays through DLPack
    return {t.name: np.require(values[t.name].astype(t.dtype), requirements=["C", "W"]) for t in OUTPUTS}


class TritonPythonModel:
    """Triton's entry points; parameters come from config.pbtxt (serving/repository.py writes it)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from omnisift_edge.runtime.session import RuntimeConfig

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        runtime = RuntimeConfig(Path(params["export"]), backend=params["backend"], ratio=float(params["ratio"]),
                                device=params.get("device", "cpu"))
        self.max_new_tokens = int(params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        idle = EVICT_AFTER * int(config["sequence_batching"]["max_sequence_idle_microseconds"]) / 1e6
        self.table = StreamTable(open_streams(runtime, int(params.get("max_streams", 8))), idle)
        self.lanes = Lanes(self._serve, idle)
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, args=(min(1.0, idle / 4),), daemon=True)
        self._reaper.start()

    def _reap(self, period: float) -> None:
        """Free idle sessions even when no request arrives."""
        while not self._stop.wait(period):
            self.table.evict_idle()

    def _input(self, request, name: str) -> np.ndarray | None:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else np.array(np.from_dlpack(tensor))   # copy: the session keeps frames

    def _response(self, reply: Reply):
        tensors = [self.pb.Tensor.from_dlpack(name, value) for name, value in _outputs(reply).items()]
        return self.pb.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list) -> None:
        """Hand each request to its camera's lane and return (decoupled: the lanes send the responses)."""
        for request in requests:
            try:
                corrid = int(self._input(request, "CORRID").reshape(-1)[0])
            except Exception:                    # no usable CORRID: _serve answers with the error
                self._serve(request)
                continue
            self.lanes.submit(corrid, request)
        return None

    def _serve(self, request) -> None:
        pb = self.pb
        sender = request.get_response_sender()
        try:
            got = {t.name: self._input(request, t.name) for t in INPUTS}
            corrid = int(self._input(request, "CORRID").reshape(-1)[0])
            start = bool(self._input(request, "START").reshape(-1)[0])
            end = bool(self._input(request, "END").reshape(-1)[0])
            question = None if got["QUESTION"] is None else got["QUESTION"].tobytes().decode("utf-8", "replace")
            limit = self.max_new_tokens if got["MAX_NEW_TOKENS"] is None else int(got["MAX_NEW_TOKENS"].reshape(-1)[0])
            for reply in self.table.handle(corrid, start=start, end=end, frames=got["FRAMES"], pcm=got["PCM"],
                                           question=question, max_new_tokens=limit):
                sender.send(self._response(reply),
                            flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if reply.final else 0)
        except UsageError as exc:
            sender.send(pb.InferenceResponse(error=pb.TritonError(str(exc))),
                        flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:                 # a bug: keep the traceback in the server log, keep serving
            traceback.print_exc()
            sender.send(pb.InferenceResponse(error=pb.TritonError(f"internal error in omnisift-edge: "
                                                                  f"{type(exc).__name__}: {exc}")),
                        flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        self._stop.set()
