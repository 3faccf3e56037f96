"""DeviceKV's bookkeeping (runtime/kv_cache.py's protocol) (packed [1, kv, length, hd] per buffer), over host memory standing in for CUDA."""

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
    feeds = kv.bind()
    presents = [np.concatenate([np.array(feeds[name]), rng.standard_normal((1, 2, n, 4)).astype(np.float32)], axis=2)
                for name in NAMES]
    kv.append(n, dict(zip(PRESENT, presents)))
    return presents


def test_feeds_take_drop_rotate():
    rng = np.random.default_rng(0)
    inv = inverse_frequencies(1e6, 4)
    kv = DeviceKV(NAMES, PRESENT, kv_heads=2, head_dim=4, capacity=10, float_type=np.float32, memory=_HostMemory(),
                  inv_freq=inv)
    assert all(v.shape == (1, 2, 0, 4) for v in kv.bind().values())               # an empty past first
    _grow(kv, rng, 3)
    presents = _grow(kv, rng, 4)
    assert kv.length == 7
    for name, want in zip(NAMES, presents):
        np.testing.assert_array_equal(kv.bind()[name], want)                       # packed, as the engine wrote it
    kv.drop(1, 3)
    for name, want in zip(NAMES, presents):
        np.testing.assert_array_equal(kv.bind()[name], np.delete(want, np.s_[1:3], axis=2))
    before = {name: np.array(v) for name, v in kv.bind().items()}
    kv.rotate(50)
    expect = before[NAMES[0]].copy()
    rotate_keys(expect, 50, inv)
    np.testing.assert_allclose(kv.bind()[NAMES[0]], expect, rtol=1e-6)
    np.testing.assert_array_equal(kv.bind()[NAMES[1]], before[NAMES[1]])           # values carry no position
    with pytest.raises(UsageError, match="KV cache holds 10 tokens"):
        _grow(kv, rng, 6)
    with pytest.raises(UsageError, match="cannot drop"):
        kv.drop(3, 9)


def test_static_cache_reset_keeps_its_buffers():
    from omnisift_edge.runtime.kv_cache import KVCache
    from omnisift_edge.runtime.trt_kv import StaticDeviceKV

    kv = StaticDeviceKV(NAMES, PRESENT, kv_heads=2, head_dim=4, capacity=6, float_type=np.float32, memory=_HostMemory())
    assert isinstance(kv, KVCache)
    kv.bind()[NAMES[0]][:, :, :3] = 1                   # as if the engine wrote rows [0, 3)
    kv.append(3, {p: kv.bind()[n] for n, p in zip(NAMES, PRESENT)})   # presents alias the past buffers
    storage = {n: b.ctypes.data for n, b in kv.buffers.items()}
    kv.reset()
    assert kv.length == 0 and {n: b.ctypes.data for n, b in kv.buffers.items()} == storage
    assert not kv.buffers[NAMES[0]].any()                              # the valid rows were zeroed
    with pytest.raises(UsageError, match="KV cache holds 6 tokens"):
        kv.reserve(7)
