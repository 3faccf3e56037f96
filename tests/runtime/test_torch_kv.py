"""The PyTorch backend's static KV cache: equals transformers' DynamicCache, written in place."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.export.decoder.checks import gapped_positions  # noqa: E402
from omnisift_edge.runtime.torch_kv import TorchInPlaceCache  # noqa: E402


def _calls(thinker, seed, lengths, start=3):
    rng = np.random.default_rng(seed)
    hidden = thinker.config.text_config.hidden_size
    out = []
    for n in lengths:
        embeds = torch.from_numpy((rng.standard_normal((1, n, hidden)) * 0.5).astype(np.float32))   # [1, n, D]
        positions = gapped_positions(1, n, start=start, rng=rng)[:, 0]                               # [3, n]
        out.append((embeds, positions))
        start = int(positions.max()) + 1
    return out, start


@torch.inference_mode()
def test_static_cache_equals_dynamic_cache(tiny_model):
    from transformers import DynamicCache

    thinker = tiny_model.thinker
    cache = TorchInPlaceCache(thinker, 40)
    storage = [k.data_ptr() for k, _ in cache.buffers]
    reference = DynamicCache(config=thinker.config.text_config)
    calls, _ = _calls(thinker, 0, (11, 6, 1, 1))
    for i, (embeds, positions) in enumerate(calls):
        want = i > 0
        got = cache.step(embeds, positions, want_logits=want)
        ref = thinker.model(inputs_embeds=embeds, position_ids=torch.from_numpy(positions)[:, None],
                            past_key_values=reference, use_cache=True)
        if want:
            torch.testing.assert_close(got, thinker.lm_head(ref.last_hidden_state[:, -1]), atol=1e-5, rtol=1e-4)
        else:
            assert got is None                    # a chunk prefill computes no logits
        for (key, value), layer in zip(cache.buffers, reference.layers):
            torch.testing.assert_close(key[:, :, :cache.length], layer.keys, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(value[:, :, :cache.length], layer.values, atol=1e-5, rtol=1e-4)
            assert not key[:, :, cache.length:].any()
    assert cache.length == 19 and [k.data_ptr() for k, _ in cache.buffers] == storage   # written in place


@torch.inference_mode()
def test_rotate_and_drop(tiny_model):
    thinker = tiny_model.thinker
    hidden_token = thinker.get_input_embeddings()(torch.tensor([[7]]))                 # [1, 1, D]
    plain, rotated = TorchInPlaceCache(thinker, 32), TorchInPlaceCache(thinker, 32)
    calls, start = _calls(thinker, 1, (7, 5), start=3000)
    for embeds, positions in calls:
        plain.step(embeds, positions, False)
        rotated.step(embeds, positions, False)
    rotated.rotate(2990)
    want = plain.step(hidden_token, np.full((3, 1), start), True)
    got = rotated.step(hidden_token, np.full((3, 1), start - 2990), True)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3)
    before = [k[:, :, :rotated.length].clone() for k, _ in rotated.buffers]
    rotated.drop(2, 9)
    for old, (key, _) in zip(before, rotated.buffers):
        torch.testing.assert_close(key[:, :, :rotated.length], torch.cat([old[:, :, :2], old[:, :, 9:]], dim=2))
        assert not key[:, :, rotated.length:].any()


@torch.inference_mode()
def test_capacity(tiny_model):
    thinker = tiny_model.thinker
    calls, _ = _calls(thinker, 2, (6, 6))
    fixed = TorchInPlaceCache(thinker, 8)
    fixed.step(*calls[0], False)
    with pytest.raises(UsageError, match="KV cache holds 8 tokens"):
        fixed.step(*calls[1], False)
    growing = TorchInPlaceCache(thinker, None)
    growing.capacity = 8                      # as if allocated small: doubling keeps the rows
    growing.buffers = [(k[:, :, :8].clone(), v[:, :, :8].clone()) for k, v in growing.buffers]
    growing.step(*calls[0], False)
    kept = growing.buffers[0][0][:, :, :6].clone()
    growing.step(*calls[1], False)
    assert growing.capacity == 16 and growing.length == 12
    torch.testing.assert_close(growing.buffers[0][0][:, :, :6], kept)


@torch.inference_mode()
def test_reset_empties_the_same_buffers(tiny_model):
    from omnisift_edge.runtime.kv_cache import KVCache

    thinker = tiny_model.thinker
    cache = TorchInPlaceCache(thinker, 16)
    assert isinstance(cache, KVCache) and cache.bind() is cache.buffers
    calls, _ = _calls(thinker, 3, (5,))
    cache.step(*calls[0], False)
    storage = [k.data_ptr() for k, _ in cache.buffers]
    assert cache.buffers[0][0][:, :, :5].any()
    cache.reset()
    assert cache.length == 0 and [k.data_ptr() for k, _ in cache.buffers] == storage
    assert not any(buf.any() for pair in cache.buffers for buf in pair)
