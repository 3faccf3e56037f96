"""DeviceKV's bookkeeping (packed [1, kv, length, hd] per buffer), over host memory standing in for CUDA."""

from __future__ import annotations

import numpy as np
import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.kv_buffers import inverse_frequencies, rotate_keys
from omnisift_edge.runtime.trt_kv import DeviceKV
from tests.helpers import HostMemory as _HostMemory

NAMES = ["past_key_values.0.key", "past_key_values.0.value"]
PRESENT = ["present.0.key", "present.0.value"]


def _grow(kv: DeviceKV, rng, n: int) -> list[np.ndarray]:
    """What the engine does: present = past + n new rows; DeviceKV copies it back."""
    feeds = kv.feeds()
    presents = [np.concatenate([np.array(feeds[name]), rng.standard_normal((1, 2, n, 4)).astype(np.float32)], axis=2)
                for name in NAMES]
    kv.take(dict(zip(PRESENT, presents)), n)
    return presents


def test_feeds_take_drop_rotate():
    rng = np.random.default_rng(0)
    kv = DeviceKV(NAMES, PRESENT, kv_heads=2, head_dim=4, capacity=10, float_type=np.float32, memory=_HostMemory())
    assert all(v.shape == (1, 2, 0, 4) for v in kv.feeds().values())               # an empty past first
    _grow(kv, rng, 3)
    presents = _grow(kv, rng, 4)
    assert kv.length == 7
    for name, want in zip(NAMES, presents):
        np.testing.assert_array_equal(kv.feeds()[name], want)                       # packed, as the engine wrote it
    kv.drop(1, 3)
    for name, want in zip(NAMES, presents):
        np.testing.assert_array_equal(kv.feeds()[name], np.delete(want, np.s_[1:3], axis=2))
    before = {name: np.array(v) for name, v in kv.feeds().items()}
    inv = inverse_frequencies(1e6, 4)
    kv.rotate(50, inv)
    expect = before[NAMES[0]].copy()
    rotate_keys(expect, 50, inv)
    np.testing.assert_allclose(kv.feeds()[NAMES[0]], expect, rtol=1e-6)
    np.testing.assert_array_equal(kv.feeds()[NAMES[1]], before[NAMES[1]])           # values carry no position
    with pytest.raises(UsageError, match="KV cache holds 10 tokens"):
        _grow(kv, rng, 6)
    with pytest.raises(UsageError, match="cannot drop"):
        kv.drop(3, 9)
