"""The capture thread: a `LiveSource` through a `ChunkAssembler` into a `ChunkQueue`.

It reconnects a live source that stalls or ends (back-off 0.5 s doubling to 8 s, for
`retry_seconds` in all), states each gap as an event, and ends the queue when the source ends (a
file), when `max_chunks` were captured, when asked to stop, or when the source does not come back
(`error` then holds the one-line UsageError for the caller to raise). docs/live.md has the rules.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable

from omnisift_edge.errors import UsageError
from omnisift_edge.live.chunker import ChunkAssembler, ChunkQueue
from omnisift_edge.live.source import AudioItem, LiveSource, SourceLost

BACKOFF = (0.5, 8.0)        # first and longest wait between reconnect tries, seconds


class Capture(threading.Thread):
    """Runs an opened `LiveSource` into `queue` (see the module doc); `emit(dict)` gets events."""

    def __init__(self, source: LiveSource, assembler: ChunkAssembler, queue: ChunkQueue,
                 emit: Callable[[dict], None], *, max_chunks: int | None = None):
        super().__init__(name="omnisift-capture", daemon=True)
        self.source, self.assembler, self.queue, self.emit = source, assembler, queue, emit
        self.max_chunks = max_chunks
        self.stop = threading.Event()
        self.captured = 0
        self.partial = 0
        self.reconnects = 0
        self.ended_by = "source ended"
        self.error: UsageError | None = None
        self.cpu_seconds = 0.0                          # this thread's CPU time (decoder threads not included)

    def run(self) -> None:
        start = time.thread_time()
        try:
            while not self.stop.is_set():
                try:
                    self._pump()
                    break                               # a file ended, enough chunks, or stop
                except SourceLost as lost:
                    if not self.source.cfg.live or not self._reconnect(str(lost)):
                        break
        except UsageError as exc:
            self.error = exc
        finally:
            if self.assembler.frames:
                self.partial += 1                       # a chunk cut short by the end: never padded in
            self.source.close()
            self.cpu_seconds = time.thread_time() - start
            self.queue.end()

    def _pump(self) -> None:
        asm = self.assembler
        for item in self.source.items():
            if self.stop.is_set():
                self.ended_by = "stopped"
                return
            chunks = asm.audio_block(item.t, item.pcm) if isinstance(item, AudioItem) else asm.video(item.t, item.frame)
            for chunk in chunks:
                self.captured += 1
                for gone in self.queue.put(chunk, self.stop):
                    self.emit({"event": "drop", "index": gone.index, "capture_time": gone.start,
                               "policy": self.queue.policy, "dropped": self.queue.dropped})
                if self.max_chunks is not None and self.captured >= self.max_chunks:
                    self.ended_by = "seconds"
                    return

    def _reconnect(self, reason: str) -> bool:
        """Open the source again with back-off; a `gap` event when it is back. False: gave up."""
        cfg = self.source.cfg
        lost_at = time.monotonic()
        if self.assembler.reconnected():
            self.partial += 1
        self.source.close()
        wait = BACKOFF[0]
        while not self.stop.is_set() and time.monotonic() - lost_at < cfg.retry_seconds:
            self.stop.wait(wait)
            wait = min(wait * 2, BACKOFF[1])
            left = cfg.retry_seconds - (time.monotonic() - lost_at)
            if left <= 0:
                break
            try:                                        # each try bounded by the retry time left
                self.source = LiveSource(replace(cfg, open_timeout=min(cfg.open_timeout, left))).open()
            except UsageError:
                continue
            self.reconnects += 1
            self.emit({"event": "gap", "seconds": round(time.monotonic() - lost_at + cfg.read_timeout, 3),
                       "reason": reason, "reconnects": self.reconnects})
            return True
        if not self.stop.is_set():
            self.error = UsageError(f"{cfg.url} stopped ({reason}) and did not come back within "
                                    f"{cfg.retry_seconds:g} s (--retry-seconds); check the camera or stream")
        return False
