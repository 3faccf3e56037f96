"""The live loop: `watch(WatchConfig) -> WatchReport` (what `omnisift-edge watch` calls).

A capture thread (`live.capture`) fills a bounded chunk queue from the source; this thread takes
chunks, appends them to a runtime session, and answers questions as they come: `--question`
every `--ask-every` seconds of source time (or once at the end), each line typed on stdin, and
each question asked on the `--view` page. Every chunk, drop, gap and answer is an event (one JSON
object per line in `--events`, and on the page). Ctrl-C ends the stream cleanly. docs/live.md.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.live.chunker import POLICIES, Chunk
from omnisift_edge.live.source import SourceConfig
from omnisift_edge.runtime.session import RuntimeConfig


@dataclass(frozen=True)
class WatchConfig:
    runtime: RuntimeConfig
    source: SourceConfig
    question: str | None = None
    ask_every: float | None = None        # seconds of source time between --question; None: once at the end
    seconds: float | None = None          # source seconds to watch; None: until the source ends or Ctrl-C
    events: Path | None = None            # JSON lines (docs/live.md)
    view: str | None = None               # HOST:PORT of the web page (port 0: a free one)
    queue: int = 2                        # chunks waiting for inference at most
    drop_policy: str = "oldest"           # oldest | thin (docs/live.md)
    max_lag: float | None = 3.0           # seconds a queued chunk may wait; older ones are dropped (None: no limit)
    max_new_tokens: int = 32
    stdin: bool = False                   # read questions from stdin, one per line

    def __post_init__(self):
        if self.drop_policy not in POLICIES:
            raise UsageError(f"--drop-policy must be one of {', '.join(POLICIES)} (got {self.drop_policy!r})")
        if self.queue < 1:
            raise UsageError(f"--queue must be at least 1 chunk (got {self.queue})")
        if self.ask_every is not None and (self.question is None or not self.ask_every > 0):
            raise UsageError("--ask-every needs --question and a number of seconds > 0")
        if self.seconds is not None and not self.seconds > 0:
            raise UsageError(f"--seconds must be > 0 (got {self.seconds})")
        if self.max_lag is not None and not self.max_lag > 0:
            raise UsageError(f"--max-lag must be > 0 seconds (got {self.max_lag})")
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if self.view is not None:
            parse_hostport(self.view)


def parse_hostport(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or ':8080' or '8080' -> (host, port); the host defaults to 127.0.0.1."""
    host, _, port = str(value).rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise UsageError(f"--view must be HOST:PORT like 127.0.0.1:8080 (got {value!r})")
    return host.strip("[]") or "127.0.0.1", number


@dataclass
class WatchReport:
    reason: str = ""                      # seconds | source ended | interrupted | error
    captured: int = 0
    processed: int = 0
    dropped: int = 0
    partial: int = 0
    reconnects: int = 0
    lags_ms: list[float] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    url: str | None = None                # the --view page
    capture_cpu_s: float = 0.0            # CPU seconds of the capture thread (demux, audio resampling, RGB, resize)

    def summary(self) -> dict:
        lags = np.asarray(self.lags_ms) if self.lags_ms else np.zeros(1)
        return {"reason": self.reason, "captured": self.captured, "processed": self.processed,
                "dropped": self.dropped, "partial": self.partial, "reconnects": self.reconnects,
                "lag_ms_p50": round(float(np.percentile(lags, 50)), 1),
                "lag_ms_p95": round(float(np.percentile(lags, 95)), 1)}


class EventLog:
    """Events to the --events file (one JSON line each, flushed) and to the page; thread-safe."""

    def __init__(self, path: Path | None):
        self.file = open(path, "w", buffering=1) if path is not None else None   # a log, not an artifact
        self.view = None
        self.lock = threading.Lock()

    def emit(self, event: dict, **page_only) -> None:
        event = {**event, "wall": round(time.time(), 3)}
        with self.lock:
            if self.file is not None:
                self.file.write(json.dumps(event) + "\n")
            if self.view is not None:
                self.view.publish({**event, **page_only})

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def watch(cfg: WatchConfig, *, text: Callable[[str], None] = lambda piece: None,
          progress: Callable[[str], None] = lambda line: None, stop: threading.Event | None = None,
          ask: Callable[[Callable[[str, str], None]], None] | None = None) -> WatchReport:
    """Stream `cfg.source` through a session, answering as docs/live.md says; `text` gets the
    answers' streamed pieces (and a newline after each), `progress` one line per step. An app
    ends the stream by setting `stop`, and gets `put(question, origin)` through `ask` to ask."""
    from omnisift_edge.live.loop import LiveLoop

    events = EventLog(cfg.events)
    loop = LiveLoop(cfg, events, text=text, progress=progress, stop=stop)
    if ask is not None:
        ask(loop.questions.put)
    try:
        return loop.run()
    finally:
        loop.close()
        events.close()


def stdin_questions(put: Callable[[str, str], None]) -> threading.Thread:
    """A daemon thread putting each non-empty stdin line as a question (origin 'stdin')."""

    def read():
        for line in sys.stdin:
            if line.strip():
                put(line.strip(), "stdin")

    thread = threading.Thread(target=read, name="omnisift-stdin", daemon=True)
    thread.start()
    return thread


def chunk_event(chunk: Chunk, report, kept_index: np.ndarray, lag_ms: float, dropped: int, processed: int,
                turn: int = 0) -> dict:
    """The `chunk` event (docs/live.md): kept positions split into video and audio token order."""
    idx = np.sort(np.asarray(kept_index).reshape(-1))                                 # [K]
    video = idx[idx < report.video_tokens]
    audio = idx[idx >= report.video_tokens] - report.video_tokens
    return {"event": "chunk", "index": chunk.index, "capture_time": round(chunk.start, 3),
            "video_tokens": report.video_tokens, "audio_tokens": report.audio_tokens,
            "kept_video": report.kept_video, "kept_audio": report.kept_audio,
            "kept_video_index": video.tolist(), "kept_audio_index": audio.tolist(),
            "lag_ms": round(lag_ms, 1), "dropped": dropped, "processed": processed, "turn": turn}


def jpeg_frames(frames: np.ndarray) -> list[str]:
    """[T, H, W, 3] uint8 -> JPEG data URLs for the page."""
    import base64
    import io

    from PIL import Image

    urls = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=85)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


def max_chunks(seconds: float | None, seconds_per_chunk: float) -> int | None:
    return None if seconds is None else max(1, math.ceil(seconds / seconds_per_chunk))


class Questions:
    """Questions waiting for the inference thread: (text, origin) in arrival order."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue(maxsize=64)

    def put(self, question: str, origin: str) -> None:
        try:
            self.q.put_nowait((question, origin))
        except queue.Full:
            pass                                    # bounded: a flood of questions is not kept

    def take(self) -> list[tuple[str, str]]:
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                return out
