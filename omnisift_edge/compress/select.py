"""The one deterministic hard top-k every OmniSIFT selection goes through.

The rule (also in the export manifest as `tie_rule`):

    rank the N scores of a row by score, highest first; among equal scores the lower index comes
    first; select the first k; selected indices are returned in ascending (original) order.

Equal means `==`: `-0.0` equals `0.0`, and `-inf` is an ordinary lowest score (used for padding).
`torch.topk` leaves ties to the backend, and static cameras (identical frames), black frames and
silence produce exact ties, so two backends would keep different tokens; this rule does not.

Two implementations give the same answer (tests prove it on random and tied inputs):

- "pairwise": rank_i = #{j : s_j > s_i or (s_j == s_i and j < i)}; selected = rank < k. Only
  elementwise compares and a sum: static shapes, no NonZero, no boolean indexing, no reliance on a
  backend's TopK tie order. O(N^2) memory per row: what the exported per-chunk graph uses.
- "sort": a stable descending `torch.sort`, whose order is exactly the rule. O(N log N): the fast
  path for large N in eager PyTorch. `method="auto"` takes it for N > PAIRWISE_MAX_N.

Selected indices come out ascending through an order-preserving gather: a TopK over the keys
`2N - i` (selected) / `N - i` (not selected), which are all distinct, so any backend's TopK
returns the same indices.

NaN has no place in a ranking: the public entry points raise UsageError on NaN scores
(`check=True`, one host sync). Callers that validated their inputs already (the compressor, a
traced graph) pass `check=False`; with NaN there the result is deterministic but meaningless.
"""

from __future__ import annotations

import warnings

import torch

from omnisift_edge.errors import UsageError

PAIRWISE_MAX_N = 16   # "auto": pairwise up to this row length, stable sort above (sort is faster in eager from ~8)
METHODS = ("auto", "pairwise", "sort")


def rank(scores: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
    """Position of each score in the rule's order (0 = selected first), int64 [..., N]."""
    method = _resolve(method, scores.shape[-1])
    if method == "pairwise":
        return _rank_pairwise(scores)
    return _rank_sort(scores)


def select_mask(
    scores: torch.Tensor, k: int | torch.Tensor, *, method: str = "auto", check: bool = True
) -> torch.Tensor:
    """Bool [..., N]: True for the k selected scores of each row under the tie rule.

    `k` is an int or an int64 tensor broadcastable to the leading dims `scores.shape[:-1]` (a
    per-row k, e.g. chunks with different audio counts). k = 0 selects nothing, k = N everything.
    """
    if check:
        _check_scores(scores)
        _check_k(k, scores.shape[-1])
    r = rank(scores, method=method)                                   # [..., N]
    if isinstance(k, torch.Tensor):
        return r < k.to(device=r.device, dtype=r.dtype).unsqueeze(-1)  # per-row k
    return r < k


def select_indices(
    scores: torch.Tensor, k: int, *, method: str = "auto", check: bool = True
) -> torch.Tensor:
    """Int64 [..., k]: indices of the k selected scores of each row, in ascending order."""
    if check:
        _check_scores(scores)
        if isinstance(k, torch.Tensor) or isinstance(k, bool):
            raise UsageError("select_indices needs a Python int k (the output shape); use select_mask for per-row k")
        _check_k(k, scores.shape[-1])
    if _resolve(method, scores.shape[-1]) == "sort":
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices   # [..., N]
        return torch.sort(order[..., :k], dim=-1).values                            # [..., k]
    return compact_indices(_rank_pairwise(scores) < k, k)


def compact_indices(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Int64 [..., k]: the positions of the True entries of `mask` [..., N], ascending.

    Rows with fewer than k True entries continue with their False positions, ascending; rows with
    more are cut after the first k. Static shapes, no NonZero: a TopK over distinct keys.
    """
    n = mask.shape[-1]
    if not 0 <= k <= n:
        raise UsageError(f"k must be in [0, {n}]; got {k}")
    if n > 1 << 23:   # float32 keys are exact integers up to 2^24
        raise UsageError(f"rows of {n} entries are too long for compact_indices (limit {1 << 23})")
    desc = torch.arange(n, 0, -1, device=mask.device, dtype=torch.float32)   # [N]  N - i
    key = torch.where(mask, desc + n, desc)                                   # [..., N]  all distinct
    return torch.topk(key, k, dim=-1, largest=True, sorted=True).indices      # [..., k]


def _rank_pairwise(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[-1]
    s_i = scores.unsqueeze(-1)                                     # [..., N, 1]
    s_j = scores.unsqueeze(-2)                                     # [..., 1, N]
    idx = torch.arange(n, device=scores.device)
    j_before_i = idx.unsqueeze(0) < idx.unsqueeze(1)               # [N(i), N(j)]
    ahead = (s_j > s_i) | ((s_j == s_i) & j_before_i)              # [..., N(i), N(j)]
    # counted in float32 (exact: N < 2^24), not int64: the traced graph's Cast + ReduceSum over [..., N, N] in
    # int64 moves twice the bytes through a slower reduction kernel (ONNX Runtime), most of all at a batch of chunks
    return ahead.to(torch.float32).sum(dim=-1).to(torch.int64)     # [..., N] int64


def _rank_sort(scores: torch.Tensor) -> torch.Tensor:
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices   # [..., N]
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)              # [..., N]


def _resolve(method: str, n: int) -> str:
    if method not in METHODS:
        raise UsageError(f"method must be one of {METHODS}; got {method!r}")
    if method == "auto":
        return "pairwise" if n <= PAIRWISE_MAX_N else "sort"
    return method


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() < 1:
        raise UsageError("scores must be a tensor with at least one dimension [..., N]")
    if scores.is_complex() or not scores.is_floating_point():
        raise UsageError(f"scores must be a real floating tensor; got {scores.dtype}")
    if bool(torch.isnan(scores).any()):
        raise UsageError("scores contain NaN, which has no rank; check the embeddings and the selector weights")


def _check_k(k: int | torch.Tensor, n: int) -> None:
    if isinstance(k, torch.Tensor):
        if k.is_floating_point() or k.dtype == torch.bool:
            raise UsageError(f"a per-row k must be an integer tensor; got {k.dtype}")
        if k.numel() and (int(k.min()) < 0 or int(k.max()) > n):
            raise UsageError(f"every k must be in [0, {n}]; got k from {int(k.min())} to {int(k.max())}")
        return
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise UsageError(f"k must be an int in [0, {n}]; got {k!r}")


def share_identical_scores(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Scores [B, N] where every token bitwise equal to an earlier one takes that one's score.

    Identical inputs (silence, a black frame) must tie exactly for the tie rule to decide, but a
    backend's matrix kernels may round identical rows differently (ONNX Runtime's blocked GEMM
    does: rows in the remainder block take another path). Copying the score of the first identical
    token makes the tie exact on every backend. tokens [B, N, D]; O(N^2 D) compares, static shapes.
    """
    n, width = tokens.shape[1], tokens.shape[2]
    # all D components equal, counted in float32 (exact: D < 2^24): `.all(-1)` traces to Not + Cast(int64) +
    # ReduceSum over [B, N, N, D], 8 bytes a compare, ~8x slower in ONNX Runtime (and worse per row at B > 1)
    equal = (tokens.unsqueeze(2) == tokens.unsqueeze(1)).to(torch.float32)     # [B, N, N, D]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)   # D: a constant on purpose
        width = int(width)
    same = equal.sum(dim=-1) == width                                           # [B, N, N]: token i == token j
    index = torch.arange(n, device=tokens.device).view(1, n, 1)
    first = torch.where(same, index, torch.full_like(index, n)).amin(dim=1)     # [B, N]: lowest identical i
    return scores.gather(1, first)
