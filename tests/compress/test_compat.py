"""Migration: our vectorized mask == the authors' loop, and our tie rule where their topk guesses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnisift_edge.compat import ReferenceAudioSelector, reference_keep_mask, reference_loop_keep_mask
from omnisift_edge.compress import sequence

from .layouts import IDS, build_layout, tiny_selector

LAYOUTS = {
    "equal_b2": ([dict(n_frames=4, grid=(2, 3), n_audio=100)] * 2, None),
    "padded_b2": ([dict(n_frames=5, grid=(2, 3), n_audio=130), dict(n_frames=4, grid=(3, 3), n_audio=90)], (False, True)),
    "audio_longer": ([dict(n_frames=4, grid=(3, 4), n_audio=180, prefix=5)], None),
    "audio_shorter": ([dict(n_frames=6, grid=(2, 2), n_audio=60), dict(n_frames=4, grid=(2, 2), n_audio=51)], None),
    "odd_frames_b3": ([dict(n_frames=3, grid=(4, 4), n_audio=75), dict(n_frames=1, grid=(2, 3), n_audio=20),
                       dict(n_frames=7, grid=(1, 5), n_audio=170, suffix=9)], (True, False, True)),
}
RHOS = [(0.7, 0.3), (0.5, 0.5), (0.0, 0.0), (0.9, 0.1)]


@pytest.fixture(params=["by_chunk", "batched"])
def scoring(request, monkeypatch):
    """Run each test through both STVP scoring routes (CPU picks by_chunk, GPUs batched)."""
    monkeypatch.setattr(sequence, "_batched_scoring", lambda device: request.param == "batched")
    return request.param


def kwargs(rho_video, rho_audio):
    return dict(num_heads=4, audio_token_id=IDS.audio, video_token_id=IDS.video, rho_video=rho_video, rho_audio=rho_audio)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("seed", range(3))
def test_vectorized_mask_equals_the_reference_loop(name, seed, scoring):
    samples, pad_left = LAYOUTS[name]
    layout = build_layout(samples, pad_left)
    B, L = layout.input_ids.shape
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(B, L, 32, generator=gen)
    state = tiny_selector(seed=seed).state_dict()
    before = embeds.clone()
    for rho_v, rho_a in RHOS:
        ours = reference_keep_mask(embeds, layout.input_ids, layout.position_ids, state, **kwargs(rho_v, rho_a))
        theirs = reference_loop_keep_mask(embeds, layout.input_ids, layout.position_ids, state, **kwargs(rho_v, rho_a))
        assert ours.dtype == torch.bool and ours.shape == (B, L)
        assert torch.equal(ours, theirs), (name, rho_v, rho_a)
        if rho_v > 0:
            assert not ours.all()
    assert torch.equal(embeds, before)   # neither path writes into the caller's embeddings


def brute_force_mask(embeds, layout, state, rho_v, rho_a):
    """The method in plain Python with the tie rule: scores rounded to 5 decimals, sorted by (-score, index)."""
    selector = ReferenceAudioSelector(32, 4, 1, 16)
    selector.load_state_dict(state)
    selector.eval()
    B, L = layout.input_ids.shape
    keep = torch.ones(B, L, dtype=torch.bool)

    def top(scores, k):
        values = [round(float(s), 5) for s in scores]
        return sorted(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])

    for b in range(B):
        ids, t = layout.input_ids[b].tolist(), layout.position_ids[0, b].tolist()
        video = [i for i in range(L) if ids[i] == IDS.video]
        audio = [i for i in range(L) if ids[i] == IDS.audio]
        frames = sorted({t[i] for i in video})
        for c in range(0, len(frames), 2):
            start = frames[c]
            end = frames[c + 2] if c + 2 < len(frames) else float("inf")
            f1 = [i for i in video if t[i] == start]
            f2 = [i for i in video if len(frames) > c + 1 and t[i] == frames[c + 1]]
            k_v = int(len(f1) * rho_v)
            x1 = embeds[b, f1]
            for j in top(F.cosine_similarity(x1, x1.mean(0, keepdim=True), dim=-1), k_v):
                keep[b, f1[j]] = False
            if len(f2) == len(f1):
                for j in top(F.cosine_similarity(x1, embeds[b, f2], dim=-1), k_v):
                    keep[b, f2[j]] = False
            a = [i for i in audio if start <= t[i] < end]
            ctx = [i for i in f1 + f2 if keep[b, i]]
            if ctx and len(a) > 1:
                with torch.no_grad():
                    scores = selector(embeds[b, ctx], embeds[b, a])
                kept = set(top(scores, len(a) - int(len(a) * rho_a)))
                for j, i in enumerate(a):
                    keep[b, i] = j in kept
    return keep


@pytest.mark.parametrize("seed", range(3))
def test_ties_follow_the_rule(seed, scoring):
    """Static camera (frame 2 == frame 1), black chunks, silence (identical audio in a chunk)."""
    layout = build_layout([dict(n_frames=6, grid=(3, 4), n_audio=150), dict(n_frames=5, grid=(3, 4), n_audio=140)])
    input_ids, t = layout.input_ids, layout.position_ids[0]
    B, L = input_ids.shape
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(B, L, 32, generator=gen)
    for b in range(B):
        video = (input_ids[b] == IDS.video).nonzero().flatten()
        frames = sorted(set(t[b, video].tolist()))
        per_frame = [video[t[b, video] == f] for f in frames]
        for c in range(0, len(frames) - 1, 2):
            embeds[b, per_frame[c + 1]] = embeds[b, per_frame[c]]          # static camera in every chunk
        for f in per_frame[2:4]:
            embeds[b, f] = 0.0                                             # a black chunk
        audio = (input_ids[b] == IDS.audio).nonzero().flatten()
        silent = audio[(t[b, audio] >= frames[0] + 100) & (t[b, audio] < frames[0] + 150)]
        embeds[b, silent] = embeds[b, silent[0]].clone()                   # silence in chunk 2
    state = tiny_selector(seed=seed).state_dict()
    for rho_v, rho_a in [(0.7, 0.3), (0.5, 0.5)]:
        ours = reference_keep_mask(embeds, input_ids, layout.position_ids, state, **kwargs(rho_v, rho_a))
        assert torch.equal(ours, brute_force_mask(embeds, layout, state, rho_v, rho_a))
        # spot-check the rule itself: in the silent chunk the first tokens are kept
        start = t[0, input_ids[0] == IDS.video].min()
        silent_keep = ours[0][(input_ids[0] == IDS.audio) & (t[0] >= start + 100) & (t[0] < start + 150)]
        n_keep = 50 - int(50 * rho_a)
        assert silent_keep.tolist() == [True] * n_keep + [False] * (50 - n_keep)


def test_accepts_prefixed_state_and_modules():
    layout = build_layout([dict(n_frames=2, grid=(2, 2), n_audio=50)])
    embeds = torch.randn(1, layout.input_ids.shape[1], 32)
    selector = tiny_selector()
    prefixed = {f"thinker.compressor.{k}": v for k, v in selector.state_dict().items()}
    args = (embeds, layout.input_ids, layout.position_ids)
    plain = reference_keep_mask(*args, selector.state_dict(), **kwargs(0.7, 0.3))
    assert torch.equal(reference_keep_mask(*args, prefixed, **kwargs(0.7, 0.3)), plain)
    assert torch.equal(reference_keep_mask(*args, selector, **kwargs(0.7, 0.3)), plain)
    assert torch.equal(reference_loop_keep_mask(*args, prefixed, **kwargs(0.7, 0.3)), plain)
