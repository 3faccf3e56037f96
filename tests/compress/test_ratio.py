"""The ratio policy: overall kept fraction -> (rho_video, rho_audio), and the counts behind it."""

from __future__ import annotations

import pytest

from omnisift_edge.compress.ratio import (
    achieved_ratio,
    drop_count,
    drops_for_ratio,
    kept_per_chunk,
)
from omnisift_edge.errors import UsageError


def test_reference_defaults_keep_about_a_third():
    kept = kept_per_chunk(256, 0.7, 0.3)
    assert (kept.video, kept.audio, kept.total) == (154, 35, 189)
    assert achieved_ratio(256, 0.7, 0.3) == pytest.approx(189 / 562)


def test_ratio_one_drops_nothing():
    assert drops_for_ratio(1.0, 256) == (0.0, 0.0)
    assert achieved_ratio(256, 0.0, 0.0) == 1.0


@pytest.mark.parametrize(
    "ratio, video, audio",
    [(0.5, 246, 35), (0.35, 162, 35), (0.25, 106, 35), (0.1, 22, 35)],
)
def test_policy_keeps_audio_drop_and_solves_video(ratio, video, audio):
    rho_v, rho_a = drops_for_ratio(ratio, 256)
    assert rho_a == 0.3
    assert tuple(kept_per_chunk(256, rho_v, rho_a)) == (video, audio)
    assert abs(achieved_ratio(256, rho_v, rho_a) - ratio) <= 1 / 562   # within one video token pair


def test_quarter_needs_video_drop_near_point_eight():
    rho_v, _ = drops_for_ratio(0.25, 256)
    assert 0.78 < rho_v < 0.81


def test_bounds_move_the_audio_drop():
    rho_v, rho_a = drops_for_ratio(0.02, 256)          # below one video token per frame + 35 audio
    assert drop_count(256, rho_v) == 255 and rho_a > 0.3
    assert kept_per_chunk(256, rho_v, rho_a) == (2, 9)
    rho_v, rho_a = drops_for_ratio(0.99, 256)          # above everything video + 35 audio
    assert rho_v == 0.0 and rho_a < 0.3
    assert kept_per_chunk(256, rho_v, rho_a) == (512, 44)


@pytest.mark.parametrize("n_p", [1, 3, 16, 49, 100, 256, 1024])
def test_returned_drops_are_exact_and_optimal(n_p):
    for i in range(1, 100):
        target = i / 100
        rho_v, rho_a = drops_for_ratio(target, n_p)
        assert 0.0 <= rho_v < 1.0 and 0.0 <= rho_a < 1.0
        k = drop_count(n_p, rho_v)
        # k / n_p itself, or nudged up by ulps where n_p * (k / n_p) rounds below k
        assert rho_v == k / n_p or (drop_count(n_p, k / n_p) < k and 0 < rho_v - k / n_p < 1e-12)
        if rho_a == 0.3:   # no video drop under the reference's audio drop gets closer
            best = min(abs(achieved_ratio(n_p, kv / n_p if kv else 0.0, 0.3) - target) for kv in range(n_p))
            assert abs(achieved_ratio(n_p, rho_v, rho_a) - target) <= best + 1e-12


def test_single_frame_chunks_and_short_audio():
    assert kept_per_chunk(10, 0.5, 0.3, audio_per_chunk=1, frames_per_chunk=1) == (5, 1)   # one audio: kept
    assert kept_per_chunk(10, 0.5, 0.3, audio_per_chunk=0, frames_per_chunk=2) == (10, 0)


def test_bad_ratios_and_drops():
    for bad in (0, 0.0, -0.1, 1.01, float("nan"), True):
        with pytest.raises(UsageError, match=r"\(0, 1\]"):
            drops_for_ratio(bad, 256)
    with pytest.raises(UsageError, match=r"\[0, 1\)"):
        kept_per_chunk(256, 1.0, 0.3)
    with pytest.raises(UsageError, match="frames_per_chunk"):
        kept_per_chunk(256, 0.5, 0.3, frames_per_chunk=3)
    with pytest.raises(UsageError, match="tokens_per_frame"):
        drops_for_ratio(0.5, 0)
