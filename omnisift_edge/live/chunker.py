"""Real-time chunking: source items -> whole 2-second chunks -> a bounded queue with a drop policy.

`ChunkAssembler` samples frames at 2 fps by timestamp and lays the audio on the same clock
(realigned when it drifts more than `DRIFT_LIMIT`), emitting `Chunk`s of 4 frames + 32000 samples.
`ChunkQueue` holds at most `size` chunks; a new chunk meeting a full queue drops one queued chunk
by the policy (`oldest` or `thin`), or waits for room (`block`, files read faster than real time).
`live.capture.Capture` is the thread that runs a `LiveSource` into them.
The rules and counters are docs/live.md's (the C++ camera app follows the same).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.model.spec import OmniSpec

POLICIES = ("oldest", "thin")
DRIFT_LIMIT = 0.040         # seconds the audio may disagree with its timestamps before it is realigned
JUMP = 10.0                 # seconds: a timestamp jump larger than this (or backwards past 1 s) is a discontinuity
AUDIO_WAIT = 1.0            # seconds the video may run ahead of the audio before a chunk takes silence
SEPARATE_AUDIO_WAIT = 3.0   # the same with a separate audio input (its own latency, unknown to us)


def lookahead(spec: OmniSpec) -> int:
    """Samples past a chunk's end the session's log-mel reads before it emits the chunk's window
    (n_fft // 2 - hop = 40, model/preprocess.StreamingLogMel): a chunk carries them, so the session
    processes it as soon as it is appended rather than when the next chunk's audio comes."""
    return spec.n_fft // 2 - spec.hop_length


@dataclass(eq=False)
class Chunk:
    index: int                  # capture index: 0, 1, ... over the whole stream (dropped ones included)
    start: float                # source seconds of its first frame
    frames: np.ndarray          # [4, H, W, 3] uint8 at the export's resolution
    pcm: np.ndarray             # [32000 + 40] float32 16 kHz mono: its 2 s and the next chunk's first 40 samples
    captured: float             # time.monotonic() when its last frame and sample had arrived
    connection: int = 0         # the source connection it came from (+1 per reconnect): a new one opens a new turn


class ChunkAssembler:
    """Frames at 2 fps by timestamp + audio on the same clock -> whole chunks (docs/live.md)."""

    def __init__(self, resolution: tuple[int, int], spec: OmniSpec = OmniSpec(), *,
                 notice: Callable[[str], None] = lambda text: None, silent: bool = False,
                 audio_wait: float = AUDIO_WAIT):
        self.resolution = tuple(resolution)
        self.spec = spec
        self.notice = notice
        self.silent = silent                      # no audio track: every chunk's audio is silence
        self.audio_wait = audio_wait              # seconds of video past a chunk's end before late audio is silence
        self.per_chunk = int(spec.fps * spec.seconds_per_chunk)                    # 4 frames
        self.samples_per_chunk = int(spec.sample_rate * spec.seconds_per_chunk)    # 32000
        self.lookahead = lookahead(spec)                                           # 40
        self.index = 0                            # next chunk's capture index
        self.connection = 0                       # reconnects so far (chunks carry it)
        self.origin: float | None = None          # stream time of chunk-clock 0 (per connection)
        self._sizes_seen: set = set()
        self._reset_buffers()

    def _reset_buffers(self) -> None:
        self.frames: list[np.ndarray] = []        # picked frames of the open chunk, [H, W, 3] each
        self.audio: list[np.ndarray] = []         # blocks of the open chunk's audio
        self.samples = 0                          # samples in `audio`
        self.prev = None                          # (t, av frame) last decoded, not yet picked
        self.early: deque = deque()               # audio before the first frame, (t, pcm)
        self.video_time = 0.0                     # chunk-clock time of the newest frame
        self.step = 0.1                           # the last gap between frames, seconds (at most 1)

    def reconnected(self) -> float:
        """A new connection: the open chunk is discarded; returns the seconds it had (0 if none)."""
        lost = len(self.frames) / self.spec.fps
        self.connection += 1
        self.origin = None
        self._reset_buffers()
        return lost

    # -- video -------------------------------------------------------------------------------
    def video(self, t: float, frame) -> list[Chunk]:
        if self.origin is None:
            self.origin = t - self.index * self.spec.seconds_per_chunk   # this connection continues the count
            self.video_time = t - self.origin
            early, self.early = self.early, deque()
            for at, pcm in early:
                self._add_audio(at, pcm)
        if not -1.0 <= t - self.origin - self.video_time <= JUMP:    # a discontinuity: the clock continues
            self.notice(f"the stream's timestamps jumped by {t - self.origin - self.video_time:+.1f} s; "
                        "the chunk clock continues from the last frame")
            self.origin = t - self.video_time - self.step
            self.prev = None
        self.step = min(max(t - self.origin - self.video_time, 0.0), 1.0) or self.step
        self.video_time = t - self.origin
        out = []
        cur = (self.video_time, frame)
        while True:
            k = self.index * self.per_chunk + len(self.frames)
            target = k / self.spec.fps
            if self.video_time < target:
                break
            pick = self.prev if self.prev is not None and target - self.prev[0] <= self.video_time - target else cur
            self.frames.append(self._rgb(pick[1]))
            out += self._complete()
        self.prev = cur
        return out + self._complete(audio_late=True)

    def _rgb(self, frame) -> np.ndarray:
        from omnisift_edge.model.preprocess import resize_frames

        size = (frame.width, frame.height)
        if self._sizes_seen and size not in self._sizes_seen:
            self.notice(f"the video changed to {size[0]}x{size[1]} mid-stream; frames are rescaled to the "
                        f"export's {self.resolution[1]}x{self.resolution[0]}")
        self._sizes_seen.add(size)
        rgb = frame.to_ndarray(format="rgb24")                                         # [h, w, 3]
        return resize_frames(rgb[None], self.resolution)[0]                            # [H, W, 3]

    # -- audio -------------------------------------------------------------------------------
    def audio_block(self, t: float, pcm: np.ndarray) -> list[Chunk]:
        if self.origin is None:
            self.early.append((t, pcm))
            while sum(len(p) for _, p in self.early) > 2 * self.samples_per_chunk:
                self.early.popleft()              # bounded: only the last seconds before the first frame
            return []
        self._add_audio(t, pcm)
        return self._complete()

    def _add_audio(self, t: float, pcm: np.ndarray) -> None:
        rate = self.spec.sample_rate
        at = round((t - self.origin) * rate)                        # sample index on the chunk clock
        have = self.index * self.samples_per_chunk + self.samples   # where the next sample would go
        if DRIFT_LIMIT * rate < abs(at - have) <= JUMP * rate:     # realign: silence in, or samples out
            if at > have:
                self._append_pcm(np.zeros(at - have, np.float32))
            else:
                pcm = pcm[have - at:]
        self._append_pcm(pcm)

    def _append_pcm(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self.audio.append(pcm)
            self.samples += len(pcm)

    # -- chunks ------------------------------------------------------------------------------
    def _complete(self, audio_late: bool = False) -> list[Chunk]:
        if len(self.frames) < self.per_chunk:
            return []
        end = (self.index + 1) * self.spec.seconds_per_chunk
        want = self.samples_per_chunk + self.lookahead
        if self.samples < want:
            if not (self.silent or (audio_late and self.video_time >= end + self.audio_wait)):
                return []
            self._append_pcm(np.zeros(want - self.samples, np.float32))          # late or no audio: silence
        pcm = np.concatenate(self.audio)
        chunk = Chunk(self.index, self.index * self.spec.seconds_per_chunk, np.stack(self.frames[:self.per_chunk]),
                      pcm[:want], time.monotonic(), self.connection)
        rest = pcm[self.samples_per_chunk:]
        self.index += 1
        self.frames = self.frames[self.per_chunk:]
        self.audio, self.samples = ([rest], len(rest)) if len(rest) else ([], 0)
        return [chunk, *self._complete(audio_late)]


class ChunkQueue:
    """At most `size` chunks; a new chunk meeting a full queue drops one queued chunk by `policy`
    (docs/live.md), or waits for room when `block` (a file read faster than real time)."""

    def __init__(self, size: int = 2, policy: str = "oldest", *, block: bool = False):
        if size < 1:
            raise UsageError(f"--queue must be at least 1 chunk (got {size})")
        if policy not in POLICIES:
            raise UsageError(f"--drop-policy must be one of {', '.join(POLICIES)} (got {policy!r})")
        self.size, self.policy, self.block = size, policy, block
        self.items: deque[Chunk] = deque()
        self.dropped = 0
        self.ended = False
        self._cond = threading.Condition()

    def put(self, chunk: Chunk, stop: threading.Event | None = None) -> list[Chunk]:
        """Queue `chunk`; returns the chunks the policy dropped to make room (at most one)."""
        with self._cond:
            while self.block and len(self.items) >= self.size and not (stop is not None and stop.is_set()):
                self._cond.wait(0.1)
            dropped = []
            if len(self.items) >= self.size:
                dropped.append(self._drop(chunk))
                self.dropped += 1
            self.items.append(chunk)
            self._cond.notify_all()
            return dropped

    def _drop(self, new: Chunk) -> Chunk:
        items = self.items
        if self.policy == "oldest" or len(items) == 1:
            return items.popleft()
        # thin: the queued chunk after the oldest whose neighbours (the new chunk the last) are closest in time
        times = [c.start for c in items] + [new.start]
        spans = [times[i + 1] - times[i - 1] for i in range(1, len(items))]
        i = 1 + spans.index(min(spans))             # index() takes the first: the older on a tie
        chunk = items[i]
        del items[i]
        return chunk

    def get(self, timeout: float, max_age: float | None = None) -> tuple[Chunk | None, list[Chunk]]:
        """(the oldest chunk or None after `timeout` seconds, the chunks dropped as stale): queued
        chunks captured more than `max_age` seconds ago are dropped first (counted as drops)."""
        with self._cond:
            if not self.items and not self.ended:
                self._cond.wait(timeout)
            stale = []
            while max_age is not None and self.items and time.monotonic() - self.items[0].captured > max_age:
                stale.append(self.items.popleft())
                self.dropped += 1
            chunk = self.items.popleft() if self.items else None
            self._cond.notify_all()
            return chunk, stale

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        with self._cond:
            return self.ended and not self.items
