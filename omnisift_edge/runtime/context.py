"""Context policies of a stream: what happens when the KV cache or the positions reach their limits.

Two policies (docs/runtime.md says what the model then sees):

- `error` (the default): when the KV cache would exceed `max_context`, or a position would pass the
  model's trained range (`max_position_embeddings`, 32,768 for Qwen2.5-Omni: about 22 minutes at
  25 TMRoPE steps per second), `ContextFullError` is raised and the stream refuses further input.
- `sliding`: the oldest whole segments (2-second chunks, and text turns in between) are evicted
  from the cache through the backend's `_drop_kv`, so memory and per-chunk cost stay flat; the
  segment holding the system prompt stays. Kept tokens keep their positions (eviction does not
  re-index them). Before a position would pass the trained range, every cached key is re-based by
  `_rotate_kv(delta)` (a RoPE rotation by -delta, exact because all three TMRoPE rows shift by the
  same delta) and later positions are fed minus the accumulated base.

`KVWindow` does the bookkeeping (which cache span holds which segment, the position base); the
stream calls it around every append. numpy only: runs on a Jetson without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

from omnisift_edge.errors import UsageError

POLICIES = ("error", "sliding")
DEFAULT_POSITION_LIMIT = 32768          # Qwen2.5-Omni's max_position_embeddings (old manifests lack it)


class ContextFullError(UsageError):
    """The KV cache would exceed max_context: the stated policy is to refuse, never to corrupt."""


@dataclass(frozen=True)
class ContextPolicy:
    """How a stream handles a full context (see the module docstring)."""

    policy: str = "error"
    window_seconds: float | None = None   # sliding: seconds of media kept; None: as much as max_context holds
    position_limit: int | None = None     # None: the model's max_position_embeddings

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise UsageError(f"--context-policy must be one of {', '.join(POLICIES)} (got {self.policy!r})")
        if self.window_seconds is not None:
            if self.policy != "sliding":
                raise UsageError("--window-seconds applies to --context-policy sliding; add it or drop the window")
            if not self.window_seconds >= 2.0:
                raise UsageError(f"--window-seconds must be at least one 2-second chunk (got {self.window_seconds:g}); "
                                 "use 2 or more")
        if self.position_limit is not None and self.position_limit < 64:
            raise UsageError(f"the position limit must be at least 64 (got {self.position_limit})")

    def window_chunks(self, seconds_per_chunk: float) -> int | None:
        """Whole chunks the window keeps (None: no chunk limit, only max_context)."""
        if self.window_seconds is None:
            return None
        return int(math.floor(self.window_seconds / seconds_per_chunk + 1e-9))


@dataclass
class Segment:
    """One span of the KV cache: the pinned prefix, a chunk's kept tokens, or a run of text."""

    kind: str                # "pinned" | "chunk" | "text" (a turn's opening text is booked as text)
    start: int               # cache offset of its first token
    stop: int                # one past its last
    time0: int               # smallest time-row (row 0) position, in layout (absolute) positions
    time1: int               # largest position on any row


class KVWindow:
    """Cache spans by segment, the eviction plan and the position base of one stream."""

    def __init__(self, policy: ContextPolicy, *, max_context: int | None, seconds_per_chunk: float,
                 position_limit: int = DEFAULT_POSITION_LIMIT):
        self.policy = policy
        self.max_context = max_context
        self.position_limit = int(policy.position_limit or position_limit)
        self.window_chunks = policy.window_chunks(seconds_per_chunk)
        self.segments: list[Segment] = []
        self.base = 0                     # positions are fed minus this (the sum of the rotations' deltas)
        self.evicted_chunks = 0

    @property
    def sliding(self) -> bool:
        return self.policy.policy == "sliding"

    @property
    def length(self) -> int:
        return self.segments[-1].stop if self.segments else 0

    @property
    def chunks(self) -> int:
        return sum(s.kind == "chunk" for s in self.segments)

    def pinned_length(self) -> int:
        return sum(s.stop - s.start for s in self.segments if s.kind == "pinned")

    def _kept_run(self, kind: str) -> int:
        """Tokens of the text run being written, which a text append cannot evict (0 for a chunk)."""
        last = self.segments[-1] if self.segments else None
        return last.stop - last.start if kind == "text" and last is not None and last.kind == "text" else 0

    def room(self, kind: str = "chunk") -> int | None:
        """The most tokens one append of `kind` can hold under this policy (None: unbounded)."""
        if self.max_context is None:
            return None
        if not self.sliding:
            return self.max_context - self.length
        return self.max_context - self.pinned_length() - self._kept_run(kind)

    def check_fits(self, n: int, what: str, kind: str = "text") -> None:
        """Refuse, before anything changes, an append of `n` tokens that no eviction can make room for."""
        room = self.room(kind)
        if room is None or n <= room:
            return
        if self.sliding:
            held = " and the question and answer being written" if self._kept_run(kind) else ""
            raise UsageError(f"the {what} is {n} tokens, longer than the window's {room} (max_context "
                             f"{self.max_context} less the system prompt{held}); shorten it, continue in a new turn "
                             "with more video, or raise --max-context")
        raise ContextFullError(f"the context is full: {self.length} cached + {n} new tokens > max_context "
                               f"{self.max_context}; start a new stream, use --context-policy sliding, export with a "
                               "larger --max-context, or a lower --ratio")

    def make_room(self, n: int, kind: str, what: str | None = None) -> list[tuple[int, int]]:
        """Cache spans [start, stop) to drop, oldest first, before appending `n` tokens of `kind`;
        the bookkeeping is updated as if they were dropped (the caller drops them in this order).
        An append that cannot fit is refused before anything changes (check_fits)."""
        if not self.sliding:
            return []
        self.check_fits(n, what or kind, kind)
        keep_last = self._kept_run(kind) > 0
        drops = []
        while True:
            over_tokens = self.max_context is not None and self.length + n > self.max_context
            over_chunks = kind == "chunk" and self.window_chunks is not None and self.chunks >= self.window_chunks
            if not (over_tokens or over_chunks):
                return drops
            # the oldest segment but the pinned prefix and, for text, the run being written (check_fits
            # made sure one exists while over_tokens; over_chunks implies a chunk is cached)
            i = next(i for i, s in enumerate(self.segments)
                     if s.kind != "pinned" and not (keep_last and i == len(self.segments) - 1))
            seg = self.segments.pop(i)
            width = seg.stop - seg.start
            for later in self.segments[i:]:
                later.start -= width
                later.stop -= width
            self.evicted_chunks += seg.kind == "chunk"
            drops.append((seg.start, seg.stop))

    def rebase_delta(self, next_max: int) -> int:
        """How far to re-base the cache (0: not needed) so that `next_max` (an absolute position about
        to be written) stays below the limit, or a ContextFullError when no re-basing can do it."""
        if next_max - self.base < self.position_limit:
            return 0
        minutes = self.position_limit / 25 / 60
        unpinned = [s for s in self.segments if s.kind != "pinned"]
        if not self.sliding or not unpinned:
            raise ContextFullError(
                f"position {next_max} would pass the model's trained range of {self.position_limit} positions "
                f"(about {minutes:.0f} minutes of stream); use --context-policy sliding, or start a new stream")
        pinned_next = max((s.time1 for s in self.segments if s.kind == "pinned"), default=-1) + 1
        new_base = unpinned[0].time0 - pinned_next     # the oldest kept segment then starts after the prompt
        if new_base <= self.base or next_max - new_base >= self.position_limit:
            raise ContextFullError(
                f"the window spans more than the model's trained range of {self.position_limit} positions; "
                "use a shorter --window-seconds")
        return new_base - self.base

    def rebased(self, delta: int) -> None:
        self.base += delta

    def record(self, kind: str, n: int, positions: np.ndarray) -> None:
        """Book `n` appended tokens (positions [3, n], absolute) as a segment; text extends text, a
        "turn" (a new user turn's opening text) starts a text segment of its own: it never extends the
        question/answer run before it, so it may evict that run, which a question or answer cannot."""
        positions = np.asarray(positions)                                               # [3, n]
        time0, time1 = (int(positions[0].min()), int(positions.max())) if n else (0, 0)
        last = self.segments[-1] if self.segments else None
        if kind == "text" and last is not None and last.kind == "text":
            last.stop += n
            last.time1 = max(last.time1, time1)
            return
        start = self.length
        self.segments.append(Segment("text" if kind == "turn" else kind, start, start + n, time0, time1))


# -- the hooks' arithmetic on numpy caches (ONNX Runtime and TensorRT streams) -----------------------

def inv_freq(theta: float, head_dim: int) -> np.ndarray:
    """RoPE inverse frequencies [head_dim / 2] (the default rope of Qwen2.5-Omni's thinker)."""
    return 1.0 / (float(theta) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def rotate_keys(keys: np.ndarray, delta: int, freqs: np.ndarray) -> np.ndarray:
    """Keys [..., L, head_dim] rotated by -delta positions on every frequency (rotate-half layout)."""
    angle = -float(delta) * np.asarray(freqs, np.float64)                              # [hd/2]
    cos, sin = np.cos(angle), np.sin(angle)
    k = keys.astype(np.float64)
    half = k.shape[-1] // 2
    k1, k2 = k[..., :half], k[..., half:]                                             # [..., L, hd/2]
    out = np.concatenate([k1 * cos - k2 * sin, k2 * cos + k1 * sin], axis=-1)        # [..., L, hd]
    return out.astype(keys.dtype)


def drop_tokens(cache: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Cache [1, kv, L, hd] without tokens [start, stop); later ones move down."""
    return np.concatenate([cache[:, :, :start], cache[:, :, stop:]], axis=2)
