"""Input ids and 3-row TMRoPE positions of Qwen2.5-Omni's video-with-audio layout, on the host.

Reproduces what transformers' `Qwen2_5OmniProcessor` (use_audio_in_video=True) writes and what
`Qwen2_5OmniThinkerForConditionalGeneration.get_rope_index(..., use_audio_in_video=True)`
computes for `prefix <|vision_bos|><|audio_bos|> [chunk 0] ... [chunk C-1] <|audio_eos|><|vision_eos|>
suffix`, quirks included (docs/layout.md has a worked example):

- both bos tokens share one position, and so do both eos tokens;
- the eos position is the max of the LAST appended segment + 1 (the last chunk's audio when it
  has any, else its video), not the global max: a short last audio segment puts it below the
  video's last frame;
- trailing audio-only chunks when the audio outlasts the video, video-only chunks when it doesn't;
- rope delta = (max position over the whole sequence) + 1 - (sequence length).

`build_layout` does a whole clip at once; `StreamingLayout` produces the same numbers one chunk at
a time (a chunk's positions depend only on the prefix length and the chunk index).
Units: `grid_hw` is in 14-pixel patches (as in `video_grid_thw`), `n_grids` counts temporal grid
steps (2 frames at 2 fps = 1 s), `n_audio` counts audio tokens (`OmniSpec.audio_tokens_for_samples`).
numpy only: this module runs on a Jetson without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.model.spec import OmniSpec

# token ids that only the layout may place; a prompt piece containing one would shift everything
_MEDIA_FIELDS = ("audio", "audio_bos", "audio_eos", "vision_bos", "vision_eos", "image", "video")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int64)
    a.setflags(write=False)
    return a


def text_positions(start: int, n: int) -> np.ndarray:
    """Positions of `n` text tokens from `start`: (3, n) int64, the same id on all three rows."""
    if n < 0:
        raise UsageError(f"text token count must be >= 0 (got {n})")
    return np.repeat(np.arange(start, start + n, dtype=np.int64)[None, :], 3, axis=0)  # (3, n)


def grid_hw_for_pixels(spec: OmniSpec, height: int, width: int) -> tuple[int, int]:
    """`(grid_h, grid_w)` in patches for frames of `height` x `width` pixels (multiples of 28)."""
    from omnisift_edge.model.preprocess import check_size

    height, width = check_size((height, width), spec)
    return height // spec.patch_size, width // spec.patch_size


def _llm_grid(spec: OmniSpec, grid_hw: Sequence[int]) -> tuple[int, int]:
    """LLM tokens per frame along height and width (patches / spatial merge)."""
    gh, gw = (int(x) for x in grid_hw)
    s = spec.spatial_merge_size
    if gh <= 0 or gw <= 0 or gh % s or gw % s:
        raise UsageError(f"grid_hw must be positive multiples of the spatial merge size {s} in patches "
                         f"(got {gh}x{gw}); use frames whose sides are multiples of {spec.merge_pixels} px")
    return gh // s, gw // s


def _steps(spec: OmniSpec) -> tuple[int, int, int]:
    """(time ids per grid step 25, grid steps per chunk 2, time ids = audio tokens per chunk 50)."""
    per_grid = spec.seconds_per_grid * spec.position_id_per_seconds
    per_chunk = spec.time_ids_per_chunk
    gpc = spec.grids_per_chunk
    if per_grid != int(per_grid) or int(per_grid) * gpc != per_chunk:
        raise UsageError(f"unsupported timing: {spec.seconds_per_grid} s per grid step at "
                         f"{spec.position_id_per_seconds} ids/s must tile {spec.seconds_per_chunk} s chunks; "
                         "use fps 2 with temporal_patch_size 2")
    return int(per_grid), gpc, per_chunk


def _check_text(spec: OmniSpec, ids, what: str) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)  # (n,)
    media = [getattr(spec.tokens, f) for f in _MEDIA_FIELDS]
    bad = np.intersect1d(arr, media)
    if bad.size:
        raise UsageError(f"{what} contains media token ids {bad.tolist()}; pass plain prompt text ids "
                         "(omnisift_edge.model.prompt.build_prompt) and let the layout place media tokens")
    return arr


def chunk_counts(spec: OmniSpec, n_grids: int, n_audio: int) -> list[tuple[int, int]]:
    """`(grid steps, audio tokens)` per layout chunk, as the processor splits a clip."""
    if n_grids < 0 or n_audio < 0:
        raise UsageError(f"n_grids and n_audio must be >= 0 (got {n_grids}, {n_audio})")
    if n_grids == 0 or n_audio == 0:
        raise UsageError(f"OmniSIFT needs both video and audio (got {n_grids} grid steps, {n_audio} audio "
                         "tokens); give a clip with an audio track of at least 40 ms and at least one frame")
    _, gpc, apc = _steps(spec)
    n_chunks = max(-(-n_grids // gpc), -(-n_audio // apc))
    return [(min(max(n_grids - c * gpc, 0), gpc), min(max(n_audio - c * apc, 0), apc))
            for c in range(n_chunks)]


@dataclass(frozen=True, eq=False)
class ChunkLayout:
    """One 2-second chunk: `[n_grids frames of video tokens][n_audio audio tokens]`."""

    index: int
    n_grids: int                # 0 (trailing audio-only chunk), 1 or 2 temporal grid steps
    n_audio: int                # 0 (trailing video-only chunk) .. 50
    tokens_per_frame: int
    start: int                  # offset of its first token in the whole sequence
    input_ids: np.ndarray       # (n,) int64, n = n_grids * tokens_per_frame + n_audio
    position_ids: np.ndarray    # (3, n) int64
    time_start: int             # all its time ids (row 0) lie in [time_start, time_end)
    time_end: int

    @property
    def n_video(self) -> int:
        return self.n_grids * self.tokens_per_frame

    @property
    def length(self) -> int:
        return self.n_video + self.n_audio

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def video_slice(self) -> slice:
        """Its video tokens in the whole sequence."""
        return slice(self.start, self.start + self.n_video)

    @property
    def audio_slice(self) -> slice:
        """Its audio tokens in the whole sequence."""
        return slice(self.start + self.n_video, self.end)

    def segment_max(self) -> int:
        """Max position of its last appended segment (audio if any, else video): the eos rule."""
        seg = self.position_ids[:, self.n_video:] if self.n_audio else self.position_ids
        return int(seg.max())


def _make_chunk(index, n_grids, n_audio, llm_hw, start, ids, pos, st, apc) -> ChunkLayout:
    t0 = st + index * apc
    return ChunkLayout(index=index, n_grids=n_grids, n_audio=n_audio,
                       tokens_per_frame=llm_hw[0] * llm_hw[1], start=start,
                       input_ids=_readonly(ids), position_ids=_readonly(pos),
                       time_start=t0, time_end=t0 + apc)


@dataclass(frozen=True, eq=False)
class Layout:
    """The whole sequence `prefix, bos bos, chunks..., eos eos, suffix`."""

    input_ids: np.ndarray       # (L,) int64
    position_ids: np.ndarray    # (3, L) int64
    rope_delta: int             # max position + 1 - L; decoding position of index i >= L is i + rope_delta
    chunks: tuple[ChunkLayout, ...]
    prefix_len: int             # tokens before <|vision_bos|>
    media_span: tuple[int, int]  # [first media token, one past the last): between the bos and eos pairs
    tokens_per_frame: int

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def suffix_start(self) -> int:
        return self.media_span[1] + 2

    @property
    def next_position(self) -> int:
        """Position of the first token appended after this sequence (what generate gives it)."""
        return self.length + self.rope_delta


def build_layout(spec: OmniSpec, prefix_ids, suffix_ids, *, n_grids: int, grid_hw: Sequence[int],
                 n_audio: int) -> Layout:
    """Ids and positions of a whole clip: `n_grids` grid steps of `grid_hw` patches, `n_audio` tokens."""
    counts = chunk_counts(spec, n_grids, n_audio)
    llm_h, llm_w = _llm_grid(spec, grid_hw)
    prefix = _check_text(spec, prefix_ids, "prefix_ids")
    suffix = _check_text(spec, suffix_ids, "suffix_ids")
    tok = spec.tokens
    per_grid, gpc, apc = _steps(spec)
    tpf = llm_h * llm_w
    p = prefix.size
    st = p + 1                                                           # first media position
    # the whole video then the whole audio, as get_rope_index builds them before chunking
    t = st + per_grid * np.repeat(np.arange(n_grids, dtype=np.int64), tpf)        # (g*tpf,)
    h = st + np.tile(np.repeat(np.arange(llm_h, dtype=np.int64), llm_w), n_grids)  # (g*tpf,)
    w = st + np.tile(np.arange(llm_w, dtype=np.int64), n_grids * llm_h)            # (g*tpf,)
    video = np.stack([t, h, w])                                          # (3, g*tpf)
    audio = text_positions(st, n_audio)                                  # (3, a)

    ids = [prefix, np.array([tok.vision_bos, tok.audio_bos], np.int64)]
    pos = [text_positions(0, p), np.full((3, 2), p, np.int64)]
    chunks, offset, last_max = [], p + 2, p
    for c, (g, a) in enumerate(counts):
        v0, a0 = c * gpc * tpf, c * apc
        c_pos = np.concatenate([video[:, v0:v0 + g * tpf], audio[:, a0:a0 + a]], axis=1)  # (3, n)
        c_ids = np.concatenate([np.full(g * tpf, tok.video, np.int64), np.full(a, tok.audio, np.int64)])
        chunk = _make_chunk(c, g, a, (llm_h, llm_w), offset, c_ids, c_pos, st, apc)
        chunks.append(chunk)
        ids.append(c_ids)
        pos.append(c_pos)
        offset += chunk.length
        last_max = chunk.segment_max()
    eos = last_max + 1
    ids += [np.array([tok.audio_eos, tok.vision_eos], np.int64), suffix]
    pos += [np.full((3, 2), eos, np.int64), text_positions(eos + 1, suffix.size)]
    all_ids = np.concatenate(ids)                                        # (L,)
    all_pos = np.concatenate(pos, axis=1)                                # (3, L)
    return Layout(input_ids=_readonly(all_ids), position_ids=_readonly(all_pos),
                  rope_delta=int(all_pos.max()) + 1 - all_ids.size, chunks=tuple(chunks),
                  prefix_len=p, media_span=(p + 2, offset), tokens_per_frame=tpf)


class StreamingLayout:
    """The same ids and positions as `build_layout`, produced piece by piece.

    `prefix()` once, then `chunk(n_grids, n_audio)` per 2-second chunk as media arrives, then
    `close(suffix_ids)`, then `text(ids)` for everything appended later (answers, follow-ups).
    Chunks must look like a clip's: full (2 grid steps, 50 audio tokens) until the video or the
    audio ends; after a short video part only audio-only chunks, after short audio only video-only.
    `open_turn(text_ids)` after an answer starts a new user turn with its own video: the chunks
    that follow are laid out as transformers lays out a conversation's next video (its time ids
    start again from the turn's bos position + 1; `ChunkLayout.index` counts within the turn).
    """

    def __init__(self, spec: OmniSpec, prefix_ids, *, grid_hw: Sequence[int]):
        self.spec = spec
        self._llm_hw = _llm_grid(spec, grid_hw)
        self._per_grid, self._gpc, self._apc = _steps(spec)
        prefix = _check_text(spec, prefix_ids, "prefix_ids")
        p = prefix.size
        tok = spec.tokens
        self._prefix_ids = _readonly(np.concatenate([prefix, [tok.vision_bos, tok.audio_bos]]))
        self._prefix_pos = _readonly(np.concatenate([text_positions(0, p), np.full((3, 2), p)], axis=1))
        self._st = p + 1                  # first media position; chunk c's time ids start at st + 50c
        self._length = p + 2
        self._max = p
        self._last_segment_max = p
        self._chunks: list[ChunkLayout] = []     # this turn's
        self._done: list[ChunkLayout] = []       # earlier turns'
        self._closed = False

    @property
    def tokens_per_frame(self) -> int:
        return self._llm_hw[0] * self._llm_hw[1]

    @property
    def chunks(self) -> tuple[ChunkLayout, ...]:
        """Every chunk so far, all turns."""
        return tuple(self._done + self._chunks)

    @property
    def closed(self) -> bool:
        """True between `close` and the next `open_turn`: chunks are refused."""
        return self._closed

    @property
    def length(self) -> int:
        """Tokens produced so far."""
        return self._length

    @property
    def max_position(self) -> int:
        return self._max

    @property
    def rope_delta(self) -> int:
        """max position + 1 - length, as transformers computes it over the sequence so far."""
        return self._max + 1 - self._length

    @property
    def next_position(self) -> int:
        """Position of the next token appended after `close` (= length + rope_delta)."""
        return self._max + 1

    def prefix(self) -> tuple[np.ndarray, np.ndarray]:
        """`(ids (p+2,), positions (3, p+2))`: the prefix text and `<|vision_bos|><|audio_bos|>`."""
        return self._prefix_ids, self._prefix_pos

    def chunk(self, n_grids: int, n_audio: int) -> ChunkLayout:
        """The next chunk: `n_grids` (0-2) grid steps and `n_audio` (0-50) audio tokens."""
        if self._closed:
            raise UsageError("chunk() after close(); open a new user turn with open_turn(text_ids) first")
        gpc, apc = self._gpc, self._apc
        if not (0 <= n_grids <= gpc and 0 <= n_audio <= apc) or n_grids + n_audio == 0:
            raise UsageError(f"a chunk holds 0-{gpc} grid steps and 0-{apc} audio tokens, not both zero "
                             f"(got {n_grids}, {n_audio})")
        if not self._chunks and (n_grids == 0 or n_audio == 0):
            raise UsageError(f"OmniSIFT needs both video and audio: the first chunk has {n_grids} grid steps "
                             f"and {n_audio} audio tokens; feed frames and audio together")
        if self._chunks:
            prev = self._chunks[-1]
            if prev.n_grids < gpc and n_grids:
                raise UsageError(f"chunk {prev.index} had {prev.n_grids} grid steps, so the video ended; "
                                 "later chunks must carry audio only (pass n_grids=0)")
            if prev.n_audio < apc and n_audio:
                raise UsageError(f"chunk {prev.index} had {prev.n_audio} audio tokens, so the audio ended; "
                                 "later chunks must carry video only (pass n_audio=0)")
        index, st = len(self._chunks), self._st
        llm_h, llm_w = self._llm_hw
        tpf = llm_h * llm_w
        t0 = st + index * apc
        grid_t = t0 + self._per_grid * np.arange(n_grids, dtype=np.int64)              # (g,)
        video = np.stack([np.repeat(grid_t, tpf),                                       # (3, g*tpf)
                          st + np.tile(np.repeat(np.arange(llm_h, dtype=np.int64), llm_w), n_grids),
                          st + np.tile(np.arange(llm_w, dtype=np.int64), n_grids * llm_h)])
        pos = np.concatenate([video, text_positions(t0, n_audio)], axis=1)             # (3, n)
        tok = self.spec.tokens
        ids = np.concatenate([np.full(n_grids * tpf, tok.video, np.int64), np.full(n_audio, tok.audio, np.int64)])
        chunk = _make_chunk(index, n_grids, n_audio, self._llm_hw, self._length, ids, pos, st, apc)
        self._chunks.append(chunk)
        self._length += chunk.length
        self._max = max(self._max, int(pos.max()))
        self._last_segment_max = chunk.segment_max()
        return chunk

    def close(self, suffix_ids) -> tuple[np.ndarray, np.ndarray]:
        """`(ids (s+2,), positions (3, s+2))`: `<|audio_eos|><|vision_eos|>` and the suffix text."""
        if self._closed:
            raise UsageError("close() called twice; append later text with text()")
        if not self._chunks:
            raise UsageError("close() before any chunk; OmniSIFT needs at least one chunk of video and audio")
        suffix = _check_text(self.spec, suffix_ids, "suffix_ids")
        eos = self._last_segment_max + 1   # not the global max: transformers' rule
        tok = self.spec.tokens
        ids = np.concatenate([[tok.audio_eos, tok.vision_eos], suffix]).astype(np.int64)      # (s+2,)
        pos = np.concatenate([np.full((3, 2), eos, np.int64), text_positions(eos + 1, suffix.size)], axis=1)
        self._closed = True
        self._length += ids.size
        self._max = max(self._max, int(pos.max()))
        return _readonly(ids), _readonly(pos)

    def open_turn(self, text_ids) -> tuple[np.ndarray, np.ndarray]:
        """`(ids (n+2,), positions (3, n+2))`: text that ends the answer and opens a user turn
        (`<|im_end|>\\n<|im_start|>user\\n`, see prompt.turn_pieces), then `<|vision_bos|><|audio_bos|>`.

        The text continues from max position + 1 like `text`; both bos tokens take the next
        position and the turn's chunks start one after it, as `get_rope_index` does for a
        conversation's second video.
        """
        if not self._closed:
            raise UsageError("open_turn() while the media span is open; close it with a question first")
        text = _check_text(self.spec, text_ids, "turn text ids")
        tok = self.spec.tokens
        bos = self._max + 1 + text.size
        ids = np.concatenate([text, [tok.vision_bos, tok.audio_bos]]).astype(np.int64)          # (n+2,)
        pos = np.concatenate([text_positions(self._max + 1, text.size), np.full((3, 2), bos, np.int64)], axis=1)
        self._done += self._chunks
        self._chunks = []
        self._st = bos + 1
        self._length += ids.size
        self._max = bos
        self._last_segment_max = bos
        self._closed = False
        return _readonly(ids), _readonly(pos)

    def text(self, ids) -> np.ndarray:
        """Positions (3, n) of text appended after `close` (generated answers, follow-up turns).

        They continue from max position + 1, as generate does from the rope delta; that equals
        last position + 1 except when the suffix ends below the video's max (see docs/layout.md).
        """
        if not self._closed:
            raise UsageError("text() before close(); close the media with close(suffix_ids) first")
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = text_positions(self._max + 1, arr.size)                                  # (3, n)
        self._length += arr.size
        self._max += arr.size
        return _readonly(pos)


@dataclass(frozen=True, eq=False)
class ChunkTable:
    """OmniSIFT's chunks over a layout: per chunk, offsets of frame 1, frame 2 and its audio.

    OmniSIFT groups distinct video time ids two by two (a trailing single frame is its own
    chunk) and gives chunk c the audio whose time id is in `[time_starts[c], time_ends[c])`; the
    last chunk ends at the max media time id + 1, so trailing audio-only layout chunks join it
    (their audio is contiguous with its own). Trailing video-only chunks get no audio.
    """

    tokens_per_frame: int
    frame_starts: np.ndarray    # (C, 2) int64 sequence offsets of frame 1 and frame 2; -1: no frame 2
    audio_starts: np.ndarray    # (C,) int64
    audio_ends: np.ndarray      # (C,) int64 exclusive; equal to audio_starts when the chunk has none
    time_starts: np.ndarray     # (C,) int64
    time_ends: np.ndarray       # (C,) int64 exclusive

    def __len__(self) -> int:
        return int(self.frame_starts.shape[0])


def omnisift_chunks(layout: Layout) -> ChunkTable:
    """The `ChunkTable` of a whole-clip layout (the compressor's per-chunk token offsets)."""
    tpf = layout.tokens_per_frame
    video_chunks = [c for c in layout.chunks if c.n_grids]
    trailing = layout.chunks[len(video_chunks):]          # audio-only chunks follow the video ones
    media = layout.position_ids[0, layout.media_span[0]:layout.media_span[1]]   # (n_media,) time ids
    frames, a0, a1, t0, t1 = [], [], [], [], []
    for i, c in enumerate(video_chunks):
        frames.append([c.start, c.start + tpf if c.n_grids > 1 else -1])
        a0.append(c.audio_slice.start)
        a1.append(c.audio_slice.stop)
        t0.append(c.time_start)
        t1.append(video_chunks[i + 1].time_start if i + 1 < len(video_chunks) else int(media.max()) + 1)
    if trailing:
        a1[-1] = trailing[-1].end
    arr = lambda x: _readonly(np.asarray(x, np.int64))
    return ChunkTable(tokens_per_frame=tpf, frame_starts=arr(frames).reshape(-1, 2), audio_starts=arr(a0),
                      audio_ends=arr(a1), time_starts=arr(t0), time_ends=arr(t1))
