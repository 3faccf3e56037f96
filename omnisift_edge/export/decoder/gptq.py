"""Calibrated rounding of one linear layer to symmetric block-wise int4: clipping search and GPTQ.

Both work on W [N, K] (a `nn.Linear` weight, already AWQ-scaled, export/decoder/awq.py) and the
Hessian of its output error on the calibration rows, H = X^T X [K, K] (X [T, K] the rows the layer
reads, already divided by the AWQ scales): for any W', sum over rows ||x W^T - x W'^T||^2 =
tr((W - W') H (W - W')^T). Both keep the export's form: int4 q in [-7, 7], one scale per block of
`block_size` along K per output row, zero point 0 (export/decoder/quantize.py, TensorRT needs it).

- `clip_scales` (AWQ's second step): per output row and block the scale max|w| r / 7 with r from
  CLIP_GRID minimizing that block's own output error d^T H_bb d (d = w - w', H_bb the block's
  diagonal [B, B] piece of H). r = 1 is RTN's scale, so the choice is never worse per block.
- `gptq_round` (Frantar et al., 2022, "GPTQ", Algorithm 1 with lazy batches): the scales fixed,
  columns quantized one at a time in order of decreasing H_kk ("act order"; the scales stay those of
  each column's own block, so the ints are exactly the Q/DQ form), each column's rounding error
  pushed onto the not yet quantized columns through the Cholesky factor of H^-1, so the later
  columns compensate it. H is dampened by DAMP x mean(diag H) (the paper's 1%).

Written here (about 100 lines) because the maintained GPTQ libraries do not install beside our
stack (docs/quantization.md says what was tried).
"""

from __future__ import annotations

from omnisift_edge.errors import require

QMAX = 7                              # symmetric int4: [-7, 7], -8 unused (export/decoder/quantize.py)
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
DAMP = 0.01
LAZY = 128                            # GPTQ's lazy batch: columns updated together
ROW_CHUNK = 1024                      # output rows per step of the clip search (bounds its memory)


def hessian(x):
    """H = X^T X [K, K] in float64 from the calibration rows X [T, K]."""
    x = x.double()
    return x.T @ x                                                                         # [K, K]


def rtn_scales(w, block_size: int):
    """RTN's scales [N, K/B]: max|w| / 7 per output row and block (1 where a block is all zero)."""
    n, k = w.shape
    amax = w.float().reshape(n, k // block_size, block_size).abs().amax(dim=2)               # [N, K/B]
    return (amax / QMAX).masked_fill(amax == 0, 1.0)


def round_with(w, scale, block_size: int):
    """Plain rounding of W [N, K] with given scales [N, K/B]: q [N, K] (float holding ints in [-7, 7])."""
    full = scale.repeat_interleave(block_size, dim=1)                                      # [N, K]
    return (w.float() / full).round().clamp(-QMAX, QMAX)


def output_error(w, q, scale, h, block_size: int) -> float:
    """tr(D H D^T), D = W - q * scale: the squared output error summed over the calibration rows."""
    d = (w.float() - q * scale.repeat_interleave(block_size, dim=1)).double()               # [N, K]
    return float(((d @ h) * d).sum())


def clip_scales(w, h, block_size: int):
    """Scales [N, K/B] from CLIP_GRID minimizing each block's output error (see the module docstring)."""
    torch = require("torch")
    n, k = w.shape
    nb = k // block_size
    hb = torch.stack([h[i * block_size:(i + 1) * block_size, i * block_size:(i + 1) * block_size]
                      for i in range(nb)]).float()                                          # [K/B, B, B]
    best_scale = rtn_scales(w, block_size)                                                  # [N, K/B]
    for start in range(0, n, ROW_CHUNK):
        wb = w[start:start + ROW_CHUNK].float().reshape(-1, nb, block_size)                 # [n, K/B, B]
        amax = wb.abs().amax(dim=2)                                                         # [n, K/B]
        best_err = None
        for ratio in CLIP_GRID:
            s = (amax * ratio / QMAX).masked_fill(amax == 0, 1.0)                           # [n, K/B]
            d = wb - (wb / s[..., None]).round().clamp(-QMAX, QMAX) * s[..., None]           # [n, K/B, B]
            err = torch.einsum("nkb,kbc,nkc->nk", d, hb, d)                                  # [n, K/B]
            if best_err is None:
                best_err = err
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale[start:start + ROW_CHUNK] = torch.where(better, s, best_scale[start:start + ROW_CHUNK])
    return best_scale


def gptq_round(w, h, scale, block_size: int):
    """q [N, K] (float holding ints in [-7, 7]) for W [N, K] with fixed scales [N, K/B], GPTQ's order."""
    torch = require("torch")
    n, k = w.shape
    h = h.clone()
    dead = h.diagonal() == 0                                                               # inputs never active
    h[dead, dead] = 1.0
    order = torch.argsort(h.diagonal(), descending=True)                                   # act order [K]
    w = w.float()[:, order].clone()                                                        # [N, K] permuted
    s = scale.float().repeat_interleave(block_size, dim=1)[:, order]                        # [N, K] each column's scale
    h = h[order][:, order]
    h += DAMP * h.diagonal().mean() * torch.eye(k, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()   # [K, K]
    q = torch.zeros_like(w)
    for i1 in range(0, k, LAZY):
        i2 = min(i1 + LAZY, k)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]                                    # [N, b], [b, b]
        err = torch.zeros_like(w1)                                                         # [N, b]
        for i in range(i2 - i1):
            qi = (w1[:, i] / s[:, i1 + i]).round().clamp(-QMAX, QMAX)                       # [N]
            q[:, i1 + i] = qi
            e = (w1[:, i] - qi * s[:, i1 + i]) / h1[i, i]                                   # [N]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err[:, i] = e
        w[:, i2:] -= err @ hinv[i1:i2, i2:]                                                # lazy update of the rest
    return q[:, torch.argsort(order)]                                                      # [N, K] original order
