"""`compressor_r{ratio}.onnx`: OmniSIFT (STVP + VGAS) for one chunk, with a fixed kept count.

The graph wraps the static per-chunk module (`compress.chunk.ChunkCompressor`, pairwise-rank tie
rule: no reliance on any backend's TopK tie order) and also gathers the kept tokens' 3-row
positions, so a runtime feeds the decoder straight from its outputs. One graph per ratio; K is a
constant of each graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omnisift_edge.compress.chunk import ChunkCompressor, gather_positions
from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.export.onnx_io import atomic_path
from omnisift_edge.artifact.tensors import COMPRESSOR, Dims


class CompressorGraph(nn.Module):
    """video [1, 2, n_p, D], audio [1, La, D], chunk positions [3, n], valid grids [1], valid audio
    tokens [1] -> kept, positions, index, kept count. A whole chunk has 2 grids and La audio tokens; a
    clip's short last chunk fewer (padding after them): its first `kept count` outputs are what the
    per-chunk module keeps of the real part alone (`ChunkCompressor.forward_valid`). The same module
    traced with a leading batch of B chunks (video [B, 2, n_p, D], audio [B, La, D], positions [3, B, n],
    counts [B]) is `compressor_batch_r*`: every count, rank and gather is per row."""

    def __init__(self, selector: nn.Module, rho_video: float, rho_audio: float):
        super().__init__()
        self.chunk = ChunkCompressor(selector, rho_video, rho_audio, method="pairwise")

    def forward(self, video_embeds, audio_embeds, chunk_position_ids, valid_grids, valid_audio_tokens):
        kept, kept_index, count = self.chunk.forward_valid(video_embeds, audio_embeds, valid_grids,
                                                           valid_audio_tokens)   # [1, K, D], [1, K], [1]
        positions = gather_positions(chunk_position_ids, kept_index)       # [3, 1, K]
        return kept, positions, kept_index, count


def compressor_file(ratio: float) -> str:
    """File name of the graph for `ratio` (e.g. compressor_r0.25.onnx)."""
    return f"compressor_r{ratio:g}.onnx"


def example_inputs(dims: Dims, dtype: torch.dtype, seed: int = 0, *, ties: str | None = None):
    """Generated inputs: random embeddings, or exact ties ('frames': identical frames and one
    repeated token per frame, like a black static scene; 'silence': identical audio tokens)."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(1, dims.grids_per_chunk, dims.tokens_per_frame, dims.hidden, generator=gen)
    audio = torch.randn(1, dims.window_audio_tokens, dims.hidden, generator=gen)
    if ties in ("frames", "both"):
        video = video[:, :1, :1].expand_as(video).clone()                   # every token identical
    if ties in ("silence", "both"):
        audio = audio[:, :1].expand_as(audio).clone()
    n = dims.size("chunk_tokens")
    positions = torch.from_numpy(np.stack([np.arange(n) // 7, np.arange(n) % 5, np.arange(n) % 3]).astype(np.int64))
    valid = torch.tensor([dims.grids_per_chunk]), torch.tensor([dims.window_audio_tokens])   # a whole chunk
    return video.to(dtype), audio.to(dtype), positions + 100, *valid


# (valid grids, valid audio tokens) of the short last chunks the graph's check also runs
SHORT_CHUNKS = ((1, 13), (1, 1), (2, 25))


def case_inputs(dims: Dims, dtype: torch.dtype, seed: int = 0, *, ties: str | None = None,
                valid: tuple[int, int] | None = None):
    """`example_inputs`, and with `valid` (grids, audio tokens) a short last chunk: padding after the real part."""
    inputs = example_inputs(dims, dtype, seed, ties=ties)
    if valid is None:
        return inputs
    return (*inputs[:3], torch.tensor([valid[0]]), torch.tensor([valid[1]]))


def export_compressor(selector: nn.Module, dims: Dims, rho_video: float, rho_audio: float, path: Path, *,
                      dtype: str = "fp32", opset: int = 17) -> Path:
    """Trace the chunk compressor for `dims` and these drops into `path` (written atomically)."""
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    graph = CompressorGraph(selector, rho_video, rho_audio).to(torch_dtype).eval()
    inputs = example_inputs(dims, torch_dtype)
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(graph, inputs, str(tmp), input_names=COMPRESSOR.input_names,
                          output_names=COMPRESSOR.output_names, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return Path(path)


@dataclass(frozen=True)
class CompressorCheck:
    """ORT against PyTorch on generated inputs, including exact ties."""

    cases: int
    index_equal: bool        # kept indices identical in every case (the contract)
    positions_equal: bool
    max_abs: float           # kept embeddings (gathered, so exact unless dtype casts differ)

    @property
    def ok(self) -> bool:
        return self.index_equal and self.positions_equal and self.max_abs <= 1e-6


def validate_compressor(path: Path, selector: nn.Module, dims: Dims, rho_video: float, rho_audio: float, *,
                        dtype: str = "fp32", seeds: int = 3) -> CompressorCheck:
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    graph = CompressorGraph(selector, rho_video, rho_audio).to(torch_dtype).eval()
    session = ort_session(path)
    index_equal = positions_equal = True
    max_abs, cases = 0.0, 0
    short = [(None, 0, valid) for valid in SHORT_CHUNKS]
    for ties, seed, valid in [(t, s, None) for t in (None, "frames", "silence", "both")
                              for s in range(seeds if t is None else 1)] + short:
        inputs = case_inputs(dims, torch_dtype, seed, ties=ties, valid=valid)
        with torch.no_grad():
            kept, positions, index = reference_outputs(graph, inputs)
        feeds = dict(zip(COMPRESSOR.input_names, (t.numpy() for t in inputs)))
        o_kept, o_positions, o_index, o_count = session.run(COMPRESSOR.output_names, feeds)
        n = int(o_count[0])
        o_kept, o_positions, o_index = o_kept[:, :n], o_positions[..., :n], o_index[:, :n]
        index_equal &= bool(np.array_equal(o_index, index.numpy()))
        positions_equal &= bool(np.array_equal(o_positions, positions.numpy()))
        diff = np.abs(o_kept.astype(np.float32) - kept.float().numpy()) if o_kept.shape == kept.shape else [np.inf]
        max_abs = max(max_abs, float(np.max(diff)))
        cases += 1
    return CompressorCheck(cases, index_equal, positions_equal, max_abs)


def reference_outputs(graph: CompressorGraph, inputs):
    """What the per-chunk module keeps of the inputs' real part alone (the contract the graph keeps)."""
    video, audio, positions, grids, audio_tokens = inputs
    f, la = int(grids[0]), int(audio_tokens[0])
    real = positions[:, :f * video.shape[2] + la]          # the real chunk's positions come first, as its tokens do
    kept, index = graph.chunk(video[:, :f], audio[:, :la])                    # [1, K', D], [1, K']
    return kept, gather_positions(real, index), index
