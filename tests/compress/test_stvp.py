"""STVP: F.cosine_similarity semantics, agreement with the reference loop, exact ties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnisift_edge.compress.stvp import cosine_from_dots, frame_scores, rowdot, stvp_keep
from omnisift_edge.errors import UsageError


def reference_keep(frames: torch.Tensor, k_v: int) -> torch.Tensor:
    """The authors' per-chunk video pruning: F.cosine_similarity and torch.topk."""
    B, Fr, n_p, _ = frames.shape
    keep = torch.ones(B, Fr, n_p, dtype=torch.bool)
    for b in range(B):
        f1 = frames[b, 0]
        if k_v > 0:
            sim = F.cosine_similarity(f1, f1.mean(dim=0, keepdim=True), dim=-1)
            keep[b, 0, torch.topk(sim, k_v).indices] = False
            if Fr == 2:
                sim = F.cosine_similarity(f1, frames[b, 1], dim=-1)
                keep[b, 1, torch.topk(sim, k_v).indices] = False
    return keep


@pytest.mark.parametrize("d", [7, 64, 256])
def test_cosine_matches_torch(d):
    gen = torch.Generator().manual_seed(d)
    x, y = torch.randn(50, d, generator=gen), torch.randn(50, d, generator=gen)
    x[0] = 0                       # zero vector
    x[1], y[1] = 0, 0              # both zero
    x[2] *= 1e-10                  # norm below eps
    x[3] *= 1e-9
    y[3] *= 1e-9                   # both below eps
    y[4] = 3 * x[4]                # parallel
    y[5] = -x[5]                   # opposite
    ours = cosine_from_dots(rowdot(x, y), rowdot(x, x), rowdot(y, y))
    torch.testing.assert_close(ours, F.cosine_similarity(x, y, dim=-1), rtol=0, atol=3e-7)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("frames_per_chunk", [1, 2])
def test_matches_reference_on_random_frames(seed, frames_per_chunk):
    gen = torch.Generator().manual_seed(seed)
    n_p, d = (12, 20) if seed % 2 else (64, 48)
    frames = torch.randn(3, frames_per_chunk, n_p, d, generator=gen)
    frames[:, -1] += 0.5 * frames[:, 0]   # a correlated second frame
    for k_v in (0, 1, n_p // 2, n_p - 1):
        assert torch.equal(stvp_keep(frames, k_v), reference_keep(frames, k_v))


@pytest.mark.parametrize("n_p, d", [(5, 7), (17, 64), (256, 96)])
def test_identical_frames_tie_and_drop_lowest_indices(n_p, d):
    gen = torch.Generator().manual_seed(n_p)
    f1 = torch.randn(2, n_p, d, generator=gen)
    frames = torch.stack((f1, f1.clone()), dim=1)               # static camera
    spatial, temporal, _, _ = frame_scores(frames[:, 0], frames[:, 1])
    assert (temporal == 1.0).all()                               # exact, not within an ulp
    k_v = int(n_p * 0.7)
    keep = stvp_keep(frames, k_v)
    assert keep[:, 1].tolist() == [[i >= k_v for i in range(n_p)]] * 2
    assert torch.equal(keep[:, 0], reference_keep(frames, k_v)[:, 0])   # frame 1 is not tied


@pytest.mark.parametrize("n_p, d", [(5, 7), (17, 64), (100, 96)])
def test_black_and_uniform_frames_tie_and_drop_lowest_indices(n_p, d):
    k_v = n_p // 2
    expected = [[i >= k_v for i in range(n_p)]] * 2
    black = torch.zeros(1, 2, n_p, d)
    assert stvp_keep(black, k_v)[0].tolist() == expected
    token = torch.randn(d)
    uniform = token.expand(1, 2, n_p, d).contiguous()          # every token the same
    spatial, temporal, _, _ = frame_scores(uniform[:, 0], uniform[:, 1])
    assert (spatial == spatial[0, 0]).all() and (temporal == 1.0).all()
    assert stvp_keep(uniform, k_v)[0].tolist() == expected


def test_padded_frames_use_only_valid_tokens_for_the_mean():
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(1, 9, 16, generator=gen)
    valid = torch.tensor([[True] * 6 + [False] * 3])
    spatial, _, _, _ = frame_scores(frames, None, valid, torch.tensor([6]))
    f1 = frames[0, :6]
    torch.testing.assert_close(spatial[0, :6], F.cosine_similarity(f1, f1.mean(0, keepdim=True), dim=-1))


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError, match=r"\[B, F, n_p, D\]"):
        stvp_keep(torch.zeros(2, 3, 4, 5), 1)
    with pytest.raises(UsageError, match=r"\[B, F, n_p, D\]"):
        stvp_keep(torch.zeros(3, 4, 5), 1)
    with pytest.raises(UsageError, match="k_v"):
        stvp_keep(torch.zeros(1, 2, 4, 5), 4)
    bad = torch.zeros(1, 2, 4, 5)
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(UsageError, match="NaN"):
        stvp_keep(bad, 1)
    bad[0, 1, 2, 3] = float("inf")
    with pytest.raises(UsageError, match="Inf"):
        stvp_keep(bad, 1)
