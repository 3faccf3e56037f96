"""Generated media for demos and tests: a clip with visual events and matching sounds.

A coloured square moves across a textured background; at given seconds the scene flashes to a new
colour and a tone burst plays, so the audio and video carry aligned events (the kind of content
OmniSIFT's vision-guided audio selector is for). Deterministic for a seed; numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticClip:
    frames: np.ndarray        # [T, H, W, 3] uint8 at `fps`
    pcm: np.ndarray           # [N] float32 mono in [-1, 1] at `sample_rate`
    fps: float
    sample_rate: int
    event_seconds: tuple[float, ...]


def synthetic_clip(seconds: float, height: int, width: int, *, fps: float = 2.0, sample_rate: int = 16000,
                   seed: int = 0, events: tuple[float, ...] | None = None) -> SyntheticClip:
    """A `seconds`-long clip of `height` x `width` frames at `fps` with aligned audio-visual events."""
    rng = np.random.default_rng(seed)
    n_frames = max(1, int(np.floor(seconds * fps)))
    n_samples = int(round(seconds * sample_rate))
    if events is None:
        events = tuple(float(s) for s in np.arange(1.0, seconds, 2.5))
    background = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)      # [H, W, 3]
    side = max(4, min(height, width) // 4)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    for i in range(n_frames):
        t = i / fps
        frame = background.copy()
        if any(0 <= t - e < 0.5 for e in events):
            frame[:] = np.array([200, 180, 40], dtype=np.uint8)                    # the flash
        x = int((width - side) * (0.5 + 0.5 * np.sin(t)))
        y = int((height - side) * (0.5 + 0.5 * np.cos(0.7 * t)))
        frame[y:y + side, x:x + side] = np.array([220, 40, 40], dtype=np.uint8)
        frames[i] = frame
    time = np.arange(n_samples) / sample_rate
    pcm = 0.02 * rng.standard_normal(n_samples)                                    # room noise
    for e in events:
        burst = (time >= e) & (time < e + 0.4)
        pcm[burst] += 0.5 * np.sin(2 * np.pi * 880.0 * time[burst])
    pcm = pcm + 0.05 * np.sin(2 * np.pi * 220.0 * time)                            # a steady hum
    return SyntheticClip(frames, np.clip(pcm, -1, 1).astype(np.float32), fps, sample_rate, tuple(events))
