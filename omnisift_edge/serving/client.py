"""A camera's side of the Triton model: one gRPC stream, one sequence (tritonclient).

`CameraClient(url, sequence_id)` sends chunks and questions over a bidirectional gRPC stream and
waits for each request's final response; tensors are built from serving/protocol.py. Used by the
tests and benchmarks/serving.py; an app can use it as it is or as the reference for its own client.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

import numpy as np

from omnisift_edge.errors import require
from omnisift_edge.serving.protocol import INPUTS, MODEL_NAME

_INPUT = {t.name: t for t in INPUTS}
AFFINITY_HEADER = "x-omnisift-sequence"


class RequestError(Exception):
    """The server answered a request with an error (the message is the server's)."""


@dataclass
class Answer:
    text: str = ""
    pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    kept: list[tuple[int, int]] = field(default_factory=list)    # (video, audio) per chunk completed
    open_streams: int = 0


class CameraClient:
    """One camera stream: `chunk(frames, pcm)`, `ask(question)`, `close()`."""

    def __init__(self, url: str, sequence_id: int, *, model: str = MODEL_NAME, timeout: float = 120.0):
        grpc = require("tritonclient.grpc", extra="serve")
        self._grpc = grpc
        self.model = model
        self.sequence_id = sequence_id
        self.timeout = timeout
        self._client = grpc.InferenceServerClient(url)
        self._replies: queue.Queue = queue.Queue()
        # the sequence id also travels as gRPC metadata, for load balancers that route by header (docs/serving.md)
        self._client.start_stream(callback=lambda result, error: self._replies.put((result, error)),
                                  headers={AFFINITY_HEADER: str(sequence_id)})
        self._started = False
        self._count = 0

    def _tensor(self, name: str, value: np.ndarray):
        spec = _INPUT[name]
        value = np.ascontiguousarray(value, dtype=spec.dtype)
        tensor = self._grpc.InferInput(name, list(value.shape), spec.client_type)
        tensor.set_data_from_numpy(value)
        return tensor

    def request(self, *, start: bool | None = None, end: bool = False, **arrays: np.ndarray) -> Answer:
        """Send one request (FRAMES=, PCM=, QUESTION=, MAX_NEW_TOKENS= arrays) and collect its responses."""
        return self.send([self._tensor(k, v) for k, v in arrays.items()], start=start, end=end)

    def send(self, tensors: list, *, start: bool | None = None, end: bool = False) -> Answer:
        """Send tritonclient InferInputs as one request of this sequence; wait for its final response."""
        start = (not self._started) if start is None else start
        self._count += 1
        request_id = f"{self.sequence_id}-{self._count}"
        self._client.async_stream_infer(self.model, tensors, request_id=request_id, sequence_id=self.sequence_id,
                                        sequence_start=start, sequence_end=end, enable_empty_final_response=True)
        self._started = True
        answer = Answer()
        while True:
            try:
                result, error = self._replies.get(timeout=self.timeout)
            except queue.Empty:
                raise TimeoutError(f"no response to {request_id} in {self.timeout:g} s") from None
            if error is not None:
                raise RequestError(error.message() if hasattr(error, "message") else str(error))
            response = result.get_response()
            if response.outputs:
                piece = result.as_numpy("TEXT").tobytes().decode("utf-8")
                if piece:
                    answer.pieces.append(piece)
                answer.token_ids += result.as_numpy("TOKEN_IDS").tolist()
                answer.kept += list(zip(result.as_numpy("KEPT_VIDEO").tolist(), result.as_numpy("KEPT_AUDIO").tolist()))
                answer.open_streams = int(result.as_numpy("OPEN_STREAMS")[0])
            if response.parameters["triton_final_response"].bool_param:
                answer.text = "".join(answer.pieces)
                return answer

    def chunk(self, frames: np.ndarray, pcm: np.ndarray, **kw) -> Answer:
        return self.request(FRAMES=frames, PCM=pcm, **kw)

    def ask(self, question: str, *, max_new_tokens: int | None = None, **kw) -> Answer:
        arrays = {"QUESTION": np.frombuffer(question.encode("utf-8"), np.uint8)}
        if max_new_tokens is not None:
            arrays["MAX_NEW_TOKENS"] = np.array([max_new_tokens], np.int32)
        return self.request(**arrays, **kw)

    def end(self) -> Answer:
        """End the sequence: the server drops this camera's session."""
        return self.request(end=True)

    def close(self) -> None:
        """Stop the gRPC stream and the connection (without ending the sequence: see end())."""
        self._client.stop_stream(cancel_requests=True)
        self._client.close()
