"""OmniSIFT over whole sequences: the keep mask for the compressed thinker forward and for training.

The authors' `similarity_pruning` walks every chunk of every sample in Python (`nonzero`,
`.tolist()`, a data-dependent `topk` per chunk: host syncs on every chunk). Here the chunk
tables are read once per batch on the host, from `input_ids` and the time row of `position_ids`;
after that nothing waits on the device until the one finiteness check. The STVP similarities take
one of two routes with the same arithmetic (`stvp`'s primitives): on the CPU chunk by chunk on
views of the sequence (a frame is a contiguous run of tokens, and copying every frame into a padded
batch cost more than the whole scoring there); on a GPU as one batch over all chunks (copies are
cheap there and a launch per chunk is not). Then all chunks of all samples run together: one
selection with a per-chunk k over padded score tables, one selector call over the padded context
and audio, one audio selection.

Chunks follow the reference exactly: frames = distinct time ids of video tokens, sorted, grouped
two by two; a chunk spans [its first frame's time, the next chunk's first frame's time), the last
one is open-ended; audio tokens before the first frame belong to no chunk and are kept.

`training=True` applies the straight-through estimator as the reference does: the audio tokens of
every selected chunk are multiplied by `ste = (hard - s).detach() + s`, so the next-token loss
reaches the selector (each kept token's score gets `<dL/dx_i, x_i>`). `training=False` does not
multiply: the returned embeddings are the input, and they differ from the reference's forward
values only by its rounding of `(1 - s) + s` on kept audio tokens (dropped ones are removed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from omnisift_edge.compress.ratio import audio_keep_count, check_rho, drop_count
from omnisift_edge.compress.select import compact_indices, select_mask, share_identical_scores
from omnisift_edge.compress.selector import fp32_selector
from omnisift_edge.compress.stvp import cosine_from_dots, frame_scores, pair_gram, rowdot, spatial_scores
from omnisift_edge.errors import UsageError


@dataclass(frozen=True)
class SequenceCompression:
    """What `compress_sequence` returns; filter embeddings, positions, masks and labels with keep_mask."""

    inputs_embeds: torch.Tensor   # [B, L, D]; kept audio scaled by the STE in training mode
    keep_mask: torch.Tensor       # [B, L] bool
    video_kept: torch.Tensor      # [B] int64 video tokens kept per sample
    audio_kept: torch.Tensor      # [B] int64 audio tokens kept per sample


@dataclass(frozen=True)
class _Tables:
    """Chunk tables of a batch (C chunks in all), built on the host; positions index [B * L]."""

    vid_pos: torch.Tensor      # [2, C, P] int64; padding repeats a valid token of the chunk
    vid_valid: torch.Tensor    # [2, C, P] bool
    blocks: tuple              # per chunk (frame 1 positions, frame 2 positions | None, temporal?) on the host
    n1: torch.Tensor           # [C] tokens of frame 1
    k_drop: torch.Tensor       # [2, C] tokens dropped from frame 1 (spatial) and frame 2 (temporal)
    ctx_count: torch.Tensor    # [C] video tokens left as the selector's context
    aud_pos: torch.Tensor      # [C, A] int64; padding as for video
    aud_valid: torch.Tensor    # [C, A] bool
    n_keep: torch.Tensor       # [C] audio tokens kept
    do_audio: torch.Tensor     # [C] bool: the selector decides (context > 0 and more than one audio)
    vid_src: torch.Tensor      # [Nv] positions in the flattened [2, C, P] table of every valid slot
    vid_dst: torch.Tensor      # [Nv] their sequence positions
    aud_src: torch.Tensor      # [Na] likewise for audio in [C, A]
    aud_dst: torch.Tensor
    ste_src: torch.Tensor      # audio slots of chunks where the selector decides
    ste_dst: torch.Tensor
    max_ctx: int               # K: context slots per chunk after padding


def compress_sequence(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    selector: torch.nn.Module,
    *,
    rho_video: float,
    rho_audio: float,
    audio_token_id: int,
    video_token_id: int,
    training: bool,
) -> SequenceCompression:
    """Run STVP and VGAS on `inputs_embeds` [B, L, D] and return the keep mask.

    input_ids [B, L]; position_ids [3, B, L] (TMRoPE rows t, h, w; only t is read); `selector`
    an `AudioSelector` of width D. rho_video / rho_audio are drop fractions in [0, 1). Every
    sample needs video and audio tokens (OmniSIFT compresses audio-visual inputs only).
    """
    rho_video = check_rho("rho_video", rho_video)
    rho_audio = check_rho("rho_audio", rho_audio)
    B, L, D = _check_inputs(inputs_embeds, input_ids, position_ids, selector)
    tables = _build_tables(input_ids, position_ids, video_token_id, audio_token_id, rho_video, rho_audio,
                           L, inputs_embeds.device)
    with torch.set_grad_enabled(training and torch.is_grad_enabled()):
        return _compress(inputs_embeds, input_ids, tables, selector, video_token_id, audio_token_id, training)


def _compress(embeds, input_ids, t: _Tables, selector, video_id, audio_id, training) -> SequenceCompression:
    B, L, D = embeds.shape
    flat = embeds.reshape(B * L, D).contiguous()                             # [B*L, D]
    _, C, P = t.vid_pos.shape
    A = t.aud_pos.shape[1]
    audio = flat.index_select(0, t.aud_pos.reshape(-1)).view(C, A, D)        # [C, A, D]
    with torch.no_grad():
        if _batched_scoring(flat.device):
            sims, sq_video = _frame_sims_batched(flat.detach(), t)          # [2, C, P], [2*C*P]
        else:
            sims, sq_video = _frame_sims(flat.detach(), t.blocks, P)         # [2, C, P], [Nv]
        sq_audio = rowdot(audio.detach().float(), audio.detach().float())   # [C, A]
        finite = torch.isfinite(sq_video).all() & torch.isfinite(torch.where(t.aud_valid, sq_audio, 0.0)).all()
        if not bool(finite):
            _raise_not_finite(embeds)
        keep_v = t.vid_valid & ~select_mask(sims, t.k_drop, check=False)    # [2, C, P], tie rule applies
        ctx_slot = compact_indices(keep_v.transpose(0, 1).reshape(C, 2 * P), t.max_ctx)   # [C, K] ascending
        ctx_pos = t.vid_pos.transpose(0, 1).reshape(C, 2 * P).gather(1, ctx_slot)         # [C, K]
        ctx_valid = torch.arange(t.max_ctx, device=flat.device) < t.ctx_count.unsqueeze(-1)   # [C, K]
    keep_flat = torch.ones(B * L, dtype=torch.bool, device=flat.device)      # [B*L]
    keep_flat[t.vid_dst] = keep_v.reshape(-1)[t.vid_src]
    out = embeds
    if A > 0:
        context = flat.index_select(0, ctx_pos.reshape(-1)).view(C, t.max_ctx, D)   # [C, K, D]
        scorer = selector if training else fp32_selector(selector)          # inference scores in fp32, as the chunk module
        dtype = next(scorer.parameters()).dtype
        scores = scorer(context.to(dtype), audio.to(dtype), ctx_valid)       # [C, A]
        with torch.no_grad():
            shared = share_identical_scores(scores, audio)                     # exact ties, as the chunk module
            decided = torch.where(t.do_audio.unsqueeze(-1), shared, torch.ones_like(scores))
            ranked = torch.where(t.aud_valid, decided, torch.full_like(scores, float("-inf")))
            keep_a = t.aud_valid & select_mask(ranked, t.n_keep, check=False)   # [C, A]
        keep_flat[t.aud_dst] = keep_a.reshape(-1)[t.aud_src]
        if training:
            hard = keep_a.to(scores.dtype)
            ste = (hard - scores).detach() + scores                           # [C, A]; forward = hard (rounded)
            scaled = (audio * ste.unsqueeze(-1)).to(embeds.dtype)             # [C, A, D]
            out = flat.index_copy(0, t.ste_dst, scaled.reshape(C * A, D).index_select(0, t.ste_src)).view(B, L, D)
    keep_mask = keep_flat.view(B, L)
    return SequenceCompression(
        inputs_embeds=out,
        keep_mask=keep_mask,
        video_kept=(keep_mask & (input_ids == video_id)).sum(dim=-1),
        audio_kept=(keep_mask & (input_ids == audio_id)).sum(dim=-1),
    )


def _frame_sims(flat: torch.Tensor, blocks: tuple, P: int) -> tuple[torch.Tensor, torch.Tensor]:
    """STVP similarities of every chunk, [2, C, P] float32 (-inf on padding), and the squared norms.

    Chunk by chunk on views of `flat` [N, D]: no frame-sized copies (float32 inputs), no host sync.
    """
    sims = torch.full((2, len(blocks), P), float("-inf"), device=flat.device)
    squares = []
    for c, (p1, p2, temporal) in enumerate(blocks):
        n1 = p1.size
        x1 = _rows(flat, p1).float()                                     # [n1, D]
        if temporal:
            sq1, sq2, dot = pair_gram(_pairs(flat, p1, p2).float())     # [n1] each
            sims[1, c, :n1] = cosine_from_dots(dot, sq1, sq2)
            squares += [sq1, sq2]
        else:
            sq1 = rowdot(x1, x1)                                         # [n1]
            squares.append(sq1)
            if p2 is not None:                                           # not pruned, but checked
                x2 = _rows(flat, p2).float()
                squares.append(rowdot(x2, x2))
        sims[0, c, :n1] = spatial_scores(x1, x1.mean(dim=0), sq1)
    return sims, torch.cat(squares)


def _batched_scoring(device: torch.device) -> bool:
    """Score all chunks as one padded batch (GPU) rather than chunk by chunk on views (CPU)."""
    return device.type != "cpu"


def _frame_sims_batched(flat: torch.Tensor, t: _Tables) -> tuple[torch.Tensor, torch.Tensor]:
    """`_frame_sims` as one batch: frames gathered into [2, C, P, D] (padding repeats valid tokens)."""
    _, C, P = t.vid_pos.shape
    frames = flat.index_select(0, t.vid_pos.reshape(-1)).view(2, C, P, flat.shape[1])   # [2, C, P, D]
    spatial, temporal, sq1, sq2 = frame_scores(frames[0], frames[1], t.vid_valid[0], t.n1)   # [C, P] each
    sims = torch.where(t.vid_valid, torch.stack((spatial, temporal)), float("-inf"))         # [2, C, P]
    return sims, torch.where(t.vid_valid, torch.stack((sq1, sq2)), 0.0).reshape(-1)


def _rows(flat: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """Rows `positions` of `flat` [N, D]: a view when they are consecutive (every real layout)."""
    start = int(positions[0])
    if positions[-1] - start == positions.size - 1:
        return flat[start:start + positions.size]
    return flat.index_select(0, torch.as_tensor(positions, device=flat.device))


def _pairs(flat: torch.Tensor, p1: np.ndarray, p2: np.ndarray) -> torch.Tensor:
    """[n, 2, D]: row i holds tokens p1[i] and p2[i]; a strided view when both runs are consecutive."""
    n, d = p1.size, flat.shape[1]
    s1, s2 = int(p1[0]), int(p2[0])
    if p1[-1] - s1 == n - 1 and p2[-1] - s2 == n - 1 and s2 > s1:
        return flat.as_strided((n, 2, d), (d, (s2 - s1) * d, 1), flat.storage_offset() + s1 * d)
    return torch.stack((_rows(flat, p1), _rows(flat, p2)), dim=1)


def _build_tables(input_ids, position_ids, video_id, audio_id, rho_video, rho_audio, L, device) -> _Tables:
    host = torch.stack((input_ids.detach().to(torch.int64), position_ids[0].detach().to(torch.int64))).cpu().numpy()
    ids, times = host[0], host[1]                               # one device-to-host copy
    chunks_v, chunks_a, n1s, n2s, nas = [], [], [], [], []   # per sample: (chunk, frame, slot, position) ...
    base = 0
    for b in range(ids.shape[0]):
        vpos = np.flatnonzero(ids[b] == video_id)
        apos = np.flatnonzero(ids[b] == audio_id)
        if vpos.size == 0 or apos.size == 0:
            which = "video" if vpos.size == 0 else "audio"
            raise UsageError(
                f"sample {b} has no {which} tokens (id {video_id if which == 'video' else audio_id}); OmniSIFT "
                "compresses audio-visual inputs only: run uncompressed for it, or check the token ids"
            )
        frames, fi = _frames(times[b, vpos])                     # distinct frame times, frame of each token
        counts = np.bincount(fi, minlength=frames.size)
        n_chunks = (frames.size + 1) // 2
        chunks_v.append((base + fi // 2, fi % 2, _slots(fi, counts), b * L + vpos))
        ca = np.searchsorted(frames[0::2], times[b, apos], side="right") - 1   # -1: before the first frame
        inside = ca >= 0
        ca, apos = ca[inside], apos[inside]
        na = np.bincount(ca, minlength=n_chunks)
        chunks_a.append((base + ca, _slots(ca, na), b * L + apos))
        n1s.append(counts[0::2])
        n2s.append(np.concatenate([counts[1::2], np.zeros(n_chunks - counts[1::2].size, dtype=counts.dtype)]))
        nas.append(na)
        base += n_chunks
    C = base
    n1, n2, na = (np.concatenate(x).astype(np.int64) for x in (n1s, n2s, nas))
    P = int(max(n1.max(), n2.max()))
    A = int(na.max()) if na.size else 0
    k_v = np.array([drop_count(int(n), rho_video) for n in n1], dtype=np.int64)
    k_t = np.where(n2 == n1, k_v, 0)                             # temporal only when frame 2 matches frame 1
    ctx = (n1 - k_v) + (n2 - k_t)
    n_keep = np.array([audio_keep_count(int(a), rho_audio, int(c)) for a, c in zip(na, ctx)], dtype=np.int64)
    do_audio = (ctx > 0) & (na > 1)

    vid_pos = np.full((2, C, P), -1, dtype=np.int64)
    cv, fv, sv, pv = (np.concatenate(x) for x in zip(*chunks_v))
    vid_pos[fv, cv, sv] = pv
    vid_valid = vid_pos >= 0
    first = vid_pos[0, :, 0]                                     # every chunk has a frame 1 token at slot 0
    vid_pos = np.where(vid_valid, vid_pos, first[None, :, None])
    aud_pos = np.full((C, A), -1, dtype=np.int64)
    caa, saa, paa = (np.concatenate(x) for x in zip(*chunks_a))
    aud_pos[caa, saa] = paa
    aud_valid = aud_pos >= 0
    aud_pos = np.where(aud_valid, aud_pos, first[:, None])
    vid_src = np.flatnonzero(vid_valid)
    aud_src = np.flatnonzero(aud_valid)
    ste_src = np.flatnonzero(aud_valid & do_audio[:, None])

    on_device = _to_device(device, dict(
        vid_pos=vid_pos, vid_valid=vid_valid, n1=n1, k_drop=np.stack([k_v, k_t]), ctx_count=ctx,
        aud_pos=aud_pos, aud_valid=aud_valid, n_keep=n_keep, do_audio=do_audio,
        vid_src=vid_src, vid_dst=vid_pos.reshape(-1)[vid_src], aud_src=aud_src, aud_dst=aud_pos.reshape(-1)[aud_src],
        ste_src=ste_src, ste_dst=aud_pos.reshape(-1)[ste_src],
    ))
    blocks = tuple((vid_pos[0, c, :n1[c]], vid_pos[1, c, :n2[c]] if n2[c] else None, bool(n2[c] == n1[c]))
                   for c in range(C))
    return _Tables(blocks=blocks, max_ctx=max(int(ctx.max()), 1), **on_device)


def _to_device(device: torch.device, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """All host tables in one host-to-device copy (one int64 buffer, then views; bool arrays cast back)."""
    buffer = torch.from_numpy(np.concatenate([a.reshape(-1).astype(np.int64, copy=False) for a in arrays.values()]))
    buffer = buffer.to(device)
    out, offset = {}, 0
    for name, a in arrays.items():
        view = buffer[offset:offset + a.size].view(a.shape)
        out[name] = view.to(torch.bool) if a.dtype == np.bool_ else view
        offset += a.size
    return out


def _frames(vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct frame times of video tokens with times `vt`, and each token's frame index."""
    step = vt[1:] != vt[:-1]
    if (vt[1:] >= vt[:-1]).all():                                # every real layout: O(n), no sort
        fi = np.concatenate([[0], np.cumsum(step)])
        return vt[np.concatenate([[True], step])], fi
    frames = np.unique(vt)
    return frames, np.searchsorted(frames, vt)


def _slots(group: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rank of each element within its group, in sequence order (groups need not be contiguous)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if (group[1:] >= group[:-1]).all():                          # already grouped: no sort
        return np.arange(group.size) - starts[group]
    order = np.argsort(group, kind="stable")
    slots = np.empty_like(order)
    slots[order] = np.arange(order.size) - starts[group[order]]
    return slots


def _check_inputs(embeds, input_ids, position_ids, selector) -> tuple[int, int, int]:
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or not embeds.is_floating_point():
        got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise UsageError(f"inputs_embeds must be a floating tensor [B, L, D]; got {got}")
    B, L, D = embeds.shape
    if not isinstance(input_ids, torch.Tensor) or tuple(input_ids.shape) != (B, L) or input_ids.is_floating_point():
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise UsageError(f"input_ids must be an integer tensor [B, L] = [{B}, {L}]; got {got}")
    if not isinstance(position_ids, torch.Tensor) or tuple(position_ids.shape) != (3, B, L):
        got = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
        raise UsageError(f"position_ids must be TMRoPE's [3, B, L] = [3, {B}, {L}] (rows t, h, w); got {got}")
    width = getattr(getattr(selector, "cfg", None), "d_model", None)
    if width is None:
        raise UsageError(f"selector must be an AudioSelector; got {type(selector).__name__}")
    if width != D:
        raise UsageError(
            f"the selector is {width} wide but the embeddings are {D} wide; use the compressor trained for this "
            f"thinker ({D} = {'7B' if D == 3584 else '3B' if D == 2048 else 'this model'})"
        )
    return B, L, D


def _raise_not_finite(embeds: torch.Tensor) -> None:
    if not bool(torch.isfinite(embeds).all()):
        raise UsageError("inputs_embeds contain NaN or Inf at video/audio tokens; check the encoders' outputs and dtype")
    raise UsageError("inputs_embeds are too large to square in float32 (norm above ~4e9); check the encoders' outputs")
