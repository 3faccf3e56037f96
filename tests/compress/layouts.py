"""Synthetic Qwen2.5-Omni audio-in-video layouts and tiny selectors for the compressor tests.

Layouts are built token by token as the processor writes them (OMNISIFT.md, "Token layout"):
text prefix, `<|vision_bos|><|audio_bos|>`, per chunk of 2 frames [video tokens][audio tokens
whose time id falls in the chunk], `<|audio_eos|><|vision_eos|>`, text suffix. Video token of
frame t at grid cell (r, c): positions (st + 25 t, st + r, st + c); audio token i: st + i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnisift_edge.compress.selector import AudioSelector, SelectorConfig
from omnisift_edge.model.spec import TokenIds

IDS = TokenIds()
TEXT = 9707   # any ordinary text token


@dataclass
class Layout:
    input_ids: torch.Tensor      # [B, L]
    position_ids: torch.Tensor   # [3, B, L]


def sample_tokens(n_frames: int, grid: tuple[int, int], n_audio: int, prefix: int = 3, suffix: int = 2):
    """(ids, positions [3, n]) of one sample."""
    h, w = grid
    ids: list[int] = []
    pos: list[tuple[int, int, int]] = []

    def text(tok: int, p: int):
        ids.append(tok)
        pos.append((p, p, p))

    for p in range(prefix):
        text(TEXT, p)
    text(IDS.vision_bos, prefix)
    text(IDS.audio_bos, prefix + 1)
    st = prefix + 2
    n_chunks = (n_frames + 1) // 2
    for j in range(n_chunks):
        for t in range(2 * j, min(2 * j + 2, n_frames)):
            for r in range(h):
                for c in range(w):
                    ids.append(IDS.video)
                    pos.append((st + 25 * t, st + r, st + c))
        hi = n_audio if j == n_chunks - 1 else min(n_audio, 50 * (j + 1))
        for i in range(50 * j, hi):
            ids.append(IDS.audio)
            pos.append((st + i, st + i, st + i))
    nxt = max(max(p) for p in pos) + 1
    text(IDS.audio_eos, nxt)
    text(IDS.vision_eos, nxt + 1)
    for p in range(suffix):
        text(TEXT, nxt + 2 + p)
    return torch.tensor(ids), torch.tensor(pos).T


def build_layout(samples: list[dict], pad_left: tuple[bool, ...] | None = None) -> Layout:
    """A batch of samples (kwargs of `sample_tokens`), padded to a common length with `<|endoftext|>`."""
    built = [sample_tokens(**s) for s in samples]
    L = max(ids.numel() for ids, _ in built)
    all_ids, all_pos = [], []
    for b, (ids, pos) in enumerate(built):
        n = L - ids.numel()
        pad_ids = torch.full((n,), IDS.endoftext)
        pad_pos = torch.ones(3, n, dtype=pos.dtype)
        left = bool(pad_left and pad_left[b])
        all_ids.append(torch.cat([pad_ids, ids]) if left else torch.cat([ids, pad_ids]))
        all_pos.append(torch.cat([pad_pos, pos], 1) if left else torch.cat([pos, pad_pos], 1))
    return Layout(torch.stack(all_ids), torch.stack(all_pos, dim=1))


def tiny_selector(d_model: int = 32, hidden: int = 16, heads: int = 4, seed: int = 0) -> AudioSelector:
    """A randomly initialised selector with non-trivial LayerNorm affines, eval mode."""
    torch.manual_seed(seed)
    selector = AudioSelector(SelectorConfig(d_model=d_model, hidden=hidden, heads=heads))
    with torch.no_grad():
        for name, p in selector.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            if name.endswith("score_head.2.weight"):
                p.mul_(4.0)   # spread the scores over (0, 1)
    return selector.eval()
