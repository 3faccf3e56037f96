"""What every backend's stream shares: the layout, the KV bookkeeping, timing and greedy decode.

A backend (PyTorch modules, ONNX Runtime graphs, TensorRT engines) supplies its hooks: embed
text ids, append embeddings to its KV cache and return the last logits, encode one chunk, compress
it. The stream owns the backend's KV cache through one protocol (runtime/kv_cache.py): its length,
and for the sliding context policy (runtime/context.py) dropping cached tokens and re-basing the
cached keys' positions by a RoPE rotation. `ChunkStream` does the rest the
same way for all of them, so they keep the same tokens at the same positions and answer with the
same greedy loop. After an answer (or `end_turn`, without one), `open_turn` continues the stream in a
new user turn.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.model.spec import OmniSpec
from omnisift_edge.runtime.context import DEFAULT_POSITION_LIMIT, ContextFullError, ContextPolicy, KVWindow
from omnisift_edge.runtime.kv_cache import KVCache

STAGES = ("vision", "audio", "compressor", "prefill")


@dataclass(frozen=True)
class ChunkReport:
    index: int
    video_tokens: int
    audio_tokens: int
    kept_video: int
    kept_audio: int
    seconds: dict = field(default_factory=dict)   # stage -> wall seconds (vision, audio, compressor, prefill)


__all__ = ["STAGES", "ChunkReport", "ChunkStream", "ContextFullError"]


class ChunkStream(ABC):
    """Push chunks (pixel patches of 1-2 grid steps, a log-mel window), then ask questions."""

    def __init__(self, spec: OmniSpec, prefix_ids: Sequence[int], grid_hw: tuple[int, int], *,
                 max_context: int | None = None, context: ContextPolicy | None = None,
                 position_limit: int = DEFAULT_POSITION_LIMIT, kv: KVCache | None = None):
        from omnisift_edge.model.layout import StreamingLayout

        self.kv = kv                    # the backend's cache (runtime/kv_cache.py); None: the backend overrides the KV hooks
        self.spec = spec
        self.grid_hw = tuple(grid_hw)
        self.tokens_per_frame = (grid_hw[0] // spec.spatial_merge_size) * (grid_hw[1] // spec.spatial_merge_size)
        self.max_context = max_context
        self.layout = StreamingLayout(spec, list(prefix_ids), grid_hw=self.grid_hw)
        self.reports: list[ChunkReport] = []
        self.kept_positions: list[np.ndarray] = []
        self.kept_indices: list[np.ndarray] = []    # per chunk: kept_index [K] into its token order (video, then audio)
        self.closed = False
        self.question_logits: Any = None
        self.full = False               # set once the context overflowed: the stream refuses more input
        self.prefill_chunks = 1         # chunks per prefill call; > 1: grouped prefill (files; not under sliding)
        self.max_prefill_rows: int | None = None   # rows one decoder call takes (an engine's profile); None: any
        self._pending: list = []        # (kept [1, K, D], positions [3, K]) of chunks waiting for their prefill
        self.window = KVWindow(context or ContextPolicy(), max_context=max_context,
                               seconds_per_chunk=spec.seconds_per_chunk, position_limit=position_limit)
        ids, pos = self.layout.prefix()
        self._append(self._embed(ids), pos, "pinned", want_logits=False)

    # -- backend hooks ---------------------------------------------------------------------------
    @abstractmethod
    def _embed(self, ids: Sequence[int]) -> Any:
        """Text embeddings [1, n, D] of `ids`."""

    @abstractmethod
    def _step(self, embeds: Any, positions: np.ndarray, want_logits: bool = True) -> Any:
        """Append `embeds` [1, n, D] at rope `positions` [3, n] to the KV cache; logits of the last
        (a backend may skip them and return None when `want_logits` is False: a chunk prefill)."""

    @abstractmethod
    def _encode_video(self, pixel_values: np.ndarray, n_grids: int) -> Any:
        """Merged video embeddings [n_grids * n_p, D] of one chunk's frames."""

    @abstractmethod
    def _encode_audio(self, mel: np.ndarray) -> Any:
        """Audio embeddings [La, D] of one log-mel window."""

    @abstractmethod
    def _compress(self, video: Any, audio: Any, n_grids: int, chunk_positions: np.ndarray) -> tuple[Any, np.ndarray]:
        """(kept [1, K, D], kept_index [K] into the chunk's token order)."""

    def kv_length(self) -> int:
        """Tokens in the KV cache."""
        return self.kv.length

    def _drop_kv(self, start: int, stop: int) -> None:
        """Remove cached tokens [start, stop) on every layer; later ones move down (sliding policy)."""
        self.kv.drop(start, stop)

    def _rotate_kv(self, delta: int) -> None:
        """Re-base every cached key's position by -delta: rotate it by -delta * inv_freq on every
        frequency (exact for RoPE, since all three TMRoPE rows shift by the same delta)."""
        self.kv.rotate(delta)

    def _sync(self) -> None:
        """Wait for queued device work (for honest stage timings)."""

    @staticmethod
    def _argmax(logits: Any) -> int:
        return int(np.asarray(logits).reshape(-1).argmax())

    # -- shared ----------------------------------------------------------------------------------
    def _append(self, embeds: Any, positions: np.ndarray, kind: str = "text", want_logits: bool = True) -> Any:
        """Append `embeds` at absolute layout `positions` [3, n]: evict and re-base first as the
        context policy says (runtime/context.py); the backend sees positions minus the base, and
        computes the last position's logits only when `want_logits` (nobody reads a chunk's)."""
        n = int(np.asarray(positions).shape[-1])
        positions = np.asarray(positions, dtype=np.int64).reshape(3, n)
        if self.full:
            raise ContextFullError("the context filled up earlier; start a new stream")
        if not self.window.sliding and self.max_context is not None and self.kv_length() + n > self.max_context:
            self.full = True            # the layout may have advanced already: no further use is safe
            raise ContextFullError(
                f"the context is full: {self.kv_length()} cached + {n} new tokens > max_context "
                f"{self.max_context}; start a new stream, use --context-policy sliding, export with a larger "
                "--max-context, or a lower --ratio")
        try:
            for start, stop in self.window.make_room(n, kind):
                self._drop_kv(start, stop)
            delta = self.window.rebase_delta(int(positions.max()))
        except UsageError:
            self.full = True            # the layout advanced already: no further use is safe
            raise
        if delta:
            self._rotate_kv(delta)
            self.window.rebased(delta)
        logits = self._step(embeds, positions - self.window.base, want_logits=want_logits)
        self.window.record(kind, n, positions)
        return logits

    def _check_chunk(self, pixel_values: np.ndarray, n_grids: int, mel: np.ndarray) -> None:
        if self.full:
            raise ContextFullError("the context filled up earlier; start a new stream, or use --context-policy sliding")
        if self.closed:
            raise UsageError("a question closed the video span; continue the stream in a new user turn with "
                             "open_turn(turn_pieces(...).prefix_ids) first (OmniSession.append_chunk does)")
        spec, (h, w) = self.spec, self.grid_hw
        patch_dim = 3 * spec.temporal_patch_size * spec.patch_size ** 2
        if n_grids not in (1, 2):
            raise UsageError(f"a chunk holds 1 or 2 temporal grid steps (got {n_grids})")
        if tuple(pixel_values.shape) != (n_grids * h * w, patch_dim):
            raise UsageError(f"chunk pixel patches must be [{n_grids * h * w}, {patch_dim}] for {n_grids} grid steps "
                             f"of {h}x{w} patches (got {list(pixel_values.shape)})")
        if mel.ndim != 2 or mel.shape[0] != spec.n_mels or not 0 < mel.shape[1] <= spec.audio_window_frames:
            raise UsageError(f"the audio window must be [{spec.n_mels}, n] log-mel frames with 0 < n <= "
                             f"{spec.audio_window_frames} (got {list(mel.shape)})")
        if not (np.isfinite(pixel_values).all() and np.isfinite(mel).all()):
            raise UsageError("the chunk's pixels or audio features contain NaN or Inf; check the source media")

    def push(self, pixel_values: np.ndarray, n_grids: int, mel: np.ndarray) -> ChunkReport:
        """Encode, compress and prefill one chunk (1 or 2 grid steps of video, its audio window)."""
        self._check_chunk(pixel_values, n_grids, mel)
        seconds = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            self._sync()
            now = time.perf_counter()
            seconds[stage] = seconds.get(stage, 0.0) + now - clock
            clock = now

        video = self._encode_video(pixel_values, n_grids)
        lap("vision")
        audio = self._encode_audio(mel)
        lap("audio")
        chunk = self.layout.chunk(n_grids, int(audio.shape[0]))
        kept, kept_index = self._compress(video, audio, n_grids, np.asarray(chunk.position_ids))
        lap("compressor")
        positions = np.asarray(chunk.position_ids)[:, kept_index]                  # [3, K]
        if self.prefill_chunks > 1 and not self.window.sliding:     # grouped: prefilled with the next ones
            self._hold(kept, positions)
        else:
            self._append(kept, positions, "chunk", want_logits=False)  # nobody reads a chunk's logits
        lap("prefill")
        n_video = n_grids * self.tokens_per_frame
        kept_video = int((kept_index < n_video).sum())
        self.kept_positions.append(positions)
        self.kept_indices.append(np.asarray(kept_index))
        report = ChunkReport(len(self.reports), n_video, int(audio.shape[0]), kept_video,
                             len(kept_index) - kept_video, seconds)
        self.reports.append(report)
        return report

    def _concat(self, parts: list) -> Any:
        """[1, sum K, D] from chunks' kept embeddings (numpy; the torch backend concatenates tensors)."""
        return np.concatenate(parts, axis=1)

    def _hold(self, kept: Any, positions: np.ndarray) -> None:
        """Queue a compressed chunk for a grouped prefill (refused at once when the context cannot take it)."""
        held = sum(p.shape[1] for _, p in self._pending)
        if self.max_prefill_rows is not None and held + positions.shape[1] > self.max_prefill_rows:
            self.flush()                # the engine's profile takes no more: this call ends here
            held = 0
        if self.max_context is not None and self.kv_length() + held + positions.shape[1] > self.max_context:
            self.flush()
            self._append(kept, positions, "chunk", want_logits=False)   # raises ContextFullError as ever
            return
        self._pending.append((kept, positions))
        if len(self._pending) >= self.prefill_chunks:
            self.flush()

    def flush(self) -> None:
        """Prefill the queued chunks in one decoder call (grouped prefill): the same cache as one call per
        chunk, since the decoder is causal; each chunk stays a segment of its own in the window."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        positions = np.concatenate([p for _, p in pending], axis=1)                 # [3, sum K]
        delta = self.window.rebase_delta(int(positions.max()))
        if delta:
            self._rotate_kv(delta)
            self.window.rebased(delta)
        self._step(self._concat([k for k, _ in pending]), positions - self.window.base, want_logits=False)
        for _, p in pending:
            self.window.record("chunk", p.shape[1], p)

    def ask(self, question_ids: Sequence[int], *, max_new_tokens: int = 32,
            stop_ids: Sequence[int] = ()) -> Iterator[int]:
        """Append a question (closing the video span first) and yield greedy answer tokens."""
        if max_new_tokens < 1:
            raise UsageError(f"max new tokens must be at least 1 (got {max_new_tokens})")
        self.flush()
        if self.full:
            raise ContextFullError("the context filled up earlier; start a new stream")
        if not self.closed:
            if not self.reports:
                raise UsageError("no chunk was pushed; OmniSIFT needs video with audio before a question")
            self.window.check_fits(len(question_ids) + 2, "question")    # refused before anything changes
            ids, pos = self.layout.close(list(question_ids))
            self.closed = True
        else:
            ids = list(question_ids)
            self.window.check_fits(len(ids), "question")
            pos = self.layout.text(ids)
        logits = self._append(self._embed(ids), pos)
        self.question_logits = logits
        position = self.layout.next_position
        fed: list[int] = []
        try:
            for _ in range(max_new_tokens):
                token = self._argmax(logits)
                yield token
                if token in stop_ids:
                    return
                if self.window.sliding:   # refused before anything changes: the stream stays usable
                    self.window.check_fits(1, f"answer (after {len(fed) + 1} tokens)")
                logits = self._append(self._embed([token]), np.full((3, 1), position))
                fed.append(token)
                position += 1
        finally:
            # positions continue after the tokens actually in the cache (also when the caller stops early)
            self.layout.text(fed)

    def end_turn(self, text_ids: Sequence[int]) -> None:
        """Close the video span without a question: `<|audio_eos|><|vision_eos|>` and `text_ids` (the
        rest of the user message, `model.prompt.gap_pieces(...).suffix_ids`); `open_turn` then starts
        the next user turn (a live source back after a gap: OmniSession.new_turn)."""
        self.flush()
        if self.full:
            raise ContextFullError("the context filled up earlier; start a new stream, or use --context-policy sliding")
        if self.closed:
            raise UsageError("the video span is closed already; open_turn starts the next user turn")
        self.window.check_fits(len(text_ids) + 2, "turn text")
        ids, pos = self.layout.close(list(text_ids))
        self._append(self._embed(ids), pos, want_logits=False)
        self.closed = True

    def open_turn(self, turn_ids: Sequence[int]) -> None:
        """After an answer, continue the stream in a new user turn: append `turn_ids` (the text that
        ends the answer and opens the turn, `model.prompt.turn_pieces(...).prefix_ids`) and the
        turn's `<|vision_bos|><|audio_bos|>`; then push chunks, then `ask` with the turn's suffix."""
        if self.full:
            raise ContextFullError("the context filled up earlier; start a new stream, or use --context-policy sliding")
        if not self.closed:
            raise UsageError("the video span is still open; push chunks directly, or ask a question first")
        self.window.check_fits(len(turn_ids) + 2, "turn text", "turn")
        ids, pos = self.layout.open_turn(list(turn_ids))
        self._append(self._embed(ids), pos, "turn", want_logits=False)
        self.closed = False
