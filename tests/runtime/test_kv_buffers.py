"""numpy KV helpers: the RoPE re-basing is transformers' rotation at the shifted positions."""

from __future__ import annotations

import numpy as np
import pytest

from omnisift_edge.runtime.kv_buffers import compact, inverse_frequencies, rotate_keys


def test_rotation_equals_rope_at_shifted_positions():
    torch = pytest.importorskip("torch")
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import apply_multimodal_rotary_pos_emb

    from omnisift_edge.model import inplace_kv

    hd, theta, sections = 16, 1e6, [2, 3, 3]
    inv = inverse_frequencies(theta, hd)
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((1, 2, 5, hd))                                         # [B, kv, n, hd]
    pos = np.stack([np.arange(5) + 900, np.arange(5) + 905, np.arange(5) + 911])     # [3, n]: rows differ

    def rope(positions):
        freqs = positions[:, None, :, None] * inv[None, None, None, :]               # [3, 1, n, hd/2]
        emb = np.concatenate([freqs, freqs], -1)
        cos, sin = torch.from_numpy(np.cos(emb)), torch.from_numpy(np.sin(emb))
        k = torch.from_numpy(raw)
        return apply_multimodal_rotary_pos_emb(k, k, cos, sin, sections)[1].numpy()

    keys = rope(pos)
    shifted = keys.copy()
    rotate_keys(shifted, 850, inv)
    np.testing.assert_allclose(shifted, rope(pos - 850), atol=1e-9)
    as_torch = torch.from_numpy(keys.copy())
    inplace_kv.rotate_keys(as_torch, 850, torch.from_numpy(inv))
    np.testing.assert_allclose(as_torch.numpy(), shifted, atol=1e-9)


def test_compact_in_place():
    buf = np.arange(2 * 10 * 3, dtype=np.float32).reshape(1, 2, 10, 3)               # [1, kv, M, hd]
    want = np.delete(buf[:, :, :8], np.s_[2:5], axis=2)
    before = buf.ctypes.data
    compact(buf, 2, 5, 8)
    assert buf.ctypes.data == before
    np.testing.assert_array_equal(buf[:, :, :5], want)
    assert not buf[:, :, 5:8].any() and buf[:, :, 8:].all()                          # rows past length untouched
