"""load_media on small files generated with PyAV: frame sampling, colours, audio, and the errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.model.spec import OmniSpec

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'omnisift-edge[model]')")

from omnisift_edge.model.media import load_media  # noqa: E402
from tests.helpers import COLOURS, write_clip as _write  # noqa: E402

SPEC = OmniSpec()


def _dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))        # [N/2 + 1]
    return float(np.argmax(spectrum)) * SPEC.sample_rate / pcm.shape[0]


@pytest.mark.parametrize("suffix,acodec,seconds", [(".mp4", "aac", 3.0), (".mkv", "pcm_s16le", 2.3),
                                                   (".mkv", "aac", 4.1)])
def test_decodes_frames_and_audio(tmp_path, suffix, acodec, seconds):
    path = _write(tmp_path / f"clip{suffix}", seconds=seconds, acodec=acodec)
    m = load_media(path, SPEC)
    n_frames = int(seconds * SPEC.fps)
    assert m.frames.shape == (n_frames, 64, 96, 3) and m.frames.dtype == np.uint8
    assert m.pcm.dtype == np.float32 and m.pcm.ndim == 1
    assert abs(m.duration - round(seconds * 25) / 25) < 1e-9
    assert abs(m.pcm.shape[0] - seconds * SPEC.sample_rate) <= 0.01 * SPEC.sample_rate
    assert abs(_dominant_hz(m.pcm) - 440.0) < 2.0
    assert m.source.video_codec == "mpeg4" and m.source.native_sample_rate == 44100
    assert (m.source.width, m.source.height, m.source.native_channels) == (96, 64, 2)


def test_frame_k_shows_time_k_over_fps(tmp_path):
    seconds, w, h = 4.0, 96, 64
    m = load_media(_write(tmp_path / "clip.mp4", seconds=seconds, w=w, h=h, fps=25), SPEC)
    assert m.frames.shape[0] == 8
    for k, frame in enumerate(m.frames):
        t = k / SPEC.fps
        x = int((w - 16) * t / seconds)
        centre = frame[h // 2 - 4:h // 2 + 4, x + 4:x + 12].reshape(-1, 3).mean(0)     # inside the square
        np.testing.assert_allclose(centre, COLOURS[int(t) % 4], atol=40)
        assert np.abs(frame[4:12, 4:12].astype(float) - 64).mean() < 12 or x < 16       # background stays grey


def test_nearest_frame_rule_with_a_slow_source(tmp_path):
    # 3 fps source: frames at 0, 1/3, 2/3, 1, ...; target 0.5 ties 1/3 and 2/3 -> the earlier, 1/3
    seconds = 3.0
    m = load_media(_write(tmp_path / "slow.mkv", seconds=seconds, fps=3, acodec="pcm_s16le"), SPEC)
    assert m.frames.shape[0] == 6
    for k, frame in enumerate(m.frames):
        t_target = Fraction(k, 2)
        t_src = min((Fraction(i, 3) for i in range(9)), key=lambda s: (abs(s - t_target), s))
        x = int((96 - 16) * t_src / seconds)
        np.testing.assert_allclose(frame[28:36, x + 4:x + 12].reshape(-1, 3).mean(0),
                                   COLOURS[int(t_src) % 4], atol=40)


def test_max_seconds_and_separate_audio(tmp_path):
    video = _write(tmp_path / "silent.mp4", seconds=3.0, audio=False)
    audio = _write(tmp_path / "tone.mkv", seconds=5.0, video=False, acodec="pcm_s16le", sr=22050, layout="mono",
                   tone=1000.0)
    m = load_media(video, SPEC, audio_path=audio)
    assert m.frames.shape[0] == 6 and m.pcm.shape[0] == 5 * SPEC.sample_rate
    assert abs(_dominant_hz(m.pcm) - 1000.0) < 2.0 and m.source.native_channels == 1
    m = load_media(video, SPEC, audio_path=audio, max_seconds=1.6)
    assert m.frames.shape[0] == 3 and m.duration == pytest.approx(1.6)
    assert m.pcm.shape[0] == int(1.6 * SPEC.sample_rate)


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no such video file"):
        load_media(tmp_path / "nope.mp4", SPEC)
    with pytest.raises(UsageError, match="no such audio file"):
        load_media(_write(tmp_path / "a.mp4", seconds=1.0), SPEC, audio_path=tmp_path / "nope.wav")


def test_text_file_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(UsageError, match="cannot read .* as media"):
        load_media(path, SPEC)


def test_video_without_audio_says_pass_audio(tmp_path):
    with pytest.raises(UsageError, match="no audio stream; pass --audio FILE"):
        load_media(_write(tmp_path / "silent.mp4", seconds=1.0, audio=False), SPEC)


def test_audio_only_file_is_not_a_video(tmp_path):
    with pytest.raises(UsageError, match="no video stream"):
        load_media(_write(tmp_path / "tone.mkv", seconds=1.0, video=False, acodec="pcm_s16le"), SPEC)


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_file(tmp_path, keep):
    data = _write(tmp_path / "full.mp4", seconds=2.0).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[:int(len(data) * keep)])        # mp4 keeps its index (moov) at the end
    with pytest.raises(UsageError, match="cannot read|corrupt|zero-length"):
        load_media(path, SPEC)


def test_truncated_mkv_decodes_what_is_there(tmp_path):
    data = _write(tmp_path / "full.mkv", seconds=4.0, acodec="pcm_s16le").read_bytes()
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[:len(data) // 2])             # mkv streams: the first half still plays
    m = load_media(path, SPEC)
    assert 1 <= m.frames.shape[0] < 8 and 0 < m.pcm.shape[0] < 4 * SPEC.sample_rate


def test_empty_file_and_bad_max_seconds(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(UsageError, match="zero-length"):
        load_media(path, SPEC)
    with pytest.raises(UsageError, match="max_seconds must be > 0"):
        load_media(_write(tmp_path / "a.mp4", seconds=1.0), SPEC, max_seconds=0)
