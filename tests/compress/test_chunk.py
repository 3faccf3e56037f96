"""The static per-chunk module: == compress_sequence on the same chunks, static shapes, traceable."""

from __future__ import annotations

import warnings

import pytest
import torch

from omnisift_edge.compress.chunk import ChunkCompressor, gather_positions
from omnisift_edge.compress.ratio import kept_per_chunk
from omnisift_edge.compress.sequence import compress_sequence
from omnisift_edge.errors import UsageError

from .layouts import IDS, build_layout


def chunk_as_sequence(video, audio, grid):
    """A batch of one-chunk samples whose chunk tokens are `video` [B, F, n_p, D] then `audio` [B, La, D]."""
    B, F, n_p, D = video.shape
    La = audio.shape[1]
    layout = build_layout([dict(n_frames=F, grid=grid, n_audio=La)] * B)
    ids = layout.input_ids[0]
    start = int((ids == IDS.video).nonzero()[0])
    embeds = torch.randn(B, ids.numel(), D)
    embeds[:, start:start + F * n_p + La] = torch.cat((video.reshape(B, F * n_p, D), audio), dim=1)
    return layout, embeds, start


@pytest.mark.parametrize("frames, grid, n_audio", [(2, (3, 4), 50), (1, (3, 4), 50), (2, (2, 5), 37), (2, (4, 4), 1)])
@pytest.mark.parametrize("rhos", [(0.7, 0.3), (0.5, 0.5), (0.0, 0.0)])
def test_equals_compress_sequence_on_the_same_chunks(selector, frames, grid, n_audio, rhos):
    gen = torch.Generator().manual_seed(frames * 100 + n_audio)
    n_p = grid[0] * grid[1]
    video = torch.randn(3, frames, n_p, 32, generator=gen)
    audio = torch.randn(3, n_audio, 32, generator=gen)
    module = ChunkCompressor(selector, *rhos)
    with torch.no_grad():
        kept, kept_index = module(video, audio)
    K = module.kept_count(frames, n_p, n_audio)
    assert K == kept_per_chunk(n_p, *rhos, audio_per_chunk=n_audio, frames_per_chunk=frames).total
    assert kept.shape == (3, K, 32) and kept_index.shape == (3, K) and kept_index.dtype == torch.int64
    assert (kept_index.diff(dim=1) > 0).all()                                  # ascending
    layout, embeds, start = chunk_as_sequence(video, audio, grid)
    mask = compress_sequence(embeds, layout.input_ids, layout.position_ids, selector, rho_video=rhos[0],
                             rho_audio=rhos[1], audio_token_id=IDS.audio, video_token_id=IDS.video,
                             training=False).keep_mask
    n = frames * n_p + n_audio
    for b in range(3):
        assert mask[b, start:start + n].nonzero().flatten().tolist() == kept_index[b].tolist()
        assert torch.equal(kept[b], embeds[b, start + kept_index[b]])


@pytest.mark.parametrize("ties", ["silence", "black", "both"])
def test_tied_chunks_keep_the_same_tokens_in_both_forms(selector, ties):
    """Silence and black static frames: the chunk module and the sequence form pick the same tokens."""
    gen = torch.Generator().manual_seed(7)
    video = torch.randn(2, 2, 12, 32, generator=gen)
    audio = torch.randn(2, 50, 32, generator=gen)
    if ties in ("silence", "both"):
        audio = audio[:, :1].expand_as(audio).clone()
    if ties in ("black", "both"):
        video = torch.zeros_like(video)
    module = ChunkCompressor(selector, 0.5, 0.3)
    with torch.no_grad():
        _, kept_index = module(video, audio)
    layout, embeds, start = chunk_as_sequence(video, audio, (3, 4))
    mask = compress_sequence(embeds, layout.input_ids, layout.position_ids, selector, rho_video=0.5, rho_audio=0.3,
                             audio_token_id=IDS.audio, video_token_id=IDS.video, training=False).keep_mask
    for b in range(2):
        assert mask[b, start:start + 2 * 12 + 50].nonzero().flatten().tolist() == kept_index[b].tolist()
    if ties in ("silence", "both"):      # every audio score ties: the lowest indices are kept
        assert kept_index[0, -35:].tolist() == list(range(24, 24 + 35))


def test_methods_agree_and_batch_rows_are_independent(selector):
    gen = torch.Generator().manual_seed(7)
    video = torch.randn(4, 2, 20, 32, generator=gen)
    video[1, 1] = video[1, 0]                        # a static-camera row: temporal ties
    audio = torch.randn(4, 50, 32, generator=gen)
    audio[2] = audio[2, :1].clone()                  # a silent row: audio score ties
    pairwise = ChunkCompressor(selector, 0.7, 0.3)
    sort = ChunkCompressor(selector, 0.7, 0.3, method="sort")
    with torch.no_grad():
        kept, index = pairwise(video, audio)
        assert torch.equal(index, sort(video, audio)[1])
        for b in range(4):
            one_kept, one_index = pairwise(video[b:b + 1], audio[b:b + 1])
            assert torch.equal(one_index[0], index[b]) and torch.allclose(one_kept[0], kept[b], atol=1e-6)
    assert index[1, 6:12].tolist() == list(range(34, 40))                     # frame 2: the first 14 dropped
    assert index[2, -35:].tolist() == [40 + i for i in range(35)]             # silence: the first 35 kept


@pytest.mark.parametrize("rhos", [(0.7, 0.3), (0.0, 0.0)])
def test_forward_valid_takes_one_count_per_row(selector, rhos):
    """A batch of chunks with their own valid counts (a stream pool's batch with a clip's short last chunks):
    row b's first kept_count[b] outputs are what `forward` keeps of row b's real part alone."""
    gen = torch.Generator().manual_seed(3)
    video, audio = torch.randn(4, 2, 20, 32, generator=gen), torch.randn(4, 50, 32, generator=gen)
    audio[3] = audio[3, :1].clone()                                          # silence: ties within one row
    grids, tokens = torch.tensor([2, 1, 2, 1]), torch.tensor([50, 13, 7, 1])
    module = ChunkCompressor(selector, *rhos)
    with torch.no_grad():
        kept, index, count = module.forward_valid(video, audio, grids, tokens)
        assert count.shape == (4,) and kept.shape[:2] == index.shape == (4, module.kept_count(2, 20, 50))
        for b in range(4):
            f, la = int(grids[b]), int(tokens[b])
            want_kept, want_index = module(video[b:b + 1, :f], audio[b:b + 1, :la])
            n = int(count[b])
            assert n == want_index.shape[1] and torch.equal(index[b, :n], want_index[0]), b
            assert torch.equal(kept[b, :n], want_kept[0])
        one = module.forward_valid(video[1:2], audio[1:2], grids[1:2], tokens[1:2])   # [1] counts: the same row
        assert torch.equal(one[1][0], index[1]) and one[2].tolist() == [int(count[1])]


def test_trace_has_no_data_dependent_shapes(selector):
    gen = torch.Generator().manual_seed(0)
    video, audio = torch.randn(2, 2, 16, 32, generator=gen), torch.randn(2, 50, 32, generator=gen)
    module = ChunkCompressor(selector, 0.7, 0.3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (video, audio), check_trace=False)
    graph = str(traced.graph)
    for op in ("aten::nonzero", "aten::masked_select", "aten::index(", "aten::index_put", "aten::unique", "prim::Loop"):
        assert op not in graph, op
    assert "aten::topk" in graph or "aten::sum" in graph
    # the trace is not specialised to the example's data
    other_video, other_audio = torch.randn(2, 2, 16, 32, generator=gen), torch.randn(2, 50, 32, generator=gen)
    with torch.no_grad():
        expected = module(other_video, other_audio)
        got = traced(other_video, other_audio)
    assert torch.equal(got[1], expected[1]) and torch.allclose(got[0], expected[0])


def test_onnx_export_has_no_nonzero(selector, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed; the ONNX check needs it")
    module = ChunkCompressor(selector, 0.7, 0.3).eval()
    path = tmp_path / "chunk.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 2, 16, 32), torch.randn(1, 50, 32)), str(path), dynamo=False,
                          opset_version=17, input_names=["video", "audio"], output_names=["kept", "kept_index"])
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"NonZero", "Loop", "If", "Unique", "Compress"}, ops
    assert "TopK" in ops and "GatherElements" in ops


def test_gather_positions():
    positions = torch.arange(3 * 10).view(3, 10)
    index = torch.tensor([[0, 3, 9], [1, 2, 8]])
    out = gather_positions(positions, index)
    assert out.shape == (3, 2, 3)
    assert out[:, 1].tolist() == [[1, 2, 8], [11, 12, 18], [21, 22, 28]]
    per_chunk = torch.stack((positions, positions + 100), dim=1)                # [3, B, n]
    assert gather_positions(per_chunk, index)[:, 1].tolist() == [[101, 102, 108], [111, 112, 118], [121, 122, 128]]
    with pytest.raises(UsageError, match=r"\[3, n\]"):
        gather_positions(torch.zeros(2, 10), index)


def test_bad_input_is_a_usage_error(selector):
    module = ChunkCompressor(selector, 0.7, 0.3)
    with pytest.raises(UsageError, match="F = 1 or 2"):
        module(torch.randn(1, 3, 4, 32), torch.randn(1, 5, 32))
    with pytest.raises(UsageError, match="audio must be"):
        module(torch.randn(1, 2, 4, 32), torch.randn(2, 5, 32))
    with pytest.raises(UsageError, match="wide"):
        module(torch.randn(1, 2, 4, 16), torch.randn(1, 5, 16))
    with pytest.raises(UsageError, match="dtype"):
        module(torch.randn(1, 2, 4, 32), torch.randn(1, 5, 32, dtype=torch.float64))
    with pytest.raises(UsageError, match="rho_video"):
        ChunkCompressor(selector, 1.0, 0.3)
    with pytest.raises(UsageError, match="AudioSelector"):
        ChunkCompressor(torch.nn.Linear(2, 2), 0.5, 0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_the_fp32_kept_set(selector, dtype):
    """Issue 13.1: scores are computed in fp32 inside the module, so an fp16/bf16 chunk keeps exactly
    what fp32 keeps for the same (rounded) weights and inputs: no ties made by rounding the scores.
    Near-identical audio tokens (a steady sound) score within fp16's rounding of each other."""
    gen = torch.Generator().manual_seed(3)
    video = torch.randn(4, 2, 12, 32, generator=gen).to(dtype)
    audio = (torch.randn(4, 1, 32, generator=gen) + 0.01 * torch.randn(4, 50, 32, generator=gen)).to(dtype)
    low = ChunkCompressor(selector.to(dtype), 0.5, 0.6).eval()
    assert low.selector is not selector and low.selector.v_proj.weight.dtype == torch.float32
    reference = ChunkCompressor(low.selector, 0.5, 0.6).eval()          # same rounded weights, fp32
    with torch.no_grad():
        kept, index = low(video, audio)
        _, expected = reference(video.float(), audio.float())
    selector.float()
    assert kept.dtype == dtype
    assert torch.equal(index, expected)
    converted = ChunkCompressor(selector, 0.5, 0.6).to(dtype)           # .to() keeps the selector fp32
    assert converted.selector.v_proj.weight.dtype == torch.float32


def test_half_precision_sequence_form_keeps_what_the_chunk_module_keeps(selector):
    """Issue 13.1, the whole-clip torch path: compress_sequence scores in fp32 at inference too, so a
    bf16 model's whole-clip forward and its stream keep the same near-tied audio tokens."""
    gen = torch.Generator().manual_seed(5)
    video = torch.randn(2, 2, 12, 32, generator=gen)
    audio = torch.randn(2, 1, 32, generator=gen) + 0.01 * torch.randn(2, 50, 32, generator=gen)
    layout, embeds, start = chunk_as_sequence(video, audio, (3, 4))
    half = selector.to(torch.bfloat16)
    embeds = embeds.to(torch.bfloat16)
    video, audio = video.to(torch.bfloat16), audio.to(torch.bfloat16)
    with torch.no_grad():
        _, kept_index = ChunkCompressor(half, 0.5, 0.6)(video, audio)
        mask = compress_sequence(embeds, layout.input_ids, layout.position_ids, half, rho_video=0.5, rho_audio=0.6,
                                 audio_token_id=IDS.audio, video_token_id=IDS.video, training=False).keep_mask
    assert half.v_proj.weight.dtype == torch.bfloat16                     # the caller's selector is untouched
    selector.float()
    for b in range(2):
        assert mask[b, start:start + 2 * 12 + 50].nonzero().flatten().tolist() == kept_index[b].tolist()
