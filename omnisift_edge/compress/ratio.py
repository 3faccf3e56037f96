"""The ratio policy: an overall kept fraction of audio+video tokens -> OmniSIFT's two drop rates.

OmniSIFT has two knobs, both *drop* fractions: `rho_video` (each frame loses
`floor(n_p * rho_video)` tokens) and `rho_audio` (a chunk of `La` audio tokens keeps
`La - floor(La * rho_audio)`). Users think in one number, the fraction of audio+video tokens kept
(`--ratio 0.25`). The policy that maps one to the other:

1. `ratio == 1` -> no drops at all: `(0.0, 0.0)`.
2. Otherwise keep the reference's audio drop, 0.3, and choose the video drop whose achieved ratio
   is closest to the target (ties: the smaller drop).
3. If even the largest video drop (one token left per frame) keeps too many, raise the audio drop;
   if even no video drop keeps too few, lower the audio drop.

Counts are integers, so the target is met only approximately: `achieved_ratio` says what a pair of
drops really keeps, and the export manifest records it. The counting rules here (`drop_count`,
`kept_per_chunk`) are the ones the compressor uses, so the policy and the modules cannot drift.
No torch here: the runtime and the manifest use it on a Jetson.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from omnisift_edge.errors import UsageError

REFERENCE_RHO_VIDEO = 0.7   # the authors' defaults (OMNISIFT.md)
REFERENCE_RHO_AUDIO = 0.3


class ChunkKeep(NamedTuple):
    """Tokens one chunk keeps after compression."""

    video: int
    audio: int

    @property
    def total(self) -> int:
        return self.video + self.audio


def check_rho(name: str, rho: float) -> float:
    """Validate a drop fraction: it must lie in [0, 1) (1 would drop every token of a frame)."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (0.0 <= float(rho) < 1.0):
        raise UsageError(f"{name} is a drop fraction and must be in [0, 1); got {rho!r}")
    return float(rho)


def drop_count(n: int, rho: float) -> int:
    """Tokens dropped from `n` at drop fraction `rho`: the reference's `int(n * rho)` exactly."""
    return int(n * rho)


def audio_keep_count(n_audio: int, rho_audio: float, context: int) -> int:
    """Audio tokens a chunk keeps: selection runs only with video context and more than one audio token."""
    if context > 0 and n_audio > 1:
        return n_audio - drop_count(n_audio, rho_audio)
    return n_audio


def kept_per_chunk(
    tokens_per_frame: int,
    rho_video: float,
    rho_audio: float,
    audio_per_chunk: int = 50,
    frames_per_chunk: int = 2,
) -> ChunkKeep:
    """Video and audio tokens a chunk of `frames_per_chunk` frames and `audio_per_chunk` audio keeps."""
    _check_layout(tokens_per_frame, audio_per_chunk, frames_per_chunk)
    rho_video = check_rho("rho_video", rho_video)
    rho_audio = check_rho("rho_audio", rho_audio)
    video = frames_per_chunk * (tokens_per_frame - drop_count(tokens_per_frame, rho_video))
    return ChunkKeep(video, audio_keep_count(audio_per_chunk, rho_audio, video))


def achieved_ratio(
    tokens_per_frame: int,
    rho_video: float,
    rho_audio: float,
    audio_per_chunk: int = 50,
    frames_per_chunk: int = 2,
) -> float:
    """Fraction of a chunk's audio+video tokens that `(rho_video, rho_audio)` really keeps."""
    kept = kept_per_chunk(tokens_per_frame, rho_video, rho_audio, audio_per_chunk, frames_per_chunk)
    return kept.total / (frames_per_chunk * tokens_per_frame + audio_per_chunk)


def drops_for_ratio(
    ratio: float,
    tokens_per_frame: int,
    audio_per_chunk: int = 50,
    frames_per_chunk: int = 2,
) -> tuple[float, float]:
    """`(rho_video, rho_audio)` whose kept fraction is closest to `ratio` under the policy above.

    The returned drop fractions reproduce the chosen integer counts exactly through `drop_count`
    (e.g. 203 of 256 tokens -> `rho_video = 203/256`).
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0.0 < float(ratio) <= 1.0):
        raise UsageError(f"ratio is the fraction of audio+video tokens kept and must be in (0, 1]; got {ratio!r}")
    _check_layout(tokens_per_frame, audio_per_chunk, frames_per_chunk)
    if ratio == 1.0:
        return 0.0, 0.0
    n_p, n_a, frames = tokens_per_frame, audio_per_chunk, frames_per_chunk
    total = frames * n_p + n_a
    target = ratio * total

    def error(k_v: int, k_a: int) -> float:
        video = frames * (n_p - k_v)
        audio = n_a - k_a if (video > 0 and n_a > 1) else n_a
        return abs(video + audio - target)

    # 2. the reference's audio drop, the closest video drop (min keeps the first, i.e. smaller, on ties)
    k_a = drop_count(n_a, REFERENCE_RHO_AUDIO) if n_a > 1 else 0
    k_v = min(range(n_p), key=lambda k: error(k, k_a))
    kept_now = frames * (n_p - k_v) + (n_a - k_a)
    # 3. at a bound of the video drop, move the audio drop instead
    if n_a > 1 and k_v == n_p - 1 and kept_now > target:
        k_a = min(range(k_a, n_a), key=lambda k: error(k_v, k))
    elif n_a > 1 and k_v == 0 and kept_now < target:
        k_a = min(range(0, k_a + 1), key=lambda k: error(k_v, k))
    rho_audio = REFERENCE_RHO_AUDIO if k_a == drop_count(n_a, REFERENCE_RHO_AUDIO) else _rho_for(k_a, n_a)
    return _rho_for(k_v, n_p), rho_audio


def _rho_for(k: int, n: int) -> float:
    """Smallest-looking fraction `r` with `drop_count(n, r) == k` (k/n, nudged up past rounding)."""
    if k == 0:
        return 0.0
    r = k / n
    while drop_count(n, r) < k:
        r = math.nextafter(r, 1.0)
    return r


def _check_layout(tokens_per_frame: int, audio_per_chunk: int, frames_per_chunk: int) -> None:
    if tokens_per_frame < 1:
        raise UsageError(f"tokens_per_frame must be >= 1; got {tokens_per_frame}")
    if audio_per_chunk < 0:
        raise UsageError(f"audio_per_chunk must be >= 0; got {audio_per_chunk}")
    if frames_per_chunk not in (1, 2):
        raise UsageError(f"frames_per_chunk must be 1 or 2 (OmniSIFT chunks hold 2 frames); got {frames_per_chunk}")
