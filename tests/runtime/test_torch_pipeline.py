"""The PyTorch pipeline: compressed whole-clip forward, streaming, and their equivalence."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.helpers import clip_features  # noqa: E402
from omnisift_edge.model.prompt import build_prompt, followup_ids  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.torch_pipeline import (  # noqa: E402
    ClipFeatures,
    CompressionConfig,
    TorchStream,
    greedy_decode,
    whole_clip_inputs,
    whole_clip_prefill,
)

SIZE = (56, 84)           # 2x3 merged tokens per frame: small, and not square


def _features(model, seconds: float, seed: int = 0, size=SIZE) -> ClipFeatures:
    return clip_features(model, seconds, seed, size)


def _stream(model, features: ClipFeatures, prefix_ids, compression) -> TorchStream:
    """Feed the whole-clip encoder inputs chunk by chunk (same inputs as the whole-clip path)."""
    t, h, w = features.grid_thw
    stream = TorchStream(model, prefix_ids, grid_hw=(h, w), compression=compression)
    per_grid = h * w
    window = model.spec.audio_window_frames
    for j, g0 in enumerate(range(0, t, 2)):
        n_grids = min(2, t - g0)
        pixels = features.pixel_values[g0 * per_grid:(g0 + n_grids) * per_grid]
        stream.push(pixels, n_grids, features.mel[:, j * window:(j + 1) * window])
    return stream


def test_ratio_one_equals_the_plain_thinker(tiny_model):
    features = _features(tiny_model, 5.0)
    pieces = build_prompt(tiny_model.tokenizer, "What happens?")
    with torch.inference_mode():
        plain = tiny_model.thinker(**whole_clip_inputs(tiny_model, features, pieces.prefix_ids,
                                                       pieces.suffix_ids)).logits[:, -1]
    compressed = whole_clip_prefill(tiny_model, features, pieces.prefix_ids, pieces.suffix_ids,
                                    CompressionConfig.for_ratio(1.0, 6))
    assert compressed.keep_mask.all()
    torch.testing.assert_close(compressed.last_logits, plain.float(), rtol=0, atol=0)


def test_quarter_ratio_drops_tokens_and_changes_logits(tiny_model):
    features = _features(tiny_model, 5.0)
    pieces = build_prompt(tiny_model.tokenizer, "What happens?")
    full = whole_clip_prefill(tiny_model, features, pieces.prefix_ids, pieces.suffix_ids, None)
    quarter = whole_clip_prefill(tiny_model, features, pieces.prefix_ids, pieces.suffix_ids,
                                 CompressionConfig(rho_video=0.5, rho_audio=0.3))
    ids = whole_clip_inputs(tiny_model, features, pieces.prefix_ids, pieces.suffix_ids)["input_ids"][0]
    mm = (ids == tiny_model.spec.tokens.video) | (ids == tiny_model.spec.tokens.audio)
    keep = quarter.keep_mask[0]
    assert keep[~mm].all()                                  # text and special tokens always stay
    assert 0 < int(keep[mm].sum()) < int(mm.sum())
    assert quarter.cache.get_seq_length() == int(keep.sum())
    assert full.next_position == quarter.next_position       # decoding continues on the full layout
    assert not torch.allclose(full.last_logits, quarter.last_logits)


@pytest.mark.parametrize("seconds", [4.0, 5.0, 6.5])    # whole chunks, a 1-frame last chunk, partial audio
@pytest.mark.parametrize("ratio", [1.0, 0.25])
def test_streaming_equals_whole_clip(tiny_model, seconds, ratio):
    features = _features(tiny_model, seconds, seed=3)
    pieces = build_prompt(tiny_model.tokenizer, "Describe the sound.")
    compression = CompressionConfig.for_ratio(ratio, tiny_model.spec.tokens_per_frame(*SIZE))
    whole = whole_clip_prefill(tiny_model, features, pieces.prefix_ids, pieces.suffix_ids, compression)
    stream = _stream(tiny_model, features, pieces.prefix_ids, compression)

    # same kept tokens: the kept multimodal positions of both paths are the same columns
    inputs = whole_clip_inputs(tiny_model, features, pieces.prefix_ids, pieces.suffix_ids)
    positions, _ = tiny_model.thinker.get_rope_index(
        inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True,
        inputs["feature_attention_mask"].sum(-1), inputs["video_second_per_grid"])
    ids = inputs["input_ids"][0]
    mm = ((ids == tiny_model.spec.tokens.video) | (ids == tiny_model.spec.tokens.audio)).numpy()
    keep = whole.keep_mask[0].numpy() if whole.keep_mask is not None else np.ones_like(mm)
    whole_kept = positions[:, 0].numpy()[:, keep & mm]                       # [3, K_total]
    stream_kept = np.concatenate(stream.kept_positions, axis=1)              # [3, K_total]
    np.testing.assert_array_equal(stream_kept, whole_kept)
    if ratio < 1:
        assert stream_kept.shape[1] < 0.5 * mm.sum()          # it did compress

    stop = [tiny_model.spec.tokens.im_end]
    stream_tokens = list(stream.ask(pieces.suffix_ids, max_new_tokens=6, stop_ids=stop))
    whole_tokens = list(greedy_decode(tiny_model, whole, max_new_tokens=6, stop_ids=stop))
    torch.testing.assert_close(stream.question_logits, whole.last_logits, rtol=1e-4, atol=1e-4)
    assert stream_tokens == whole_tokens
    assert stream.kv_length() == whole.cache.get_seq_length()


def test_stream_answers_follow_up_questions(tiny_model):
    features = _features(tiny_model, 4.0)
    pieces = build_prompt(tiny_model.tokenizer, "First?")
    stream = _stream(tiny_model, features, pieces.prefix_ids, CompressionConfig.for_ratio(0.35, 6))
    first = list(stream.ask(pieces.suffix_ids, max_new_tokens=3))
    length = stream.kv_length()
    assert len(first) == 3
    follow = followup_ids(tiny_model.tokenizer, "And then?")
    second = list(stream.ask(follow, max_new_tokens=3))
    assert len(second) == 3
    assert stream.kv_length() == length + len(follow) + 3


def test_stream_rejects_wrong_chunk_shapes_and_late_pushes(tiny_model):
    from omnisift_edge.errors import UsageError

    features = _features(tiny_model, 4.0)
    pieces = build_prompt(tiny_model.tokenizer, "Q?")
    t, h, w = features.grid_thw
    stream = TorchStream(tiny_model, pieces.prefix_ids, grid_hw=(h, w), compression=None)
    with pytest.raises(UsageError, match="pixel patches"):
        stream.push(features.pixel_values[:5], 2, features.mel[:, :200])
    with pytest.raises(UsageError, match="no chunk"):
        list(stream.ask(pieces.suffix_ids, max_new_tokens=2))


def test_non_finite_inputs_are_refused(tiny_model):
    from omnisift_edge.errors import UsageError
    from omnisift_edge.model.preprocess import StreamingLogMel

    features = _features(tiny_model, 4.0)
    pieces = build_prompt(tiny_model.tokenizer, "Q?")
    t, h, w = features.grid_thw
    stream = TorchStream(tiny_model, pieces.prefix_ids, grid_hw=(h, w), compression=None)
    mel = features.mel[:, :200].copy()
    mel[3, 7] = np.nan
    with pytest.raises(UsageError, match="NaN or Inf"):
        stream.push(features.pixel_values[: 2 * h * w], 2, mel)
    pcm = np.zeros(32000, np.float32)
    pcm[100] = np.inf
    with pytest.raises(UsageError, match="NaN or Inf"):
        StreamingLogMel(tiny_model.spec).push(pcm)


def test_compressing_restores_the_thinker(tiny_model):
    from omnisift_edge.runtime.torch_pipeline import compressing

    with compressing(tiny_model, CompressionConfig(0.5, 0.3)):
        assert "forward" in vars(tiny_model.thinker.model)
    assert "forward" not in vars(tiny_model.thinker.model)
    assert "forward" not in vars(tiny_model.thinker)


def test_abandoned_answer_keeps_the_layout_in_step(tiny_model):
    """Stopping iteration early must leave positions in step with what the cache holds."""
    features = _features(tiny_model, 4.0)
    pieces = build_prompt(tiny_model.tokenizer, "First?")
    compression = CompressionConfig.for_ratio(0.35, 6)
    abandoned = _stream(tiny_model, features, pieces.prefix_ids, compression)
    answer = abandoned.ask(pieces.suffix_ids, max_new_tokens=5)
    first = [next(answer), next(answer)]
    answer.close()                          # stopped at the 2nd token: only the 1st was fed back
    finished = _stream(tiny_model, features, pieces.prefix_ids, compression)
    assert list(finished.ask(pieces.suffix_ids, max_new_tokens=1)) == first[:1]   # fed its one token
    assert abandoned.kv_length() == finished.kv_length()
    assert abandoned.layout.length == finished.layout.length
    assert abandoned.layout.next_position == finished.layout.next_position
