"""The deterministic hard top-k: both implementations, the tie rule, per-row k, bad input."""

from __future__ import annotations

import pytest
import torch

from omnisift_edge.compress.select import compact_indices, rank, select_indices, select_mask
from omnisift_edge.errors import UsageError


def brute_force(row: list[float], k: int) -> list[int]:
    """The rule in plain Python: highest first, lower index first among equal scores."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))
    return sorted(order[:k])


def tied_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    return [
        torch.full((3, 17), 0.25),                                            # all equal
        torch.zeros(2, 40),                                                   # zeros (black frames)
        torch.randint(0, 3, (4, 33), generator=gen).float(),                  # many repeats
        torch.tensor([[0.0, -0.0, 1.0, -0.0, 0.0, 1.0, -1.0, 0.0]]),          # signed zeros
        torch.tensor([[float("-inf"), 2.0, float("-inf"), 2.0, 1.0]]),        # padding scores
        torch.randint(0, 4, (2, 300), generator=gen).to(torch.bfloat16),      # long rows, low precision
    ]


@pytest.mark.parametrize("seed", range(3))
def test_both_paths_agree_with_each_other_and_the_rule(seed):
    gen = torch.Generator().manual_seed(seed)
    cases = [torch.randn(5, n, generator=gen) for n in (1, 2, 7, 64, 200)] + tied_inputs(gen)
    for scores in cases:
        n = scores.shape[-1]
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n} - {-1}):
            pair = select_mask(scores, k, method="pairwise")
            sort = select_mask(scores, k, method="sort")
            assert torch.equal(pair, sort), (scores, k)
            assert torch.equal(select_indices(scores, k, method="pairwise"), select_indices(scores, k, method="sort"))
            assert torch.equal(rank(scores, method="pairwise"), rank(scores, method="sort"))
            for r in range(scores.shape[0]):
                expected = brute_force(scores[r].float().tolist(), k)
                assert pair[r].nonzero().flatten().tolist() == expected
                assert select_indices(scores, k)[r].tolist() == expected


def test_tie_rule_examples():
    assert select_indices(torch.full((1, 6), 3.0), 2).tolist() == [[0, 1]]
    assert select_indices(torch.zeros(1, 6), 4).tolist() == [[0, 1, 2, 3]]
    assert select_indices(torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]]), 2).tolist() == [[1, 2]]
    assert select_indices(torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]]), 4).tolist() == [[1, 2, 3, 4]]
    # -0.0 and 0.0 are equal: index order decides
    assert select_indices(torch.tensor([[-0.0, 0.0, -1.0]]), 1).tolist() == [[0]]
    assert select_indices(torch.tensor([[0.0, -0.0, -1.0]]), 1).tolist() == [[0]]


def test_indices_are_ascending_not_by_score():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3]])
    assert select_indices(scores, 3).tolist() == [[1, 2, 3]]
    assert select_indices(scores, 3, method="sort").tolist() == [[1, 2, 3]]


def test_per_row_k():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (4, 2, 9), generator=gen).float()
    k = torch.tensor([[0, 9], [3, 3], [5, 1], [2, 8]])
    for method in ("pairwise", "sort"):
        mask = select_mask(scores, k, method=method)
        for i in range(4):
            for j in range(2):
                assert mask[i, j].sum() == k[i, j]
                assert mask[i, j].nonzero().flatten().tolist() == brute_force(scores[i, j].tolist(), int(k[i, j]))
    # a k per leading row broadcasts over the inner dim
    assert select_mask(scores, torch.tensor([1, 2, 3, 4]).view(4, 1)).sum(-1).tolist() == [[1, 1], [2, 2], [3, 3], [4, 4]]


def test_compact_indices_is_order_preserving_and_static():
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    assert compact_indices(mask, 3).tolist() == [[1, 3, 4], [0, 1, 2]]   # short rows continue with False slots
    assert compact_indices(mask, 0).shape == (2, 0)


def test_nan_and_bad_k_are_usage_errors():
    with pytest.raises(UsageError, match="NaN"):
        select_mask(torch.tensor([[0.1, float("nan")]]), 1)
    with pytest.raises(UsageError, match="NaN"):
        select_indices(torch.tensor([float("nan")]), 1)
    with pytest.raises(UsageError, match="k must"):
        select_indices(torch.zeros(1, 4), 5)
    with pytest.raises(UsageError, match="every k"):
        select_mask(torch.zeros(2, 4), torch.tensor([1, 5]))
    with pytest.raises(UsageError, match="Python int"):
        select_indices(torch.zeros(2, 4), torch.tensor(1))
    with pytest.raises(UsageError, match="method"):
        select_mask(torch.zeros(4), 1, method="fast")
    with pytest.raises(UsageError, match="floating"):
        select_mask(torch.arange(4), 1)


def test_identical_tokens_share_the_first_ones_score():
    from omnisift_edge.compress.select import share_identical_scores

    tokens = torch.randn(2, 6, 5)
    tokens[0, 4] = tokens[0, 1]            # 1 and 4 identical
    tokens[0, 5] = tokens[0, 1]
    tokens[1, 3] = tokens[1, 0]
    scores = torch.arange(12, dtype=torch.float32).view(2, 6) + 0.5
    out = share_identical_scores(scores, tokens)
    expected = scores.clone()
    expected[0, 4] = expected[0, 5] = scores[0, 1]
    expected[1, 3] = scores[1, 0]
    assert torch.equal(out, expected)
    near = tokens.clone()
    near[0, 4] += 1e-6                      # not bitwise identical: keeps its own score
    assert share_identical_scores(scores, near)[0, 4] == scores[0, 4]
