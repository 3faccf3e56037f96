"""Frames -> pixel patches and PCM -> log-mel, exactly as Qwen2.5-Omni's processor does, with numpy.

No torch at import or at run time: this is the runtime's preprocessing on a Jetson. Pillow is
imported only when a frame must be resized, threadpoolctl at the first log-mel.

Vision: `video_patches` equals transformers' `Qwen2VLImageProcessor` bit for bit (resize with PIL
bicubic, rescale 1/255, CLIP mean/std, temporal padding by repeating the last frame, spatial-merge
patch order); the bytes are reordered first and rescale + normalize is one lookup in `pixel_table`.
`chunk_patches` does one 2-second chunk and the chunks concatenate to the whole clip.

Audio: `log_mel` equals `WhisperFeatureExtractor(feature_size=128)` called with
`padding="max_length"` and Qwen2.5-Omni's chunk_length 300 (zero-padded to 300 s, centred STFT,
log10, floor at the clip's max - 8,
(x + 4) / 4) cropped to the valid frames. `StreamingLogMel` computes the same log spectrogram
chunk by chunk, carrying the STFT overlap, and floors at a running max (see docs/preprocessing.md).
`log_mel` is that same chunk loop with the global max, so both paths share every STFT call.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.model.pcm import as_float_pcm
from omnisift_edge.model.spec import OmniSpec

# Qwen2VLImageProcessor's normalization (OpenAI CLIP) and Qwen2.5-Omni's video pixel budget
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_MIN_PIXELS = 128 * 28 * 28      # Qwen2.5-Omni processor videos_kwargs size["shortest_edge"]
VIDEO_MAX_PIXELS = 768 * 28 * 28      # ... size["longest_edge"]
# WhisperFeatureExtractor's constants
# Qwen2.5-Omni's WhisperFeatureExtractor has chunk_length 300 (Whisper's own: 30): its processor zero-pads
# every clip to 300 s before the STFT (padding="max_length"), so a clip's end reads zeros, never the STFT's
# end reflection, up to 300 s (where it also truncates)
WHISPER_PAD_SECONDS = 300
LOG_FLOOR_RANGE = 8.0                 # floor at max - 8 (log10 units, 80 dB)
POWER_CLAMP = 1e-10                   # mel power clamp before log10
_TAKE_ROWS = 128                      # patch rows per table lookup (~400 KB of int64 indices per call)


# ----------------------------------------------------------------------------------------- vision

def smart_resize(height: int, width: int, spec: OmniSpec = OmniSpec(), *,
                 min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS) -> tuple[int, int]:
    """Qwen2VL's target size: multiples of 28 near (height, width), area within [min, max] pixels."""
    factor = spec.merge_pixels
    if max(height, width) / min(height, width) > 200:
        raise UsageError(f"frame aspect ratio must be below 200 (got {width}x{height}); crop the video")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def check_size(size: tuple[int, int], spec: OmniSpec = OmniSpec()) -> tuple[int, int]:
    """Validate an explicit (H, W) target: positive multiples of 28, or a UsageError naming one."""
    h, w = (int(s) for s in size)
    m = spec.merge_pixels
    if h <= 0 or w <= 0 or h % m or w % m:
        fix = f"{max(m, round(h / m) * m)}x{max(m, round(w / m) * m)}"
        raise UsageError(f"resolution must be a multiple of {m} (got {h}x{w}); try {fix}")
    return h, w


def check_resolution(size: tuple[int, int], spec: OmniSpec = OmniSpec()) -> tuple[int, int]:
    """A pipeline resolution: `check_size`, and within Qwen2.5-Omni's video pixel budget."""
    h, w = check_size(size, spec)
    if h * w > VIDEO_MAX_PIXELS:
        raise UsageError(f"resolution {h}x{w} is above Qwen2.5-Omni's video budget of {VIDEO_MAX_PIXELS} pixels "
                         "per frame (768 tokens); try 448x448 or 672x672")
    return h, w


def parse_resolution(value) -> tuple[int, int]:
    """'448x448' or (448, 448) -> (448, 448): multiples of 28 within Qwen2.5-Omni's video pixel budget."""
    if isinstance(value, str):
        try:
            value = tuple(int(v) for v in value.lower().split("x"))
        except ValueError:
            raise UsageError(f"--resolution must look like 448x448 (got {value!r})") from None
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise UsageError(f"--resolution must be (H, W) or 'HxW' (got {value!r}); try 448x448")
    return check_resolution(tuple(value))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0 or frames.dtype != np.uint8:
        raise UsageError(f"frames must be uint8 RGB [T>0, H, W, 3] (got {frames.dtype} {list(frames.shape)}); "
                         "decode with omnisift_edge.model.media.load_media")
    return frames


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, h, w, 3] uint8 with PIL bicubic, as transformers' `resize` does."""
    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames                          # PIL returns a copy at the same size: skip it
    Image = require("PIL.Image")
    out = np.empty((frames.shape[0], h, w, 3), np.uint8)                  # [T, h, w, 3]
    for t, frame in enumerate(frames):
        out[t] = np.asarray(Image.fromarray(frame).resize((w, h), resample=Image.Resampling.BICUBIC))
    return out


def _target_size(frames: np.ndarray, spec: OmniSpec, size, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    if size is not None:
        return check_size(size, spec)
    return smart_resize(frames.shape[1], frames.shape[2], spec, min_pixels=min_pixels, max_pixels=max_pixels)


@functools.lru_cache(maxsize=4)
def pixel_table(mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> np.ndarray:
    """Every normalized value a uint8 pixel can take: [channels, 256] float32, read-only.

    Entry [c, v] is transformers' rescale + normalize of byte v in channel c, by the same operations
    in the same dtypes (v / 255 in float64 cast to float32, then (x - mean) / std in float32), so a
    lookup gives the bits the arithmetic gives (tested against the processor). A lookup table because
    a frame has 256 distinct values per channel: one gather per pixel instead of five array passes
    (two of them in float64) over the frames, and no broadcast over a length-3 innermost axis.
    """
    x = (np.arange(256, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)   # [256]
    mean32, std32 = np.asarray(mean, np.float32)[:, None], np.asarray(std, np.float32)[:, None]
    table = (x[None, :] - mean32) / std32                                                   # [C, 256] float32
    table.setflags(write=False)
    return table


def _patchify(frames: np.ndarray, spec: OmniSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Resized uint8 [T, H, W, 3] -> normalized patches [gt*gh*gw, 3*tp*p*p] in spatial-merge order.

    The bytes are put in patch order first (a quarter of the float32 traffic), then each channel's
    bytes are looked up in `pixel_table`: bit-identical to normalizing in float and reordering after.
    """
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.spatial_merge_size
    if frames.shape[0] % tp:
        pad = np.repeat(frames[-1:], tp - frames.shape[0] % tp, axis=0)                    # repeat the last frame
        frames = np.concatenate([frames, pad], axis=0)                                       # [T', H, W, 3]
    t, h, w, c = frames.shape
    gt, gh, gw = t // tp, h // p, w // p
    x = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)             # [gt, gh/m, gw/m, m, m, c, tp, p, p] uint8
    x = np.ascontiguousarray(x).reshape(gt * gh * gw, c, tp * p * p)                       # [N, C, tp*p*p] uint8
    table = pixel_table()                                                                  # [C, 256] float32
    out = np.empty(x.shape, np.float32)                                                    # [N, C, tp*p*p]
    for r in range(0, x.shape[0], _TAKE_ROWS):     # blocks: take's int64 copy of the indices stays in cache
        for ch in range(c):   # mode="wrap": bytes index 256 entries (a no-op); measured faster than clip/raise
            np.take(table[ch], x[r:r + _TAKE_ROWS, ch], out=out[r:r + _TAKE_ROWS, ch], mode="wrap")
    return out.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def video_patches(frames: np.ndarray, spec: OmniSpec = OmniSpec(), *, size: tuple[int, int] | None = None,
                  min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Frames sampled at spec.fps, uint8 [T, H, W, 3] -> (pixel_values [gt*gh*gw, 1176] float32, grid_thw [3]).

    `size` is an explicit (H, W) target (multiples of 28); without it the target is Qwen2VL's
    `smart_resize` within [min_pixels, max_pixels] (Qwen2.5-Omni's video defaults).
    """
    frames = _check_frames(frames)
    frames = resize_frames(frames, _target_size(frames, spec, size, min_pixels, max_pixels))
    pixel_values, grid = _patchify(frames, spec)
    return pixel_values, np.asarray(grid, np.int64)


def chunk_patches(frames: np.ndarray, spec: OmniSpec = OmniSpec(), *, size: tuple[int, int]) -> np.ndarray:
    """One chunk's frames (<= 4 at 2 fps) -> [ceil(T/2)*gh*gw, 1176] float32 (2*gh*gw for a full chunk).

    Concatenating the chunks of a clip equals `video_patches(clip, size=size)[0]`: patches never
    straddle a temporal grid step, and only the last chunk can be short (padded the same way).
    """
    frames = _check_frames(frames)
    if frames.shape[0] > spec.raw_frames_per_chunk:
        raise UsageError(f"a chunk holds at most {spec.raw_frames_per_chunk} frames (got {frames.shape[0]}); "
                         "split the clip with iter_chunk_patches")
    return _patchify(resize_frames(frames, check_size(size, spec)), spec)[0]


def iter_chunk_patches(frames: np.ndarray, spec: OmniSpec = OmniSpec(), *, size: tuple[int, int]):
    """Yield `chunk_patches` for consecutive chunks of 4 frames: [2*gh*gw, 1176] each, the last maybe shorter."""
    n = spec.raw_frames_per_chunk
    for start in range(0, len(frames), n):
        yield chunk_patches(frames[start:start + n], spec, size=size)


# ------------------------------------------------------------------------------------------ audio

@functools.lru_cache(maxsize=8)
def mel_filters(n_fft: int = 400, n_mels: int = 128, sample_rate: int = 16000) -> np.ndarray:
    """Slaney-scale, Slaney-normalized triangular filters [1 + n_fft//2, n_mels] float64, 0 Hz..8 kHz.

    The same operations as transformers' `audio_utils.mel_filter_bank(..., norm="slaney",
    mel_scale="slaney")` as WhisperFeatureExtractor builds it (tests check bit equality).
    """
    def hz_to_mel(f):
        mel = 3.0 * f / 200.0
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-300) / 1000.0) * (27.0 / np.log(6.4)), mel)

    def mel_to_hz(m):
        hz = 200.0 * m / 3.0
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), hz)

    n_freq = 1 + n_fft // 2
    mel_min, mel_max = hz_to_mel(np.float64(0.0)), hz_to_mel(np.float64(8000.0))
    filter_freqs = mel_to_hz(np.linspace(mel_min, mel_max, n_mels + 2))            # [n_mels + 2]
    fft_freqs = np.linspace(0, sample_rate // 2, n_freq)                            # [n_freq]
    diff = np.diff(filter_freqs)                                                    # [n_mels + 1]
    slopes = filter_freqs[None, :] - fft_freqs[:, None]                             # [n_freq, n_mels + 2]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down, up))                         # [n_freq, n_mels]
    filters *= (2.0 / (filter_freqs[2:n_mels + 2] - filter_freqs[:n_mels]))[None, :]
    filters.setflags(write=False)
    return filters


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window [n_fft] float64 (torch.hann_window / transformers' window_function)."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    w.setflags(write=False)
    return w


def _log_spec(segment: np.ndarray, n_frames: int, spec: OmniSpec) -> np.ndarray:
    """Centred-STFT samples [hop*(n-1) + n_fft] float64 -> log10 mel power [n_mels, n] float64 (pre-floor)."""
    frames = np.lib.stride_tricks.sliding_window_view(segment, spec.n_fft)[::spec.hop_length][:n_frames]
    stft = np.fft.rfft(frames * _hann(spec.n_fft), axis=-1)                          # [n, 1 + n_fft//2]
    power = stft.real ** 2 + stft.imag ** 2                                         # [n, 1 + n_fft//2]
    mel = mel_projection(mel_filters(spec.n_fft, spec.n_mels, spec.sample_rate), power)   # [n_mels, n]
    return np.log10(np.maximum(mel, POWER_CLAMP))


_BLAS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, looked up once; None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:                    # an install from before it was a dependency: same numbers, slower
        return None
    return ThreadpoolController()


def mel_projection(filters: np.ndarray, power: np.ndarray) -> np.ndarray:
    """filters [n_freq, n_mels] float64, power [n, n_freq] float64 -> filters.T @ power.T [n_mels, n].

    Run on one BLAS thread (threadpoolctl). The product is ~5 MFLOP, above OpenBLAS's threading
    threshold, so numpy's OpenBLAS hands half to a worker that then spins for a while after the call:
    on a 2-core machine it took a core from the chunk's next stages (the patches, the encoders; see
    docs/preprocessing.md). One thread gives the same bits (OpenBLAS splits the output, not the sum;
    tested). The lock keeps concurrent streams from restoring each other's limit in the wrong order.
    """
    controller = _blas_controller()
    if controller is None:
        return filters.T @ power.T
    with _BLAS_LOCK, controller.limit(limits=1, user_api="blas"):
        return filters.T @ power.T


def floor_and_scale(log_spec: np.ndarray, max_value: float) -> np.ndarray:
    """Whisper's last two steps: floor at max - 8, then (x + 4) / 4 -> float32, same shape."""
    return ((np.maximum(log_spec, max_value - LOG_FLOOR_RANGE) + 4.0) / 4.0).astype(np.float32)


@dataclass(frozen=True, eq=False)
class MelChunk:
    """One 2-second chunk of log-mel features, as `StreamingLogMel` emits it."""

    index: int                 # chunk j: mel frames [200j, 200j + n), seconds [2j, 2j + n/100)
    features: np.ndarray       # [n_mels, n <= 200] float32: the audio tower's input
    log_spec: np.ndarray       # [n_mels, n] float64: log10 mel before the floor (equals the whole clip's)
    floor_max: float           # the max the floor used: running max over frames seen so far


class StreamingLogMel:
    """PCM in blocks of any size -> one [n_mels, 200] log-mel window per 2 s chunk, the last one partial.

    The STFT is carried across chunk edges, so `log_spec` equals the whole clip's frame for frame.
    Chunk j's last frame is centred 160 samples before the chunk end and reads n_fft//2 - hop = 40
    samples past it, so chunk j is emitted once 2 s * (j + 1) + 40 samples arrived. `finish()`
    pads the end exactly as the whole clip is padded (zeros to 300 s, then the STFT's reflection)
    and emits what is left. The floor uses the running max over all frames up to and including the
    chunk (and, at `finish()`, the one or two frames past the end that Whisper's max also sees).
    """

    def __init__(self, spec: OmniSpec = OmniSpec()):
        self.spec = spec
        self.frames_per_chunk = spec.samples_per_chunk // spec.hop_length                # 200
        self.running_max = -math.inf
        self._buf = np.zeros(0, np.float64)    # received samples [buf_start, received)
        self._buf_start = 0
        self._received = 0
        self._next_chunk = 0
        self._finished = False

    @property
    def samples_received(self) -> int:
        return self._received

    def push(self, pcm: np.ndarray) -> list[MelChunk]:
        """Append mono PCM [n] (float, 16 kHz); return the chunks it completed (often none, at most a few)."""
        if self._finished:
            raise UsageError("StreamingLogMel.push after finish(); start a new StreamingLogMel per clip")
        pcm = as_float_pcm(pcm)                    # integer PCM by its scale; far-out float refused
        if pcm.ndim != 1:
            raise UsageError(f"pcm must be mono [n] (got shape {list(pcm.shape)}); downmix it first")
        if not np.isfinite(pcm).all():
            raise UsageError("the audio contains NaN or Inf samples; check the source (a float WAV/track with "
                             "invalid values?)")
        # float32 first: the feature extractor casts to float32, so float64 input matches it too
        self._buf = np.concatenate([self._buf, pcm.astype(np.float32).astype(np.float64)])
        self._received += pcm.shape[0]
        out = []
        while self._received >= self._chunk_end_sample(self._next_chunk, self.frames_per_chunk):
            out.append(self._emit(self.frames_per_chunk, n_total=None))
        return out

    def finish(self) -> list[MelChunk]:
        """The stream ended: emit the remaining chunks (padded as the whole clip is; up to two)."""
        if self._finished:
            return []
        self._finished = True
        n_valid = self.spec.mel_frames_for_samples(self._received)
        out = []
        while self._next_chunk * self.frames_per_chunk < n_valid:
            f0 = self._next_chunk * self.frames_per_chunk
            out.append(self._emit(min(self.frames_per_chunk, n_valid - f0), n_total=self._received))
        return out

    # -- internals ------------------------------------------------------------------------------

    def _chunk_end_sample(self, chunk: int, n: int) -> int:
        """Samples (exclusive end) that frames [chunk*200, chunk*200 + n) read."""
        last = chunk * self.frames_per_chunk + n - 1
        return last * self.spec.hop_length + self.spec.n_fft // 2

    def _segment(self, f0: int, n: int, n_total: int | None) -> np.ndarray:
        """The centred-STFT input for frames [f0, f0 + n) -> [hop*(n-1) + n_fft] float64.

        Original-sample index i < 0 reflects to -i (the STFT's reflect padding at the start); when
        the clip length n_total is known, the clip is zero-padded to L = max(n_total, 300 s) and
        i >= L reflects to 2(L-1) - i (the STFT's reflect padding at the end of the padded clip).
        """
        hop, half = self.spec.hop_length, self.spec.n_fft // 2
        lo, hi = f0 * hop - half, (f0 + n - 1) * hop + half
        if n_total is None and lo >= self._buf_start:     # no reflection, all received: a view of the buffer
            return self._buf[lo - self._buf_start:hi - self._buf_start]
        idx = np.arange(lo, hi)                                                       # [hop*(n-1) + n_fft]
        idx = np.abs(idx)
        if n_total is not None:
            L = max(n_total, WHISPER_PAD_SECONDS * self.spec.sample_rate)
            idx = np.where(idx >= L, 2 * (L - 1) - idx, idx)
            inside = idx < n_total
        else:
            inside = np.ones(idx.shape, bool)
        seg = np.zeros(idx.shape, np.float64)
        seg[inside] = self._buf[idx[inside] - self._buf_start]
        return seg

    def _emit(self, n: int, n_total: int | None) -> MelChunk:
        spec, j = self.spec, self._next_chunk
        f0 = j * self.frames_per_chunk
        log_spec = _log_spec(self._segment(f0, n, n_total), n, spec)                  # [n_mels, n]
        self.running_max = max(self.running_max, float(log_spec.max()))
        n_valid = spec.mel_frames_for_samples(n_total) if n_total is not None else None
        if n_valid is not None and f0 + n == n_valid:
            # Whisper's max also covers the frames past the valid ones that still read the clip
            L = max(n_total, WHISPER_PAD_SECONDS * spec.sample_rate)
            n_tail = min(L // spec.hop_length, -(-(n_total + spec.n_fft // 2) // spec.hop_length)) - n_valid
            if n_tail > 0:
                tail = _log_spec(self._segment(n_valid, n_tail, n_total), n_tail, spec)  # [n_mels, <=2]
                self.running_max = max(self.running_max, float(tail.max()))
        self._next_chunk += 1
        # keep only what the next chunk reads: from its first frame's window start on
        keep_from = max(0, (f0 + self.frames_per_chunk) * spec.hop_length - spec.n_fft // 2)
        if n_total is None and keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:]
            self._buf_start = keep_from
        return MelChunk(j, floor_and_scale(log_spec, self.running_max), log_spec, self.running_max)


def log_mel_chunks(pcm: np.ndarray, spec: OmniSpec = OmniSpec()) -> tuple[list[np.ndarray], float]:
    """Whole clip -> (pre-floor log10 mel per chunk [n_mels, <=200] float64, the clip's global max).

    The same chunk loop (and STFT calls) as `StreamingLogMel`; the last chunk's running max is the
    global max, including the frames just past the end that Whisper's max covers.
    """
    stream = StreamingLogMel(spec)
    chunks = stream.push(pcm) + stream.finish()
    return [c.log_spec for c in chunks], stream.running_max


def log_mel(pcm: np.ndarray, spec: OmniSpec = OmniSpec()) -> np.ndarray:
    """Mono PCM [N] at 16 kHz -> Whisper log-mel [n_mels, ceil(N/160)] float32, floored at the global max.

    Equals Qwen2.5-Omni's `WhisperFeatureExtractor(feature_size=128, chunk_length=300)(pcm,
    padding="max_length")` cropped to its attention mask for N <= 300 s. Longer clips are processed
    whole (transformers would truncate them at 300 s unless called with truncation=False).
    """
    chunks, global_max = log_mel_chunks(pcm, spec)
    if not chunks:
        return np.zeros((spec.n_mels, 0), np.float32)
    return floor_and_scale(np.concatenate(chunks, axis=1), global_max)             # [n_mels, ceil(N/160)]
