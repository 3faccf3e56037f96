"""The static-shape per-chunk compressor: what the export stage traces into ONNX / TensorRT.

One 2-second chunk in, its kept tokens out. Every shape is fixed by the input shapes and the two
drop fractions: `K = kept_count(F, n_p, La)` is a Python int, so the graph has no NonZero, no
boolean indexing and no loop over data-dependent counts, and batch > 1 works (B chunks at once).
Selections use the pairwise-rank form of the tie rule by default, which relies on no backend's
TopK tie order; kept tokens come out in the chunk's token order.

Chunk token order (what `kept_index` indexes): the F * n_p video tokens frame by frame, then the
La audio tokens. This is also the order in which Qwen2.5-Omni writes a chunk into the sequence,
so for a chunk whose sequence positions start at `s`, the kept tokens sit at `s + kept_index`.

It computes the same selection as `compress_sequence` on a sequence made of the same chunks (tests
check it), in inference mode only: no straight-through estimator (train with `compress_sequence`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from omnisift_edge.compress.ratio import audio_keep_count, check_rho, drop_count, kept_per_chunk
from omnisift_edge.compress.select import compact_indices, select_indices, select_mask, share_identical_scores
from omnisift_edge.compress.selector import fp32_selector
from omnisift_edge.compress.stvp import keep_unchecked
from omnisift_edge.errors import UsageError


class ChunkCompressor(nn.Module):
    """STVP + VGAS on B chunks of F frames (1 or 2) of n_p tokens and La audio tokens each."""

    def __init__(self, selector: nn.Module, rho_video: float, rho_audio: float, *, method: str = "pairwise"):
        super().__init__()
        self.rho_video = check_rho("rho_video", rho_video)
        self.rho_audio = check_rho("rho_audio", rho_audio)
        if selector is None and self.rho_audio == 0:
            self.selector = None   # keeps every audio token: ratio 1 needs no trained selector
        elif getattr(getattr(selector, "cfg", None), "d_model", None) is None:
            raise UsageError(f"selector must be an AudioSelector; got {type(selector).__name__}")
        else:
            self.selector = fp32_selector(selector)
        self.method = method   # "pairwise" (export: no TopK tie reliance) or "auto"/"sort" (eager speed)

    def kept_count(self, frames: int, tokens_per_frame: int, audio_tokens: int) -> int:
        """K: tokens a chunk of `frames` frames of `tokens_per_frame` and `audio_tokens` audio keeps."""
        return kept_per_chunk(tokens_per_frame, self.rho_video, self.rho_audio, audio_tokens, frames).total

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, F, n_p, D], audio [B, La, D] -> kept [B, K, D], kept_index [B, K] int64 ascending."""
        B, F, P, D, La = self._check(video, audio)
        n_vk, v_index, context = self._prune_video(video, F, P, D)                   # [B, Nv], [B, Nv, D]
        n_ka = audio_keep_count(La, self.rho_audio, F * n_vk)
        if n_ka < La:
            # fp32 whatever the embeddings' dtype: fp16/bf16 scores round to exact ties that a backend's
            # rounding of its inputs breaks either way, so kept sets would differ between backends
            scores = self.selector(context.float(), audio.float())            # [B, La] float32
            scores = share_identical_scores(scores, audio)                    # exact ties on any backend
            a_index = select_indices(scores, n_ka, method=self.method, check=False)   # [B, n_ka] ascending
            kept_audio = audio.gather(1, a_index.unsqueeze(-1).expand(B, n_ka, D))    # [B, n_ka, D]
        else:   # nothing to drop: the reference's selection keeps every audio token
            a_index = torch.arange(La, device=audio.device).expand(B, La)
            kept_audio = audio
        kept = torch.cat((context, kept_audio), dim=1)                        # [B, K, D]
        kept_index = torch.cat((v_index, a_index + F * P), dim=1)             # [B, K]
        return kept, kept_index

    def forward_valid(self, video: torch.Tensor, audio: torch.Tensor, grids: torch.Tensor,
                      audio_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole chunk's static shapes of which only the first `grids` frames and `audio_tokens` audio
        tokens are real (a clip's short last chunk) -> kept [B, K, D], kept_index [B, K], kept_count [B]
        ([1] when the counts are [1]): row b's first kept_count[b] rows are exactly what `forward` keeps of
        row b's real part alone, the rest padding. The counts are [1] (one for every row) or [B] (one per
        row: a batch of chunks from different streams, a short last chunk among whole ones). Frame 0's
        selection never reads frame 1 (STVP), audio queries never attend to each other (VGAS), so padding
        is masked out of the context and ranked last; every rank is within a row (the tie rule per row).
        """
        B, F, P, D, La = self._check(video, audio)
        grids, audio_tokens = grids.unsqueeze(-1), audio_tokens.unsqueeze(-1)   # [B|1, 1]: per row, or one for all
        n_vk, v_index, context = self._prune_video(video, F, P, D)                   # [B, Nv], [B, Nv, D]
        v_valid = torch.arange(F * n_vk, device=video.device).view(1, -1) < grids * n_vk   # [B|1, Nv]
        a_slot = torch.arange(La, device=video.device).view(1, -1)           # [1, La]
        n_ka_max = audio_keep_count(La, self.rho_audio, 1)
        drops = self.rho_audio > 0 and n_ka_max < La
        n_a = n_ka_max if drops else La                                       # audio slots of the output (an int)
        if drops:
            table = torch.tensor([audio_keep_count(n, self.rho_audio, 1) for n in range(La + 1)], device=video.device)
            n_ka = table.index_select(0, audio_tokens.reshape(-1)).reshape(-1, 1)   # [B|1, 1] kept of the real audio
            scores = self.selector(context.float(), audio.float(), video_valid=v_valid.expand(B, -1))   # [B, La]
            scores = share_identical_scores(scores, audio)                    # a padding row never comes first
            scores = torch.where(a_slot < audio_tokens, scores, float("-inf"))   # [B, La] padding ranks last
            chosen = select_mask(scores, n_ka.reshape(-1).expand(B), method=self.method, check=False)   # [B, La]
            a_index = compact_indices(chosen, n_ka_max)                       # [B, n_ka_max] chosen first
        else:   # nothing to drop: every real audio token
            n_ka, a_index = audio_tokens, a_slot.expand(B, La)
        kept_audio = audio.gather(1, a_index.unsqueeze(-1).expand(B, n_a, D))   # [B, n_a, D]
        index = torch.cat((v_index, a_index + grids * P), dim=1)             # [B, K] audio after the real frames
        audio_real = torch.arange(n_a, device=video.device).view(1, -1) < n_ka   # [B|1, n_a]
        real = torch.cat((v_valid, audio_real), dim=1)                        # [B|1, K]
        order = compact_indices(real.expand(B, -1), F * n_vk + n_a)           # [B, K] real slots first, in order
        kept = torch.cat((context, kept_audio), dim=1).gather(1, order.unsqueeze(-1).expand(B, -1, D))
        return kept, index.gather(1, order), (grids * n_vk + n_ka).reshape(-1)   # ..., [B|1]

    def _prune_video(self, video: torch.Tensor, F: int, P: int, D: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """STVP on [B, F, n_p, D]: (kept per frame n_vk, kept indices [B, F*n_vk] into [F*n_p] ascending,
        the kept embeddings [B, F*n_vk, D]: the context VGAS scores audio against)."""
        B = video.shape[0]                                                    # F, P, D: `_check`'s ints
        n_vk = P - drop_count(P, self.rho_video)                              # video kept per frame
        keep = keep_unchecked(video, P - n_vk, method=self.method)            # [B, F, P]
        slots = compact_indices(keep, n_vk)                                   # [B, F, n_vk] ascending
        offsets = (torch.arange(F, device=video.device) * P).view(1, F, 1)
        v_index = (slots + offsets).reshape(B, F * n_vk)                      # [B, Nv] into [F*P]
        context = video.reshape(B, F * P, D).gather(1, v_index.unsqueeze(-1).expand(B, F * n_vk, D))   # [B, Nv, D]
        return n_vk, v_index, context

    def _apply(self, fn, recurse=True):
        """`.to(fp16)` / `.half()` convert the module but the selector stays fp32 (see forward)."""
        super()._apply(fn, recurse)
        if self.selector is not None:
            self.selector.float()
        return self

    def _check(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[int, int, int, int, int]:
        """(B, F, n_p, D, La) of valid inputs, or a UsageError. All but B are Python ints even while tracing: a
        batched graph keeps only its batch axis dynamic, and K (TopK's k) a constant (from a traced size it would
        be a runtime tensor, which TensorRT 10.3 refuses)."""
        if video.dim() != 4 or video.shape[1] not in (1, 2) or video.shape[2] < 1:
            raise UsageError(f"video must be [B, F, n_p, D] with F = 1 or 2 and n_p >= 1; got {tuple(video.shape)}")
        B, F, P, D = video.shape
        if audio.dim() != 3 or audio.shape[0] != B or audio.shape[2] != D:
            raise UsageError(f"audio must be [B, La, D] = [{B}, La, {D}] to match the video; got {tuple(audio.shape)}")
        if audio.dtype != video.dtype:
            raise UsageError(f"video and audio embeddings must share a dtype; got {video.dtype} and {audio.dtype}")
        width = D if self.selector is None else self.selector.cfg.d_model
        if width != D:
            raise UsageError(f"the selector is {width} wide but the embeddings are {D} wide; use the matching compressor")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)   # the fixed sizes: constants on purpose
            return B, int(F), int(P), int(D), int(audio.shape[1])


def gather_positions(positions: torch.Tensor, kept_index: torch.Tensor) -> torch.Tensor:
    """[3, B, K] TMRoPE positions of the kept tokens (the thinker's [3, batch, seq] layout).

    positions: the (t, h, w) positions of the chunk's tokens in chunk token order, either [3, n]
    (one table for the whole batch) or [3, B, n] (one per chunk); kept_index: [B, K] from
    `ChunkCompressor`. Kept tokens keep their original positions: nothing is re-indexed.
    """
    B, K = kept_index.shape
    if positions.dim() == 2 and positions.shape[0] == 3:
        return positions.index_select(1, kept_index.reshape(-1)).view(3, B, K)        # [3, B, K]
    if positions.dim() == 3 and positions.shape[:2] == (3, B):
        return positions.gather(2, kept_index.unsqueeze(0).expand(3, B, K))           # [3, B, K]
    raise UsageError(f"positions must be [3, n] or [3, B, n] = [3, {B}, n] (rows t, h, w); got {tuple(positions.shape)}")
