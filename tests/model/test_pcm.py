"""Integer PCM is converted by its scale (issue 13.3): the same log-mel as the float samples."""

from __future__ import annotations

import numpy as np
import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.model.pcm import as_float_pcm
from omnisift_edge.model.preprocess import log_mel

SR = 16000


def _tone(seconds=2.5, amp=0.4):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)


@pytest.mark.parametrize("dtype, scale", [(np.int16, 32768.0), (np.int32, 2.0 ** 31)])
def test_integer_pcm_gives_the_float_log_mel(dtype, scale):
    ints = np.round(_tone() * scale).astype(dtype)
    as_float = (ints.astype(np.float64) / scale).astype(np.float32)
    np.testing.assert_array_equal(log_mel(ints), log_mel(as_float))
    assert np.abs(log_mel(ints) - log_mel(_tone())).max() < 1e-2          # the tone it came from (read as float: ~1.1 off)


def test_unsigned_8_bit_is_offset_binary():
    assert as_float_pcm(np.array([0, 128, 255], np.uint8)).tolist() == [-1.0, 0.0, 127 / 128]


@pytest.mark.parametrize("pcm, message", [
    (np.array([0.0, 32767.0, -32768.0], np.float32), "far outside \\[-1, 1\\].*int16"),
    (np.array([1, 2, 3], np.int64), "int64 PCM has no standard full scale"),
    (np.array([True, False]), "PCM must be float"),
])
def test_pcm_that_cannot_be_read_is_refused(pcm, message):
    with pytest.raises(UsageError, match=message):
        log_mel(pcm)


def test_float_pcm_within_range_passes_unchanged():
    pcm = _tone(amp=1.5)                                                   # a hot mix, clipped later by nobody
    assert as_float_pcm(pcm) is pcm
