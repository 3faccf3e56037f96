"""PCM samples as the log-mel expects them: float in [-1, 1], converted by scale or refused.

Integer PCM (what WAV files, microphones and most audio APIs deliver) is converted by its full
scale: int16 / 32768, int32 / 2^31, int8 / 128, uint8 (offset binary) (x - 128) / 128. Reading it
as float would shift the log-mel by up to log10(32768) ~ 4.5 before the dynamic-range floor and
scale it silently. Float PCM must be finite and within [-FLOAT_LIMIT, FLOAT_LIMIT]: a peak far
outside [-1, 1] is almost always integer PCM stored as float, and is refused with the fix.
"""

from __future__ import annotations

import numpy as np

from omnisift_edge.errors import UsageError

FLOAT_LIMIT = 8.0   # headroom for overshoot, hot mixes and test noise; integer samples read as float reach 100s-32767

_SCALE = {np.dtype(np.int16): (0.0, 32768.0), np.dtype(np.int32): (0.0, 2.0 ** 31),
          np.dtype(np.int8): (0.0, 128.0), np.dtype(np.uint8): (128.0, 128.0)}


def as_float_pcm(pcm) -> np.ndarray:
    """Mono PCM [n] as float (float input keeps its dtype); integer PCM scaled to [-1, 1]."""
    pcm = np.asarray(pcm)
    if pcm.dtype in _SCALE:
        offset, scale = _SCALE[pcm.dtype]
        return ((pcm.astype(np.float64) - offset) / scale).astype(np.float32)
    if pcm.dtype.kind in "iu":
        raise UsageError(f"{pcm.dtype} PCM has no standard full scale; pass float32 in [-1, 1] "
                         "or int16/int32 samples")
    if pcm.dtype.kind != "f":
        raise UsageError(f"PCM must be float in [-1, 1] or int16/int32 samples; got {pcm.dtype}")
    if pcm.size and np.isfinite(pcm).all():
        peak = float(np.abs(pcm).max())
        if peak > FLOAT_LIMIT:
            raise UsageError(f"float PCM peaks at {peak:g}, far outside [-1, 1]; if these are integer samples, "
                             "pass them as int16 (or divide by 32768)")
    return pcm
