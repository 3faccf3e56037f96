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
from omnisift_edge.live.chunker import DRIFT_LIMIT, ChunkAssembler, ChunkQueue
from omnisift_edge.live.source import AudioItem, LiveSource, SourceLost

BACKOFF = (0.5, 8.0)        # first and longest wait between reconnect tries, seconds


class Capture(threading.Thread):
    """Runs an opened `LiveSource` into `queue` (see the module doc); `emit(dict)` gets events."""

    def __init__(self, source: LiveSource, assembler: ChunkAssembler, queue: ChunkQueue,
                 emit: Callable[[dict], None], *, max_chunks: int | None = None, audio: LiveSource | None = None):
        super().__init__(name="omnisift-capture", daemon=True)
        self.source, self.assembler, self.queue, self.emit = source, assembler, queue, emit
        self.audio = audio                              # a separate audio input (its own thread), or None
        self.lock = threading.Lock()                    # the assembler is fed from both threads
        self.clock: tuple[float, float] | None = None   # (video stream t, time.monotonic()) of the newest frame
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
        if self.audio is not None:
            threading.Thread(target=self._audio_feed, name="omnisift-audio", daemon=True).start()
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
                return                                  # stopped by the app, or enough chunks
            if isinstance(item, AudioItem) and self.audio is not None:
                continue                                # the separate audio input replaces the stream's own
            with self.lock:
                if isinstance(item, AudioItem):
                    chunks = asm.audio_block(item.t, item.pcm)
                else:
                    self.clock = (item.t, time.monotonic())
                    chunks = asm.video(item.t, item.frame)
                if self._deliver(chunks):
                    return

    def _deliver(self, chunks) -> bool:
        """Queue whole chunks (drop events for what the policy removes); True when enough were captured."""
        for chunk in chunks:
            self.captured += 1
            for gone in self.queue.put(chunk, self.stop):
                self.emit({"event": "drop", "index": gone.index, "capture_time": gone.start,
                           "policy": self.queue.policy, "dropped": self.queue.dropped})
            if self.max_chunks is not None and self.captured >= self.max_chunks:
                self.ended_by = "seconds"
                self.stop.set()
                return True
        return False

    def _audio_feed(self) -> None:
        """The separate audio input on the video's clock: its own timestamps plus an offset from the wall
        clock (the lowest seen: frames read from a backlog run ahead of the wall); two devices' clocks
        drifting apart later are corrected only where the audio falls behind."""
        offset = None
        try:
            for item in self.audio.items():
                if self.stop.is_set():
                    return
                with self.lock:
                    if self.clock is None:
                        continue                        # before the first frame: nothing to align to
                    estimate = self.clock[0] + (time.monotonic() - self.clock[1]) - item.t
                    if offset is None or estimate < offset - DRIFT_LIMIT:
                        offset = estimate               # lowest wins: a video backlog read late inflates it
                    if self._deliver(self.assembler.audio_block(item.t + offset, item.pcm)):
                        return
        except SourceLost as lost:
            self.emit({"event": "notice", "text": f"the audio input stopped ({lost}); chunks get silence from now"})
        finally:
            self.audio.close()

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
                       "reason": reason, "reconnects": self.reconnects, "new_turn": True})   # live/loop.py
            return True
        if not self.stop.is_set():
            self.error = UsageError(f"{cfg.url} stopped ({reason}) and did not come back within "
                                    f"{cfg.retry_seconds:g} s (--retry-seconds); check the camera or stream")
        return False
