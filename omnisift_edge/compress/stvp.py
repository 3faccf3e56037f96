"""STVP, OmniSIFT's parameter-free video pruning: which tokens of a chunk's one or two frames survive.

Frame 1 (spatial): each token is scored by cosine similarity to the frame's mean token; the k_v
most similar (the most "average") are dropped. Frame 2 (temporal): each token is scored by cosine
similarity to frame 1's token at the same index; the k_v most similar (the most redundant) are
dropped. Drops go through `select` (highest first, lower index first on ties).

Cosine similarity has `F.cosine_similarity` semantics, `dot / (max(|x|, eps) * max(|y|, eps))`
with eps = 1e-8, computed as `dot / sqrt(max(|x|^2, eps^2) * max(|y|^2, eps^2))` from dot
products (in float32). Two reasons for that form:

- speed: `F.cosine_similarity` against a frame mean materializes the broadcast mean and two
  normalized copies (4x the rest of the compressor, DESIGN.md). Here one batched 2x2 Gram
  product per token pair, `[x1_i; x2_i] @ [x1_i; x2_i]^T`, yields both squared norms and the
  temporal dot, and the spatial dots are one `(1 x D) @ (D x 1)` product per token against the
  (stride-0) mean: on views of the sequence nothing of frame size is copied.
- exact ties: for identical tokens (a static camera) the Gram entries are the same product of the
  same operands, and `sqrt(s * s) == s` exactly in binary floating point, so every temporal
  score is exactly 1.0 and the tie rule decides. `F.cosine_similarity(x, x)` is 1.0 only for some
  tokens (within an ulp for the others), which leaves the choice to rounding. One product per
  token (not a matrix-vector product) also keeps identical tokens' spatial scores identical: a
  GEMV may round its tail rows differently.
"""

from __future__ import annotations

import torch

from omnisift_edge.compress.select import select_mask
from omnisift_edge.errors import UsageError

EPS = 1e-8   # F.cosine_similarity's default


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products [...] of `a`, `b` [..., D]: one (1 x D) @ (D x 1) product per row."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1))[..., 0, 0]   # [..., 1, 1] -> [...] (indexing: no If in a batched graph)


def cosine_from_dots(dot: torch.Tensor, sq1: torch.Tensor, sq2: torch.Tensor) -> torch.Tensor:
    """`F.cosine_similarity` (eps 1e-8) from a dot product and the two squared norms."""
    eps2 = EPS * EPS
    return dot / torch.sqrt(sq1.clamp_min(eps2) * sq2.clamp_min(eps2))


def pair_gram(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared norms and dot of token pairs `pairs` [..., 2, D] (may be a strided view): 3 x [...]."""
    gram = torch.matmul(pairs, pairs.transpose(-1, -2))                # [..., 2, 2]
    return gram[..., 0, 0], gram[..., 1, 1], gram[..., 0, 1]


def spatial_scores(x1: torch.Tensor, mean: torch.Tensor, sq1: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of tokens `x1` [..., n, D] (squared norms `sq1` [..., n]) to `mean` [..., D]."""
    n, d = x1.shape[-2:]
    m = mean.unsqueeze(-2).unsqueeze(-1).expand(*mean.shape[:-1], n, d, 1)   # [..., n, D, 1] stride-0 view
    dots = torch.matmul(x1.unsqueeze(-2), m)[..., 0, 0]                      # [..., n]
    return cosine_from_dots(dots, sq1, rowdot(mean, mean).unsqueeze(-1))


def frame_scores(
    f1: torch.Tensor,
    f2: torch.Tensor | None = None,
    valid1: torch.Tensor | None = None,
    count1: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Spatial and temporal similarities of N chunks, float32, plus the tokens' squared norms.

    f1, f2: [N, P, D] tokens of frame 1 and 2 (f2 None: single-frame chunks). valid1 (bool
    [N, P]) and count1 (int [N]) describe padded frames: the mean runs over the valid tokens
    only; padded slots must hold finite values (their scores are computed and must be ignored).
    Returns spatial [N, P], temporal [N, P] | None, sq1 [N, P], sq2 [N, P] | None.
    """
    x1 = f1.float()                                                   # [N, P, D]
    if f2 is None:
        sq1, sq2, temporal = rowdot(x1, x1), None, None               # [N, P]
    else:
        sq1, sq2, dot = pair_gram(torch.stack((x1, f2.float()), dim=-2))   # [N, P] each
        temporal = cosine_from_dots(dot, sq1, sq2)                    # [N, P]
    if valid1 is None:
        mean = x1.mean(dim=1)                                         # [N, D]
    else:
        weights = valid1.to(torch.float32).unsqueeze(1)               # [N, 1, P]
        mean = torch.bmm(weights, x1).squeeze(1) / count1.to(torch.float32).clamp_min(1).unsqueeze(-1)   # [N, D]
    return spatial_scores(x1, mean, sq1), temporal, sq1, sq2


def stvp_keep(frames: torch.Tensor, k_v: int) -> torch.Tensor:
    """Bool [B, F, n_p]: the tokens of `frames` [B, F, n_p, D] (F = 1 or 2) that STVP keeps.

    `k_v` tokens are dropped from each frame (`floor(n_p * rho_video)`; 0 keeps everything).
    Raises UsageError for other ranks, F outside {1, 2}, k_v outside [0, n_p) or NaN/Inf tokens.
    """
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] not in (1, 2):
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise UsageError(f"frames must be [B, F, n_p, D] with F = 1 or 2 frames per chunk; got {shape}")
    n_p = frames.shape[2]
    if isinstance(k_v, bool) or not isinstance(k_v, int) or not 0 <= k_v < max(n_p, 1):
        raise UsageError(f"k_v must be an int in [0, n_p) = [0, {n_p}); a frame keeps at least one token; got {k_v!r}")
    if frames.is_floating_point() and not bool(torch.isfinite(frames).all()):
        raise UsageError("frames contain NaN or Inf; check the vision encoder's output")
    return keep_unchecked(frames, k_v)


def keep_unchecked(frames: torch.Tensor, k_v: int, *, method: str = "auto") -> torch.Tensor:
    """`stvp_keep` without validation or host syncs: the form traced into the per-chunk graph."""
    f2 = frames[:, 1] if frames.shape[1] == 2 else None
    spatial, temporal, _, _ = frame_scores(frames[:, 0], f2)          # [B, n_p] each
    scores = spatial.unsqueeze(1) if temporal is None else torch.stack((spatial, temporal), dim=1)   # [B, F, n_p]
    drop = select_mask(scores, k_v, method=method, check=False)       # [B, F, n_p], tie rule applies
    return ~drop
