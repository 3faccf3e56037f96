"""Context policies: the window's bookkeeping, RoPE re-basing, and sliding streams on the torch backend."""

from __future__ import annotations

import numpy as np
import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.context import (
    ContextFullError,
    ContextPolicy,
    KVWindow,
    drop_tokens,
    inv_freq,
    rotate_keys,
)


def _rope(x, position, freqs):
    """x [..., hd] rotated to `position` the way transformers' rotate_half RoPE does (float64)."""
    angle = position * freqs
    cos, sin = np.concatenate([np.cos(angle)] * 2), np.concatenate([np.sin(angle)] * 2)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def test_rotation_rebases_a_roped_key():
    rng = np.random.default_rng(0)
    freqs = inv_freq(1e6, 16)
    k = rng.normal(size=(1, 2, 5, 16))
    for position, delta in [(30000, 29000), (17, 40), (5, 0)]:
        got = rotate_keys(_rope(k, position, freqs), delta, freqs)
        np.testing.assert_allclose(got, _rope(k, position - delta, freqs), atol=1e-9)
    assert rotate_keys(k.astype(np.float32), 3, freqs).dtype == np.float32
    cache = np.arange(2 * 6).reshape(1, 1, 6, 2)
    assert drop_tokens(cache, 1, 3)[0, 0, :, 0].tolist() == [0, 6, 8, 10]


def _pos(t0, n):
    return np.repeat(np.arange(t0, t0 + n)[None], 3, axis=0)


def test_sliding_evicts_oldest_whole_segments_and_keeps_the_prompt():
    w = KVWindow(ContextPolicy("sliding", window_seconds=6), max_context=100, seconds_per_chunk=2)
    assert w.window_chunks == 3
    w.record("pinned", 10, _pos(0, 10))
    for c in range(3):
        assert w.make_room(20, "chunk") == []
        w.record("chunk", 20, _pos(11 + 50 * c, 20))
    assert w.make_room(20, "chunk") == [(10, 30)]              # the 4th chunk evicts the 1st (3-chunk window)
    w.record("chunk", 20, _pos(161, 20))
    w.record("text", 5, _pos(300, 5))                          # a question...
    assert w.make_room(1, "text") == []
    w.record("text", 1, _pos(305, 1))                          # ...and its answer extend one text segment
    assert [s.kind for s in w.segments] == ["pinned", "chunk", "chunk", "chunk", "text"]
    assert w.make_room(50, "text") == [(10, 30), (10, 30)]     # 76 + 50 > 100: the two oldest chunks leave
    assert [(s.kind, s.start, s.stop) for s in w.segments] == [("pinned", 0, 10), ("chunk", 10, 30), ("text", 30, 36)]
    assert w.evicted_chunks == 3
    # a follow-up extends the question/answer run (6 tokens), which it cannot evict: 100 - 10 - 6 = 84
    before = [(s.kind, s.start, s.stop) for s in w.segments]
    with pytest.raises(UsageError, match="longer than the window's 84 .*question and answer being written"):
        w.make_room(85, "text", "question")
    assert [(s.kind, s.start, s.stop) for s in w.segments] == before and w.evicted_chunks == 3   # nothing changed
    w.check_fits(84, "question")
    assert w.make_room(84, "text") == [(10, 30)]
    assert w.room("chunk") == 90                               # a chunk may evict the text run too
    with pytest.raises(UsageError, match="longer than the window's 90"):
        w.check_fits(91, "chunk", "chunk")
    w.record("text", 84, _pos(400, 84))                        # the follow-up, now [10, 100): a full window
    assert w.make_room(80, "turn") == [(10, 100)]              # a new turn evicts the finished run
    w.record("turn", 80, _pos(484, 80))
    w.record("turn", 2, _pos(564, 2))                          # a turn never extends the text before it
    assert [(s.kind, s.start, s.stop) for s in w.segments] == [("pinned", 0, 10), ("text", 10, 90), ("text", 90, 92)]


def test_rebase_under_each_policy():
    w = KVWindow(ContextPolicy("sliding", position_limit=400), max_context=1000, seconds_per_chunk=2)
    w.record("pinned", 10, _pos(0, 10))                        # prompt at 0..9: media starts at 10
    for c in range(6):
        w.record("chunk", 20, _pos(10 + 50 * c, 20))
    assert w.rebase_delta(399) == 0
    w.segments.pop(1)                                          # as if chunk 0 was evicted
    assert w.rebase_delta(400) == 50                           # chunk 1 then starts where chunk 0 did
    w.rebased(50)
    assert w.rebase_delta(449) == 0
    stuck = KVWindow(ContextPolicy("error", position_limit=400), max_context=1000, seconds_per_chunk=2)
    stuck.record("pinned", 10, _pos(0, 10))
    stuck.record("chunk", 20, _pos(10, 20))
    with pytest.raises(ContextFullError, match="trained range of 400 positions.*--context-policy sliding"):
        stuck.rebase_delta(400)


@pytest.mark.parametrize("kwargs, match", [
    (dict(policy="fifo"), "--context-policy must be one of error, sliding"),
    (dict(policy="sliding", window_seconds=1.5), "at least one 2-second chunk"),
    (dict(policy="error", window_seconds=10), "applies to --context-policy sliding"),
    (dict(policy="sliding", position_limit=3), "at least 64"),
])
def test_bad_policies(kwargs, match):
    with pytest.raises(UsageError, match=match):
        ContextPolicy(**kwargs)


# -- the torch backend ----------------------------------------------------------------------------

def _sliding_stream(model, seconds, *, window, position_limit, seed=2):
    torch = pytest.importorskip("torch")
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.runtime.torch_pipeline import CompressionConfig, TorchStream
    from tests.helpers import clip_features as _features

    features = _features(model, seconds, seed=seed)
    pieces = build_prompt(model.tokenizer, "What now?", system="Be brief.")   # a short prompt: positions from ~15
    t, h, w = features.grid_thw
    policy = ContextPolicy("sliding", window_seconds=window, position_limit=position_limit)
    stream = TorchStream(model, pieces.prefix_ids, grid_hw=(h, w), compression=CompressionConfig.for_ratio(0.35, 6),
                         context=policy)
    lengths = []
    with torch.inference_mode():
        for j, g0 in enumerate(range(0, t, 2)):
            stream.push(features.pixel_values[g0 * h * w:(g0 + 2) * h * w], 2, features.mel[:, j * 200:(j + 1) * 200])
            lengths.append(stream.kv_length())
    tokens = list(stream.ask(pieces.suffix_ids, max_new_tokens=4))
    return stream, lengths, tokens


def test_torch_rebased_stream_gives_the_same_logits(tiny_model):
    """20 s under a 6 s window: positions reach ~560; a 260-position limit forces re-basing."""
    plain, lengths, tokens = _sliding_stream(tiny_model, 20.0, window=6, position_limit=32768)
    rebased, _, rebased_tokens = _sliding_stream(tiny_model, 20.0, window=6, position_limit=260)
    assert plain.window.base == 0 and rebased.window.base > 0              # re-based at least once
    assert len(set(lengths[3:])) == 1 and lengths[2] == lengths[-1]        # flat from the 3rd chunk on
    assert plain.window.evicted_chunks == 10 - 3
    np.testing.assert_allclose(rebased.question_logits.numpy(), plain.question_logits.numpy(), atol=2e-4, rtol=1e-4)
    assert rebased_tokens == tokens
    assert rebased.layout.next_position == plain.layout.next_position      # positions are not re-indexed


def test_torch_error_policy_refuses_positions_past_the_limit(tiny_model):
    torch = pytest.importorskip("torch")
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.runtime.torch_pipeline import TorchStream
    from tests.helpers import clip_features as _features

    features = _features(tiny_model, 8.0)
    t, h, w = features.grid_thw
    stream = TorchStream(tiny_model, build_prompt(tiny_model.tokenizer, "Q", system="S").prefix_ids, grid_hw=(h, w),
                         compression=None, context=ContextPolicy("error", position_limit=120))
    with torch.inference_mode(), pytest.raises(ContextFullError, match="trained range of 120"):
        for j, g0 in enumerate(range(0, t, 2)):
            stream.push(features.pixel_values[g0 * h * w:(g0 + 2) * h * w], 2, features.mel[:, j * 200:(j + 1) * 200])
    assert len(stream.reports) == 2 and stream.full              # chunk 2 would reach position ~160
