"""compress_sequence: counts, eval vs training values, the straight-through gradient, bad input."""

from __future__ import annotations

import pytest
import torch

from omnisift_edge.compat import ReferenceAudioSelector, _similarity_pruning
from omnisift_edge.compress.ratio import kept_per_chunk
from omnisift_edge.compress.sequence import compress_sequence
from omnisift_edge.errors import UsageError

from .layouts import IDS, build_layout, tiny_selector


def run(embeds, layout, selector, training=False, rho_video=0.7, rho_audio=0.3, **over):
    args = dict(rho_video=rho_video, rho_audio=rho_audio, audio_token_id=IDS.audio, video_token_id=IDS.video,
                training=training)
    args.update(over)
    return compress_sequence(embeds, layout.input_ids, layout.position_ids, selector, **args)


def audio_chunks(layout, b):
    """Sequence positions of the audio tokens of each chunk of sample b (independent parse)."""
    ids, t = layout.input_ids[b], layout.position_ids[0, b]
    frames = sorted(set(t[ids == IDS.video].tolist()))
    starts = frames[0::2] + [float("inf")]
    audio = (ids == IDS.audio).nonzero().flatten().tolist()
    return [[i for i in audio if starts[c] <= t[i] < starts[c + 1]] for c in range(len(starts) - 1)]


def test_counts_follow_the_ratio_arithmetic(selector):
    layout = build_layout([dict(n_frames=6, grid=(4, 4), n_audio=150), dict(n_frames=6, grid=(4, 4), n_audio=150)])
    embeds = torch.randn(*layout.input_ids.shape, 32)
    out = run(embeds, layout, selector)
    per_chunk = kept_per_chunk(16, 0.7, 0.3)
    assert out.video_kept.tolist() == [3 * per_chunk.video] * 2
    assert out.audio_kept.tolist() == [3 * per_chunk.audio] * 2
    assert out.keep_mask[layout.input_ids != IDS.video].sum() == (layout.input_ids != IDS.video).sum() - 2 * 3 * (50 - 35)
    assert out.keep_mask.dtype == torch.bool


def test_eval_returns_the_input_and_training_matches_the_reference_values(selector):
    layout = build_layout([dict(n_frames=5, grid=(2, 3), n_audio=120), dict(n_frames=4, grid=(2, 3), n_audio=90)])
    embeds = torch.randn(*layout.input_ids.shape, 32)
    evaluated = run(embeds, layout, selector)
    assert evaluated.inputs_embeds is embeds
    trained = run(embeds, layout, selector, training=True)
    assert torch.equal(trained.keep_mask, evaluated.keep_mask)
    reference = ReferenceAudioSelector(32, 4, 1, 16)
    reference.load_state_dict(selector.state_dict())
    theirs, mask, video_count, audio_count = _similarity_pruning(
        reference.eval(), embeds.clone(), layout.input_ids, IDS.audio, IDS.video, layout.position_ids, 0.3, 0.7)
    assert torch.equal(mask, evaluated.keep_mask)
    assert (video_count, audio_count) == (int(evaluated.video_kept.sum()), int(evaluated.audio_kept.sum()))
    torch.testing.assert_close(trained.inputs_embeds, theirs, rtol=0, atol=1e-6)
    # forward values: kept tokens equal the input up to the STE's rounding of (1 - s) + s
    kept = evaluated.keep_mask
    torch.testing.assert_close(trained.inputs_embeds[kept], embeds[kept], rtol=0, atol=1e-6)
    assert not torch.equal(trained.inputs_embeds, embeds)   # dropped audio is scaled to ~0


def test_straight_through_gradient_is_the_documented_formula():
    selector = tiny_selector(seed=5).train()
    captured = {}
    forward = selector.forward

    def capture(*args, **kw):
        scores = forward(*args, **kw)
        scores.retain_grad()
        captured["scores"] = scores
        return scores

    selector.forward = capture
    layout = build_layout([dict(n_frames=5, grid=(2, 3), n_audio=130), dict(n_frames=4, grid=(2, 2), n_audio=101)],
                          pad_left=(False, True))
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(*layout.input_ids.shape, 32, generator=gen)
    out = run(embeds, layout, selector, training=True)
    out.inputs_embeds.retain_grad()
    compressed = out.inputs_embeds[out.keep_mask]                              # what the LLM sees
    weights = torch.randn(compressed.shape, generator=gen)
    loss = (torch.tanh(compressed) * weights).sum()                            # any loss on the compressed sequence
    loss.backward()
    grad_x = out.inputs_embeds.grad                                            # dL/dx on the full layout
    scores_grad = captured["scores"].grad                                      # [C, A]
    row = 0
    for b in range(2):
        for positions in audio_chunks(layout, b):
            expected = torch.zeros(scores_grad.shape[1])
            if len(positions) > 1:
                for j, p in enumerate(positions):
                    kept = bool(out.keep_mask[b, p])
                    expected[j] = (grad_x[b, p] * embeds[b, p]).sum() if kept else 0.0
                    assert kept or grad_x[b, p].abs().sum() == 0      # dropped tokens get nothing
            torch.testing.assert_close(scores_grad[row], expected, rtol=1e-5, atol=1e-6)
            assert len(positions) <= 1 or scores_grad[row].abs().sum() > 0
            row += 1
    assert row == scores_grad.shape[0]
    assert all(p.grad is not None for p in selector.parameters())


def test_bf16_embeddings_run():
    selector = tiny_selector().to(torch.bfloat16)
    layout = build_layout([dict(n_frames=4, grid=(2, 3), n_audio=100)])
    embeds = torch.randn(*layout.input_ids.shape, 32).to(torch.bfloat16)
    out = run(embeds, layout, selector)
    assert out.video_kept.tolist() == [4 * (6 - 4)] and out.audio_kept.tolist() == [2 * 35]


def test_bad_input_is_a_usage_error(selector):
    layout = build_layout([dict(n_frames=4, grid=(2, 3), n_audio=100)])
    B, L = layout.input_ids.shape
    embeds = torch.randn(B, L, 32)
    video = (layout.input_ids[0] == IDS.video).nonzero().flatten()
    audio = (layout.input_ids[0] == IDS.audio).nonzero().flatten()
    for value, where, match in ((float("nan"), video[3], "NaN"), (float("inf"), audio[7], "Inf"), (3e30, video[0], "too large")):
        bad = embeds.clone()
        bad[0, where, 5] = value
        with pytest.raises(UsageError, match=match):
            run(bad, layout, selector)
    with pytest.raises(UsageError, match="wide"):
        run(torch.randn(B, L, 48), layout, selector)
    with pytest.raises(UsageError, match=r"\[B, L, D\]"):
        run(embeds[0], layout, selector)
    with pytest.raises(UsageError, match=r"\[3, B, L\]"):
        compress_sequence(embeds, layout.input_ids, layout.position_ids[0], selector, rho_video=0.5, rho_audio=0.3,
                          audio_token_id=IDS.audio, video_token_id=IDS.video, training=False)
    with pytest.raises(UsageError, match=r"input_ids"):
        compress_sequence(embeds, layout.input_ids[:, 1:], layout.position_ids, selector, rho_video=0.5,
                          rho_audio=0.3, audio_token_id=IDS.audio, video_token_id=IDS.video, training=False)
    for rho in (1.0, -0.1, 1.5):
        with pytest.raises(UsageError, match="rho_video"):
            run(embeds, layout, selector, rho_video=rho)
        with pytest.raises(UsageError, match="rho_audio"):
            run(embeds, layout, selector, rho_audio=rho)
    with pytest.raises(UsageError, match="no video tokens"):
        run(embeds, layout, selector, video_token_id=IDS.image)
    no_audio = build_layout([dict(n_frames=4, grid=(2, 3), n_audio=100), dict(n_frames=2, grid=(2, 3), n_audio=0)])
    with pytest.raises(UsageError, match="sample 1 has no audio"):
        run(torch.randn(*no_audio.input_ids.shape, 32), no_audio, selector)
    with pytest.raises(UsageError, match="AudioSelector"):
        run(embeds, layout, torch.nn.Linear(32, 1))
