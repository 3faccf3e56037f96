"""Migration from the authors' OmniSIFT code: their keep mask from our compressor, and their loop.

`reference_keep_mask` is the path for users of the reference implementation: it returns exactly
the mask the authors' `similarity_pruning` returns whenever no two scores tie, and where they tie
(identical frames, black frames, silence) it follows our documented rule (higher score first, lower
index first among equals) instead of `torch.topk`'s backend-dependent choice. It runs our
vectorized `compress_sequence`. "No ties" is meant up to float rounding: the two implementations
compute the same similarities and scores by different kernels, so two scores within an ulp or so of
each other at the selection boundary may come out in either order. It is a float32 statement: in
bf16 the authors' code computes cosine similarities in bf16 (where scores tie often and `topk`
picks among them), ours in float32, so bf16 masks differ.

`reference_loop_keep_mask` is a faithful transcription of the authors' per-chunk loop (a Python
loop over samples and chunks, `.unique().tolist()`, `nonzero`, plain `torch.topk`), with their
`TransformerAudioSelector` transcribed as `ReferenceAudioSelector`. It is the oracle that tests
and the speed benchmark compare against; it works for B > 1 (the loop runs per sample) and, unlike
the original, leaves the caller's `inputs_embeds` untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from omnisift_edge.compress.selector import load_selector_state
from omnisift_edge.compress.sequence import compress_sequence


def reference_keep_mask(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    selector_state_dict: Mapping[str, torch.Tensor] | nn.Module,
    *,
    num_heads: int,
    audio_token_id: int,
    video_token_id: int,
    rho_video: float,
    rho_audio: float,
) -> torch.Tensor:
    """Bool [B, L]: the authors' keep mask (`merging_ratio_v=rho_video`, `merging_ratio_a=rho_audio`).

    inputs_embeds [B, L, D], input_ids [B, L], position_ids [3, B, L]; the selector's tensors as a
    state dict (with or without a `thinker.compressor.` / `compressor.` prefix) or a module.
    """
    selector = _our_selector(selector_state_dict, num_heads, inputs_embeds)
    return compress_sequence(
        inputs_embeds, input_ids, position_ids, selector,
        rho_video=rho_video, rho_audio=rho_audio,
        audio_token_id=audio_token_id, video_token_id=video_token_id, training=False,
    ).keep_mask


def reference_loop_keep_mask(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    selector_state_dict: Mapping[str, torch.Tensor] | nn.Module,
    *,
    num_heads: int,
    audio_token_id: int,
    video_token_id: int,
    rho_video: float,
    rho_audio: float,
) -> torch.Tensor:
    """Bool [B, L]: the mask of the authors' `similarity_pruning`, computed their way (the oracle)."""
    state = selector_state_dict.state_dict() if isinstance(selector_state_dict, nn.Module) else selector_state_dict
    ours = load_selector_state(state, heads=num_heads)
    compressioner = ReferenceAudioSelector(ours.cfg.d_model, num_heads, 1, ours.cfg.hidden)
    compressioner.load_state_dict(ours.state_dict())
    compressioner.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype).eval()
    with torch.no_grad():
        _, mask, _, _ = _similarity_pruning(
            compressioner, inputs_embeds.clone(), input_ids, audio_token_id, video_token_id,
            position_ids, merging_ratio_a=rho_audio, merging_ratio_v=rho_video,
        )
    return mask


class ReferenceAudioSelector(nn.Module):
    """The authors' `TransformerAudioSelector`, transcribed: one unbatched chunk per call."""

    def __init__(self, d_model=3584, nhead=8, num_layers=1, hidden_dim=512):
        super().__init__()
        self.v_proj = nn.Linear(d_model, hidden_dim)
        self.a_proj = nn.Linear(d_model, hidden_dim)
        self.v_norm = nn.LayerNorm(hidden_dim)
        self.a_norm = nn.LayerNorm(hidden_dim)
        self.post_attn_norm = nn.LayerNorm(hidden_dim)
        self.cross_attn = nn.MultiheadAttention(embed_dim=hidden_dim, num_heads=nhead, batch_first=True)
        self.score_head = nn.Sequential(nn.Linear(hidden_dim, hidden_dim // 2), nn.SiLU(), nn.Linear(hidden_dim // 2, 1))

    def forward(self, v_embeds, a_embeds):   # [Nv, D], [Na, D] -> [Na]
        v = self.v_norm(self.v_proj(v_embeds)).unsqueeze(0)
        a = self.a_norm(self.a_proj(a_embeds)).unsqueeze(0)
        attn_output, _ = self.cross_attn(query=a, key=v, value=v)
        x = self.post_attn_norm(attn_output + a)
        return torch.sigmoid(self.score_head(x).squeeze(0).squeeze(-1))


def _similarity_pruning(
    compressioner, inputs_embeds, input_ids, audio_token_id, video_token_id,
    position_ids=None, merging_ratio_a=0.3, merging_ratio_v=0.5,
):
    """The authors' loop, kept as they wrote it (modifies `inputs_embeds` in place, as theirs does)."""
    device = inputs_embeds.device
    batch_size, seq_len, _ = inputs_embeds.shape
    global_keep_mask = torch.ones((batch_size, seq_len), dtype=torch.bool, device=device)
    for i in range(batch_size):
        sample_input_ids = input_ids[i]
        video_token_mask = sample_input_ids == video_token_id
        audio_token_mask = sample_input_ids == audio_token_id
        time_ids = position_ids[:, i, :][0, :]
        unique_frames = sorted(time_ids[video_token_mask].unique().tolist())
        if not unique_frames:
            continue
        frames_per_group = 2
        for idx in range(0, len(unique_frames), frames_per_group):
            v_frames_in_chunk = unique_frames[idx: idx + frames_per_group]
            t_start = v_frames_in_chunk[0]
            t_end = (unique_frames[idx + frames_per_group] if (idx + frames_per_group) < len(unique_frames)
                     else (time_ids.max().item() + 1))
            # A. video: spatial pruning of frame 1, temporal pruning of frame 2
            f1_indices = torch.nonzero((time_ids == t_start) & video_token_mask, as_tuple=True)[0]
            k_v = int(len(f1_indices) * merging_ratio_v)
            if len(f1_indices) > 0 and k_v > 0:
                f1_embeds = inputs_embeds[i, f1_indices]
                f1_mean = f1_embeds.mean(dim=0, keepdim=True)
                sim_spatial = F.cosine_similarity(f1_embeds, f1_mean, dim=-1)
                _, drop_s_idx = torch.topk(sim_spatial, k=k_v, largest=True)
                global_keep_mask[i, f1_indices[drop_s_idx]] = False
            if len(v_frames_in_chunk) > 1:
                f2_t = v_frames_in_chunk[1]
                f2_indices = torch.nonzero((time_ids == f2_t) & video_token_mask, as_tuple=True)[0]
                if len(f1_indices) == len(f2_indices) and k_v > 0:
                    f1_embeds_full = inputs_embeds[i, f1_indices]
                    f2_embeds_full = inputs_embeds[i, f2_indices]
                    sim_temporal = F.cosine_similarity(f1_embeds_full, f2_embeds_full, dim=-1)
                    _, drop_t_idx = torch.topk(sim_temporal, k=k_v, largest=True)
                    global_keep_mask[i, f2_indices[drop_t_idx]] = False
            # B. audio selection guided by the surviving video tokens
            a_idx_chunk = torch.nonzero((time_ids >= t_start) & (time_ids < t_end) & audio_token_mask, as_tuple=True)[0]
            v_idx_remain = torch.nonzero(
                (time_ids >= t_start) & (time_ids < t_end) & video_token_mask & global_keep_mask[i], as_tuple=True
            )[0]
            if len(v_idx_remain) > 0 and len(a_idx_chunk) > 1:
                v_embeds_ctx = inputs_embeds[i, v_idx_remain]
                a_embeds_chunk = inputs_embeds[i, a_idx_chunk]
                audio_scores = compressioner(v_embeds_ctx, a_embeds_chunk)
                n_keep_a = len(a_idx_chunk) - int(len(a_idx_chunk) * merging_ratio_a)
                if n_keep_a > 0:
                    _, topk_keep_a_idx = torch.topk(audio_scores, k=n_keep_a, largest=True)
                    hard_mask = torch.zeros_like(audio_scores)
                    hard_mask.scatter_(dim=-1, index=topk_keep_a_idx, value=1.0)
                    ste_mask = (hard_mask - audio_scores).detach() + audio_scores
                    inputs_embeds[i, a_idx_chunk] = inputs_embeds[i, a_idx_chunk] * ste_mask.unsqueeze(-1)
                    drop_a_indices = a_idx_chunk[torch.nonzero(hard_mask == 0, as_tuple=True)[0]]
                    global_keep_mask[i, drop_a_indices] = False
    video_count = (global_keep_mask & (input_ids == video_token_id)).sum().item()
    audio_count = (global_keep_mask & (input_ids == audio_token_id)).sum().item()
    return inputs_embeds, global_keep_mask, video_count, audio_count


def _our_selector(source, num_heads: int, like: torch.Tensor) -> nn.Module:
    state = source.state_dict() if isinstance(source, nn.Module) else source
    selector = load_selector_state(state, heads=num_heads)
    return selector.to(device=like.device, dtype=like.dtype).eval()
