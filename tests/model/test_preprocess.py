"""Frames -> patches and PCM -> log-mel against transformers' processors, and the streaming log-mel."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.model.preprocess import (
    CLIP_MEAN, CLIP_STD, StreamingLogMel, _log_spec, chunk_patches, iter_chunk_patches, log_mel, log_mel_chunks,
    mel_filters, mel_projection, pixel_table, smart_resize, video_patches,
)
from omnisift_edge.model.spec import OmniSpec

SPEC = OmniSpec()
SR = SPEC.sample_rate


# ----------------------------------------------------------------------------------------- vision

def _frames(t, h, w, seed=0):
    """Smooth gradients plus noise: bicubic resizing has something to interpolate."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)       # [H, W, 3]
    noise = rng.integers(-40, 40, (t, h, w, 3))
    return np.clip(base[None] + noise + 20 * np.arange(t)[:, None, None, None], 0, 255).astype(np.uint8)


def _oracle(frames, **kw):
    transformers = pytest.importorskip("transformers")
    proc = transformers.Qwen2VLImageProcessor()            # the slow PIL/numpy processor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = proc(images=None, videos=[frames], return_tensors="np", **kw)   # a video as a 4D array
    return out["pixel_values_videos"], out["video_grid_thw"][0]


@pytest.mark.parametrize("h,w", [(56, 84), (112, 112), (448, 448), (100, 130)])
@pytest.mark.parametrize("t", [1, 3, 4, 5])
@pytest.mark.parametrize("budget", ["omni_video", "small"])
def test_video_patches_equal_transformers(h, w, t, budget):
    # Qwen2.5-Omni's video budget upsamples small frames; the small one keeps 56x84 as it is
    kw = {} if budget == "omni_video" else {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}
    frames = _frames(t, h, w, seed=h + w + t)
    ref, ref_grid = _oracle(frames, **({"min_pixels": 128 * 28 * 28, "max_pixels": 768 * 28 * 28} | kw))
    pv, grid = video_patches(frames, SPEC, **kw)
    assert pv.dtype == np.float32 and pv.shape == ref.shape
    assert grid.tolist() == ref_grid.tolist()
    assert grid[0] == -(-t // 2) and pv.shape[1] == 3 * 2 * 14 * 14
    np.testing.assert_allclose(pv, ref, rtol=0, atol=1e-5)


def test_smart_resize_matches_transformers():
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as ref
    for h, w in [(56, 84), (100, 130), (1080, 1920), (720, 1280), (30, 500), (2000, 64)]:
        for lo, hi in [(128 * 28 * 28, 768 * 28 * 28), (56 * 56, 28 * 28 * 1280)]:
            assert smart_resize(h, w, SPEC, min_pixels=lo, max_pixels=hi) == ref(h, w, 28, lo, hi)


def test_explicit_size_resizes_like_pil_then_patches():
    Image = pytest.importorskip("PIL.Image")
    frames = _frames(3, 100, 130)
    pv, grid = video_patches(frames, SPEC, size=(112, 140))
    resized = np.stack([np.asarray(Image.fromarray(f).resize((140, 112), Image.Resampling.BICUBIC)) for f in frames])
    ref, ref_grid = _oracle(resized, do_resize=False)
    assert grid.tolist() == [2, 8, 10] == ref_grid.tolist()
    np.testing.assert_allclose(pv, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("t", [4, 7, 9, 12])
def test_chunks_concatenate_to_whole_clip(t):
    frames = _frames(t, 100, 130, seed=t)
    whole, grid = video_patches(frames, SPEC, size=(56, 84))
    chunks = list(iter_chunk_patches(frames, SPEC, size=(56, 84)))
    assert len(chunks) == -(-t // 4)
    assert all(c.shape == (2 * 2 * 3 * 2 * 2, 1176) for c in chunks[:-1])        # 2 * gh * gw rows
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_pixel_table_is_transformers_rescale_and_normalize_of_every_byte():
    transformers = pytest.importorskip("transformers")
    from transformers.image_transforms import normalize, rescale
    from transformers.image_utils import ChannelDimension

    image = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)       # [1, 256, 3]: every byte
    last = ChannelDimension.LAST
    ref = normalize(rescale(image, 1 / 255, dtype=np.float32, input_data_format=last), CLIP_MEAN, CLIP_STD,
                    input_data_format=last)                                            # transformers' two steps
    assert ref.dtype == np.float32 and transformers.__version__
    np.testing.assert_array_equal(pixel_table(), ref[0].T)                            # [3, 256], bit for bit


@pytest.mark.parametrize("h,w,t", [(448, 448, 4), (56, 84, 1), (100, 130, 5)])
def test_video_patches_are_transformers_bit_for_bit(h, w, t):
    frames = _frames(t, h, w, seed=t)
    ref, _ = _oracle(frames, min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28)
    np.testing.assert_array_equal(video_patches(frames, SPEC)[0], ref)


def _float_patches(frames):
    """The documented steps in floats (docs/preprocessing.md, vision 3-5): normalize, pad, reorder."""
    x = (frames.astype(np.float64) * (1 / 255)).astype(np.float32)                    # [T, H, W, 3]
    x = ((x - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)).transpose(0, 3, 1, 2)    # [T, 3, H, W]
    if len(x) % 2:
        x = np.concatenate([x, x[-1:]])
    t, c, h, w = x.shape
    x = x.reshape(t // 2, 2, c, h // 28, 2, 14, w // 28, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(-1, c * 2 * 14 * 14)                                             # [gt*gh*gw, 1176]


@pytest.mark.parametrize("t,h,w", [(4, 252, 308), (3, 56, 84), (1, 28, 28), (4, 448, 448)])
def test_byte_lookup_patches_equal_the_float_steps(t, h, w):
    # 252x308: 792 rows per chunk, not a multiple of the lookup's 128-row blocks
    frames = _frames(t, h, w, seed=h + t)
    np.testing.assert_array_equal(chunk_patches(frames, SPEC, size=(h, w)), _float_patches(frames))


def test_size_errors_name_a_fix():
    frames = _frames(2, 56, 56)
    with pytest.raises(UsageError, match=r"multiple of 28 \(got 450x450\); try 448x448"):
        video_patches(frames, SPEC, size=(450, 450))
    with pytest.raises(UsageError, match="uint8 RGB"):
        video_patches(frames.astype(np.float32), SPEC)
    with pytest.raises(UsageError, match="at most 4 frames"):
        chunk_patches(_frames(5, 56, 56), SPEC, size=(56, 56))


# ------------------------------------------------------------------------------------------ audio

def _sweep(seconds, f0=100.0, f1=6000.0, amp=0.5):
    t = np.arange(int(round(seconds * SR))) / SR
    return (amp * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))).astype(np.float32)


def _noise(seconds, amp=0.1, seed=0):
    return (amp * np.random.default_rng(seed).standard_normal(int(round(seconds * SR)))).astype(np.float32)


CLIPS = {
    "sweep_3.3s": lambda: _sweep(3.3),
    "noise_7.77s": lambda: _noise(7.77),
    "silence_2s": lambda: np.zeros(2 * SR, np.float32),
    "short_1000": lambda: _noise(1000 / SR, amp=0.3),
    "one_sample": lambda: np.float32([0.2]),
    "exact_30s": lambda: _noise(30.0, seed=1),
    "just_under_30s": lambda: _noise(30.0 - 37 / SR, seed=2),
    # N = 501 * 160: the burst sits near the centre of the first frame past the valid ones
    "loud_last_37_samples": lambda: np.concatenate([_noise((501 * 160 - 37) / SR, amp=1e-3),
                                                    _noise(37 / SR, amp=1.0, seed=3)]),
    "tone_then_silence_4.5s": lambda: np.concatenate([_sweep(1.5, 440, 440), np.zeros(3 * SR, np.float32)]),
}


@pytest.fixture(scope="module")
def whisper():
    """Qwen2.5-Omni's feature extractor: Whisper's with chunk_length 300 (zero padding to 300 s)."""
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400,
                                                chunk_length=300)


def _whisper_valid(fe, pcm, **kw):
    out = fe(pcm, sampling_rate=SR, padding="max_length", return_attention_mask=True, return_tensors="np", **kw)
    return out["input_features"][0][:, : int(out["attention_mask"][0].sum())]


def test_mel_filters_equal_transformers(whisper):
    assert np.array_equal(mel_filters(400, 128, 16000), whisper.mel_filters)


@pytest.mark.parametrize("name", list(CLIPS))
def test_log_mel_equals_whisper(whisper, name):
    pcm = CLIPS[name]()
    ref = _whisper_valid(whisper, pcm)
    out = log_mel(pcm, SPEC)
    assert out.dtype == np.float32
    assert out.shape == ref.shape == (128, SPEC.mel_frames_for_samples(pcm.shape[0]))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


def test_global_max_covers_the_frames_past_the_end():
    chunks, global_max = log_mel_chunks(CLIPS["loud_last_37_samples"](), SPEC)
    assert global_max > np.concatenate(chunks, 1).max() + 0.1     # set by a frame past the valid ones


def test_log_mel_over_30s_follows_qwen_omnis_extractor(whisper):
    """Past 30 s the clip's end reads zeros (chunk_length 300), not Whisper's 30-s end reflection."""
    pcm = np.concatenate([_noise(20.0, seed=4), _sweep(15.3)])          # 35.3 s
    out = log_mel(pcm, SPEC)
    assert out.shape == (128, SPEC.mel_frames_for_samples(pcm.shape[0]))
    whole = _whisper_valid(whisper, pcm)
    assert whole.shape == out.shape
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-4)


def test_log_mel_empty_clip():
    assert log_mel(np.zeros(0, np.float32), SPEC).shape == (128, 0)


# -------------------------------------------------------------------------------- streaming log-mel

def _stream(pcm, seed=0, max_block=9000):
    """Feed `pcm` in random block sizes (including empty ones); return all emitted chunks."""
    rng = np.random.default_rng(seed)
    s, out, i = StreamingLogMel(SPEC), [], 0
    while i < pcm.shape[0]:
        n = int(rng.integers(0, max_block))
        out += s.push(pcm[i:i + n])
        i += n
    return out + s.finish()


@pytest.mark.parametrize("seconds", [0.3, 2.0, 2.0 + 20 / SR, 5.5, 7.77, 12.0])
def test_streaming_log_spec_is_whole_clip_exactly(seconds):
    pcm = _noise(seconds, seed=int(seconds * 100)) + _sweep(seconds, amp=0.2)
    ref_chunks, ref_max = log_mel_chunks(pcm, SPEC)
    got = _stream(pcm, seed=int(seconds))
    n_valid = SPEC.mel_frames_for_samples(pcm.shape[0])
    assert [c.index for c in got] == list(range(-(-n_valid // 200)))
    assert all(c.features.shape == (128, 200) for c in got[:-1])
    assert got[-1].features.shape == (128, n_valid - 200 * (len(got) - 1))
    # the pre-floor log spectrogram is bit for bit the whole clip's, chunk edges included
    np.testing.assert_array_equal(np.concatenate([c.log_spec for c in got], 1), np.concatenate(ref_chunks, 1))
    assert got[-1].floor_max == ref_max                                   # the last chunk sees the global max


def test_chunk_is_emitted_once_its_lookahead_arrived():
    pcm = _noise(4.0)
    s = StreamingLogMel(SPEC)
    need = SPEC.samples_per_chunk + SPEC.n_fft // 2 - SPEC.hop_length   # 32040: 40 samples past the chunk end
    assert s.push(pcm[:need - 1]) == []
    assert [c.index for c in s.push(pcm[need - 1:need])] == [0]
    assert s.push(pcm[need:2 * SPEC.samples_per_chunk]) == []          # chunk 1 still waits for 40 samples
    assert [c.index for c in s.finish()] == [1]


def test_finish_can_emit_two_chunks():
    pcm = _noise(2.0 + 20 / SR)                                          # chunk 0 waits; chunk 1 has one frame
    got = _stream(pcm)
    assert [c.features.shape[1] for c in got] == [200, 1]


def test_streaming_equals_whole_clip_when_loudest_comes_first():
    pcm = np.concatenate([_noise(2.0, amp=0.5), _noise(3.0, amp=0.01, seed=1), _sweep(2.5, amp=0.05)])
    got = _stream(pcm)
    assert all(c.floor_max == got[0].floor_max for c in got)             # running max == global max throughout
    np.testing.assert_array_equal(np.concatenate([c.features for c in got], 1), log_mel(pcm, SPEC))


def test_quiet_then_loud_deviation_is_confined_to_the_quiet_chunks():
    pcm = np.concatenate([_noise(4.0, amp=1e-3), _noise(2.0, amp=0.5, seed=1)])
    whole = log_mel(pcm, SPEC)
    got = _stream(pcm)
    stream = np.concatenate([c.features for c in got], 1)
    # the last chunk holds the loud part: its running max is the global max, so it is exact
    np.testing.assert_array_equal(stream[:, 400:], whole[:, 400:])
    dev = np.abs(stream[:, :400] - whole[:, :400])
    # the quiet chunks keep detail that the whole clip floors: features can only be lower there
    assert dev.max() > 0.1 and np.all(stream[:, :400] <= whole[:, :400])
    np.testing.assert_array_equal(np.concatenate([c.log_spec for c in got], 1),
                                  np.concatenate(log_mel_chunks(pcm, SPEC)[0], 1))


def test_mel_projection_is_the_plain_product_and_leaves_blas_threads_as_they_were():
    rng = np.random.default_rng(0)
    filters = mel_filters(400, 128, 16000)
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
    for n in (1, 7, 200):
        power = rng.random((n, 201)) ** 4 * 10.0                                        # [n, n_freq]
        np.testing.assert_array_equal(mel_projection(filters, power), filters.T @ power.T)   # one thread, same bits
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == before


def test_chunk_log_spec_is_the_stft_of_its_own_samples():
    # chunk 1 and later read received samples only (no reflection): the stream hands them over as they are
    pcm = _noise(6.5, seed=4) + _sweep(6.5, amp=0.2)
    got = _stream(pcm, seed=5)
    x = pcm.astype(np.float64)
    for c in got[1:3]:
        lo = c.index * 200 * 160 - 200
        np.testing.assert_array_equal(c.log_spec, _log_spec(x[lo:lo + 199 * 160 + 400], 200, SPEC))


def test_streaming_chunks_leave_no_blas_helper_thread_running():
    # OpenBLAS workers spin after a multithreaded product; the mel projection runs on the caller's thread,
    # so pushing chunks must not add CPU time to any other thread of the process (Linux /proc)
    pytest.importorskip("threadpoolctl")
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux /proc to read per-thread CPU time")
    code = """
import os, threading, time, numpy as np
from omnisift_edge.model.preprocess import StreamingLogMel
def others():
    main = str(threading.get_native_id())
    return sum(sum(map(int, open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()[11:13]))
               for t in os.listdir("/proc/self/task") if t != main)
pcm = (0.1 * np.random.default_rng(0).standard_normal(32000 * 40 + 40)).astype(np.float32)
StreamingLogMel().push(pcm[:32040])
before = others()
for _ in range(3):
    StreamingLogMel().push(pcm)
time.sleep(0.3)
print(others() - before)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert int(out) == 0, f"other threads used {out.strip()} clock ticks while the log-mel ran"


def test_push_after_finish_and_bad_shapes():
    s = StreamingLogMel(SPEC)
    with pytest.raises(UsageError, match="mono"):
        s.push(np.zeros((2, 10), np.float32))
    s.finish()
    with pytest.raises(UsageError, match="after finish"):
        s.push(np.zeros(10, np.float32))
    assert s.finish() == []


def test_import_needs_numpy_only():
    code = ("import sys, omnisift_edge.model.preprocess, omnisift_edge.model.media; "
            "bad = [m for m in ('torch', 'transformers', 'PIL', 'av') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
