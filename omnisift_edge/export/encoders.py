"""`vision_encoder.onnx` and `audio_encoder.onnx`: the thinker's towers for ONE chunk, static shapes.

The stock towers do not export: they loop over `cu_seqlens` in Python, call `.tolist()` and build
masks from data. For one chunk of fixed shape all of that bookkeeping is a constant, so the
wrappers here compute it once on the host, with the tower's own `get_window_index` and
`rot_pos_emb`, and keep it as buffers (graph initializers):
- `VisionChunkEncoder`: window order and its inverse, rotary cos/sin tables, and the segments the
  blocks attend within (one temporal grid step for full-attention blocks, one 112-pixel window of
  one grid step for the others), run as a batch of independent sequences;
- `AudioWindowEncoder`: the sinusoid positions of one 2-second window (whose 100 post-conv frames
  attend to each other only).
The forward passes call the tower's own submodules (patch embedding weight, blocks' norms,
projections and MLPs, merger, conv1/conv2, layers, avg_pooler, ln_post, proj); the modeling
file is not copied. See docs/export-encoders.md.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnisift_edge.errors import UsageError, require
from omnisift_edge.artifact.tensors import AUDIO_ENCODER, VISION_ENCODER, Dims, GraphSpec
from omnisift_edge.model.spec import OmniSpec

TWO_GB = 2 * 1024**3
_MASKED = -1e9   # additive score of a padding key (scores are float32 when it is added)
_BLOCK_SCORE_BYTES = 2 << 20   # a batched call's attention scores per chunk and query block (SegmentAttention)
_MAX_QUERY_BLOCKS = 8          # query blocks at most (each is its own MatMul-Softmax-MatMul in the graph)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def encoder_dims(thinker, height: int, width: int) -> Dims:
    """The encoder axes of `Dims` for frames of `height` x `width` pixels (multiples of 28)."""
    from omnisift_edge.model.preprocess import check_size

    spec = OmniSpec.from_thinker_config(thinker.config)
    height, width = check_size((height, width), spec)
    vision = thinker.config.vision_config
    return Dims(
        hidden=thinker.config.text_config.hidden_size,
        patch_dim=vision.in_channels * vision.temporal_patch_size * vision.patch_size**2,
        grid_h=height // spec.patch_size,
        grid_w=width // spec.patch_size,
        spatial_merge=spec.spatial_merge_size,
        grids_per_chunk=spec.grids_per_chunk,
        n_mels=spec.n_mels,
        window_frames=spec.audio_window_frames,
        window_audio_tokens=spec.audio_tokens_for_mel_frames(spec.audio_window_frames),
    )


class _Fp32Tables(nn.Module):
    """Buffers named in `_fp32` stay float32 through `.half()` / `.to(dtype)` (rotary tables, masks)."""

    _fp32: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in self._fp32:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).float())
        return self


class SegmentAttention(_Fp32Tables):
    """Softmax attention within contiguous segments of a sequence, from host-side `cu_seqlens`.

    Equal segments are a reshape into [n, L]. Unequal ones (edge windows) are gathered into
    [n, max L] rows; padding keys get `_MASKED` and padding queries are dropped when scattering
    back. Every index is a constant: no data-dependent shapes.
    """

    _fp32 = ("key_bias",)

    def __init__(self, cu_seqlens, device=None):
        super().__init__()
        cu = [int(c) for c in cu_seqlens]
        lengths = np.diff(cu)
        if len(lengths) == 0 or (lengths <= 0).any():
            raise ValueError(f"cu_seqlens must be strictly increasing from 0 (got {cu})")
        self.seq, self.n, self.L = cu[-1], len(lengths), int(lengths.max())
        for name in ("gather", "scatter", "key_bias"):
            self.register_buffer(name, None, persistent=False)
        if (lengths != self.L).any():
            slot = np.arange(self.L)                                            # [L]
            valid = slot[None, :] < lengths[:, None]                            # [n, L]
            gather = np.where(valid, np.asarray(cu[:-1])[:, None] + slot, 0)    # [n, L] token per slot
            scatter = np.flatnonzero(valid.reshape(-1))                         # [seq] slot per token
            bias = np.where(valid, 0.0, _MASKED)[:, None, None, :]              # [n, 1, 1, L]
            self.gather = torch.tensor(gather.reshape(-1), device=device)
            self.scatter = torch.tensor(scatter, device=device)
            self.key_bias = torch.tensor(bias, dtype=torch.float32, device=device)

    def forward(self, q, k, v, scaling: float, extra_bias=None):
        """q, k, v [*B, seq, H, hd] (*B: no axis for one sequence, or a leading batch axis: B sequences with the
        same segments, B*n segments in all); extra_bias float32 broadcast onto the scores [*B, n, H, L, L]
        (e.g. [*B, 1, 1, 1, L]: keys past a valid length) -> [*B, seq, H, hd]. (The caller merges H and hd with
        its own constant width: a width computed from traced sizes would leave the batched graphs' axes unknown.)"""
        lead, heads, hd = q.shape[:-3], q.shape[-2], q.shape[-1]
        if self.gather is not None:
            q, k, v = (t.index_select(-3, self.gather) for t in (q, k, v))     # [*B, n*L, H, hd]
        q, k, v = (t.reshape(*lead, self.n, self.L, heads, hd).transpose(-3, -2) for t in (q, k, v))  # [*B, n, H, L, hd]
        keys = k.transpose(-2, -1)                                              # [*B, n, H, hd, L]
        rows = -(-self.L // self.query_blocks(heads)) if lead else self.L      # queries per block (batched only)
        out = torch.cat([self._block(block, keys, v, scaling, extra_bias) for block in q.split(rows, dim=-2)], -2) \
            if rows < self.L else self._block(q, keys, v, scaling, extra_bias)  # [*B, n, H, L, hd]
        out = out.transpose(-3, -2).reshape(*lead, self.n * self.L, heads, hd)  # [*B, n*L, H, hd]
        if self.scatter is not None:
            out = out.index_select(-3, self.scatter)                           # [*B, seq, H, hd]
        return out


    def query_blocks(self, heads: int) -> int:
        """Query blocks of a batched call: one chunk's float32 scores [n, H, L, L] cut along the queries into at most
        _MAX_QUERY_BLOCKS pieces of about _BLOCK_SCORE_BYTES. A batch of B chunks otherwise writes B times the
        one-chunk scores before its softmax reads them: past the CPU's last-level cache at B = 4 (448 px: 16 MiB a
        chunk at 2 heads), so each row cost more batched than alone. The one-chunk graph keeps one block."""
        per_chunk = self.n * heads * self.L * self.L * 4
        return int(min(_MAX_QUERY_BLOCKS, self.L, max(1, -(-per_chunk // _BLOCK_SCORE_BYTES))))

    def _block(self, q, keys, v, scaling: float, extra_bias):
        """Softmax attention of query rows q [*B, n, H, Lq, hd] over every key of their segment -> [*B, n, H, Lq, hd]."""
        scores = (torch.matmul(q, keys) * scaling).float()                      # [*B, n, H, Lq, L]
        if self.key_bias is not None:
            scores = scores + self.key_bias                                     # [n, 1, 1, L]
        if extra_bias is not None:                                              # keys past a valid length
            scores = scores + extra_bias
        return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


def _rotate_half(x):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)   # hd: a constant on purpose
        half = int(x.shape[-1]) // 2    # a constant: a traced size adds Shape/Gather/Div ops to the batched graph
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class VisionChunkEncoder(_Fp32Tables):
    """pixel_values [chunk_patches, 1176] -> video_embeds [chunk_video_tokens, D] for one chunk.

    Equals `thinker.get_video_features(pixel_values, [[grids_per_chunk, grid_h, grid_w]])`. Holds
    the tower by reference: casting the wrapper casts the tower (the exporters cast a copy). With a
    leading batch axis (pixel_values [B, chunk_patches, 1176], B chunks of the same grid: the stream
    pool's `vision_encoder_batch`) row b of the output is the one-chunk output of row b.
    """

    _fp32 = ("rope_cos", "rope_sin")

    def __init__(self, visual: nn.Module, *, grid_h: int, grid_w: int, grids_per_chunk: int = 2):
        super().__init__()
        m = visual.spatial_merge_size
        if grid_h <= 0 or grid_w <= 0 or grid_h % m or grid_w % m:
            raise UsageError(f"the vision grid must be a positive multiple of {m} patches (got {grid_h}x{grid_w}); "
                             f"use a resolution that is a multiple of {m * visual.patch_size} pixels")
        self.visual = visual
        self.unit = m * m                                          # patches per merged token
        self.seq = grids_per_chunk * grid_h * grid_w              # patches per chunk
        device = next(visual.parameters()).device
        grid = torch.tensor([[grids_per_chunk, grid_h, grid_w]])
        with torch.no_grad():
            window_index, cu_windows = visual.get_window_index(grid)   # [seq/unit] merged tokens in window order
            freqs = visual.rot_pos_emb(grid).float()                   # [seq, hd/2]
        cu_windows = torch.unique_consecutive(torch.tensor(cu_windows)).tolist()
        freqs = freqs.reshape(-1, self.unit, freqs.shape[-1])[window_index].reshape(self.seq, -1)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]           # [seq, 1, hd] in window order
        self.register_buffer("window_index", window_index.to(device), persistent=False)
        self.register_buffer("reverse_index", torch.argsort(window_index).to(device), persistent=False)
        self.register_buffer("rope_cos", emb.cos().to(device), persistent=False)
        self.register_buffer("rope_sin", emb.sin().to(device), persistent=False)
        per_grid = grid_h * grid_w
        self.full = SegmentAttention(range(0, self.seq + 1, per_grid), device)   # one grid step each
        self.windows = SegmentAttention(cu_windows, device)                      # one window of one step each
        self.full_blocks = set(visual.fullatt_block_indexes)

    @classmethod
    def from_dims(cls, visual: nn.Module, dims: Dims) -> "VisionChunkEncoder":
        return cls(visual, grid_h=dims.grid_h, grid_w=dims.grid_w, grids_per_chunk=dims.grids_per_chunk)

    def _rope(self, x):                                            # [*B, seq, H, hd], rotated in float32
        x32 = x.float()
        return (x32 * self.rope_cos + _rotate_half(x32) * self.rope_sin).to(x.dtype)   # tables [seq, 1, hd]

    def _attention(self, attn: nn.Module, x, segments: SegmentAttention, lead):   # x [N, C], N = B·seq
        shape = (*lead, self.seq, attn.num_heads, attn.head_dim)            # static but the batch axis
        q = self._rope(attn.q(x).reshape(shape))                             # [*B, seq, H, hd]
        k = self._rope(attn.k(x).reshape(shape))
        v = attn.v(x).reshape(shape)
        out = segments(q, k, v, attn.scaling).reshape(-1, attn.proj.in_features)   # [N, C]
        return attn.proj(out)                                               # [N, C]

    def forward(self, pixel_values):               # [*B, seq, 1176]: one chunk, or B chunks (a leading batch axis)
        """The tokens of all chunks go through the norms, projections and MLPs as one [N, C] matrix (N = B·seq:
        the one-chunk graph's ops and weights, in the batched graph too); attention and the window order are
        per chunk."""
        visual, lead = self.visual, pixel_values.shape[:-2]
        weight = visual.patch_embed.proj.weight                    # Conv3d [C, 3, 2, 14, 14], kernel == stride
        width = weight.shape[0]                                    # C
        x = F.linear(pixel_values.reshape(-1, weight[0].numel()).to(weight.dtype), weight.reshape(width, -1))   # [N, C]
        x = x.reshape(*lead, self.seq // self.unit, self.unit, width).index_select(-3, self.window_index)
        x = x.reshape(-1, width)                                   # [N, C] window order within each chunk
        for i, blk in enumerate(visual.blocks):
            segments = self.full if i in self.full_blocks else self.windows
            x = x + self._attention(blk.attn, blk.norm1(x), segments, lead)
            x = x + blk.mlp(blk.norm2(x))
        out = visual.merger.mlp[-1].out_features                   # D (a constant: the graph's output axis stays static)
        x = visual.merger(x).reshape(*lead, self.seq // self.unit, out)   # [*B, seq/unit, D] window order
        return x.index_select(-2, self.reverse_index)              # [*B, seq/unit, D] raster order


class AudioWindowEncoder(nn.Module):
    """input_features [n_mels, window_frames] (+ valid_frames [1]) -> audio_embeds [tokens, D] for one window.

    Equals the tower on that window alone, and the window's slice of whole-clip features. The
    default is a full window (2 * n_window = 200 frames -> 50 tokens); a shorter last window can be
    built in torch (`window_frames=n`). The exported graph takes a full window and `valid_frames`
    n <= 200: frames from n on are zeroed before and after conv1 and their keys masked, which is
    what transformers does to a clip's last, short window (padded to the longest, masked after
    conv1), so the first ((n - 1) // 2 + 1) // 2 output rows equal the short window's; the rest are
    padding. With a leading batch axis (input_features [B, n_mels, frames], valid_frames [B]: the stream
    pool's `audio_encoder_batch`) row b of the output is the one-window output of row b with its own count.
    """

    def __init__(self, audio_tower: nn.Module, *, window_frames: int | None = None):
        super().__init__()
        full = 2 * audio_tower.n_window
        frames = full if window_frames is None else int(window_frames)
        if not 0 < frames <= full:
            raise UsageError(f"an audio window holds 1 to {full} mel frames (got {frames}); "
                             "split longer audio into 2-second windows")
        self.tower = audio_tower
        self.frames = frames
        self.after_cnn = (frames - 1) // 2 + 1                     # frames after conv2 (stride 2)
        positions = audio_tower.positional_embedding.positional_embedding[: self.after_cnn]
        self.register_buffer("positions", positions.detach().clone(), persistent=False)   # [T, d]
        self.register_buffer("frame_index", torch.arange(frames, device=positions.device), persistent=False)
        self.register_buffer("cnn_index", torch.arange(self.after_cnn, device=positions.device), persistent=False)
        self.attend = SegmentAttention([0, self.after_cnn], positions.device)     # the whole window

    @property
    def tokens(self) -> int:
        return self.after_cnn // 2

    def _attention(self, attn: nn.Module, x, bias, lead):           # x [N, d], N = B·T
        q, k, v = (proj(x).reshape(*lead, self.after_cnn, attn.num_heads, attn.head_dim)   # [*B, T, H, hd]
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        out = self.attend(q, k, v, attn.scaling, bias).reshape(-1, attn.out_proj.in_features)   # [N, d]
        return attn.out_proj(out)                                          # [N, d]

    def forward(self, input_features, valid_frames=None):  # [*B, n_mels, frames], [B] or [1] int64 (*B: batch axis)
        """As `VisionChunkEncoder.forward`: the windows' frames as one [N, d] matrix (N = B·T) through the
        layers' norms, projections and MLPs; convolutions, attention and pooling per window."""
        tower, lead = self.tower, input_features.shape[:-2]
        x = input_features.to(tower.conv1.weight.dtype)
        x = x if lead else x[None]                                 # [B|1, n_mels, frames]
        bias = None
        if valid_frames is not None:
            valid = valid_frames.unsqueeze(-1)                     # [B|1, 1]
            keep = (self.frame_index < valid).to(x.dtype).unsqueeze(-2)   # [B|1, 1, frames]
            x = F.gelu(tower.conv1(x * keep)) * keep               # [B|1, d, frames], padding zeroed
            after = (valid - 1) // 2 + 1                           # [B|1, 1] valid frames after conv2
            bias = (self.cnn_index >= after).float() * _MASKED     # [B|1, T]: 0 for real frames, _MASKED after
            bias = bias[:, None, None, None, :] if lead else bias[0]   # [B, 1, 1, 1, T] onto the scores, or [T]
        else:
            x = F.gelu(tower.conv1(x))                             # [B|1, d, frames]
        width = tower.conv2.out_channels                           # d
        x = F.gelu(tower.conv2(x)).transpose(-1, -2) + self.positions.to(x.dtype)   # [B|1, T, d]
        x = x.reshape(-1, width)                                   # [N, d]
        for layer in tower.layers:
            x = x + self._attention(layer.self_attn, layer.self_attn_layer_norm(x), bias, lead)
            h = layer.activation_fn(layer.fc1(layer.final_layer_norm(x)))
            x = x + layer.fc2(h)                                   # [N, d]
            if x.dtype == torch.float16:                           # as the stock layer does
                bound = torch.finfo(torch.float16).max - 1000
                x = x.clamp(min=-bound, max=bound)
        x = tower.avg_pooler(x.reshape(-1, self.after_cnn, width).transpose(-1, -2))   # [B|1, d, T/2]
        x = tower.proj(tower.ln_post(x.transpose(-1, -2).reshape(-1, width)))         # [N/2, D]
        return x.reshape(*lead, self.tokens, tower.proj.out_features)                 # [*B, T/2, D]


# ------------------------------------------------------------------------------------------- export

def _param_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    item = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in module.parameters()) * item


def _in_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module` in `dtype`: itself when it already is, else a copy (the caller's thinker is not cast)."""
    if next(module.parameters()).dtype == dtype:
        return module
    return copy.deepcopy(module).to(dtype)


def write_traced(module: nn.Module, example, spec: GraphSpec, dims: Dims, path: Path, *,
                 opset: int, external_data: bool, declare_outputs: bool = False) -> Path:
    """Trace `module` into `path` atomically: staged beside `path`, data file first (export.onnx_io); the
    graph's names, shapes and dynamic axes (a batched form's `batch_size`) are `spec`'s, checked after.
    `declare_outputs`: output axes the exporter could not size (it names them after the last op) get the
    declared fixed sizes (the compressor's kept_tokens after its batch-sized gathers; its check runs it)."""
    onnx = require("onnx", extra="export")
    from omnisift_edge.export.onnx_io import staged_graph, write_graph

    with staged_graph(path) as final:
        traced = final.parent / "traced.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # the dynamo exporter needs onnxscript (not a dependency); TorchScript tracing is exact here
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(module, example if isinstance(example, tuple) else (example,), str(traced),
                              input_names=spec.input_names,
                              output_names=spec.output_names, opset_version=opset, dynamo=False,
                              do_constant_folding=True, dynamic_axes=spec.dynamic_axes() or None)
        proto = onnx.load(str(traced))                            # external data (if torch wrote any) loaded
        proto.graph.name = spec.name
        if declare_outputs:
            _declare_output_sizes(proto, spec, dims)
        _check_io(proto, spec, dims, onnx.helper.tensor_dtype_to_np_dtype)
        float_example = example[0] if isinstance(example, tuple) else example
        external = external_data or _param_bytes(module, float_example.dtype) > TWO_GB - (64 << 20)
        write_graph(proto, final, external_data=external)
        onnx.checker.check_model(str(final))
    return Path(path)


def _declare_output_sizes(proto, spec: GraphSpec, dims: Dims) -> None:
    """Give the outputs' unsized axes (a name the exporter made up) the sizes `spec` declares for them."""
    for declared, actual in zip(spec.outputs, proto.graph.output):
        for want, dim in zip(declared.shape(dims), actual.type.tensor_type.shape.dim):
            if isinstance(want, int) and not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = want


def _check_io(proto, spec: GraphSpec, dims: Dims, np_dtype) -> None:
    """The traced graph's inputs/outputs must be the declared names and shapes (a bug otherwise)."""
    for declared, actual in ((spec.inputs, proto.graph.input), (spec.outputs, proto.graph.output)):
        got = [(t.name, [d.dim_value or d.dim_param for d in t.type.tensor_type.shape.dim]) for t in actual]
        want = [(t.name, t.shape(dims)) for t in declared]
        if got != want:
            raise RuntimeError(f"{spec.name}: traced graph has {got}, tensors.py declares {want}")
        for t, d in zip(actual, declared):
            if (np.dtype(np_dtype(t.type.tensor_type.elem_type)).kind == "f") != (d.dtype == "float"):
                raise RuntimeError(f"{spec.name}: {t.name} is not a {d.dtype} tensor")


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in _DTYPES:
        raise UsageError(f"--dtype must be fp32 or fp16 for the encoders (got {dtype!r})")
    return _DTYPES[dtype]


def example_pixels(dims: Dims, dtype=torch.float32, seed: int = 0, device="cpu"):
    """Random normalized patches [chunk_patches, patch_dim] (CLIP-normalized pixels are ~N(0, 1))."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dims.size("chunk_patches"), dims.patch_dim, generator=gen).to(device, dtype)


def example_features(dims: Dims, dtype=torch.float32, seed: int = 0, device="cpu"):
    """Random log-mel [n_mels, window_frames] in Whisper's scaled range (about [-1.5, 1.5])."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(dims.n_mels, dims.window_frames, generator=gen) * 3 - 1.5).to(device, dtype)


def export_vision_encoder(thinker, dims: Dims, path: Path, *, dtype: str = "fp32", opset: int = 17,
                          external_data: bool = False) -> Path:
    """Trace `VisionChunkEncoder` for the chunk grid of `dims` into `path` (written atomically)."""
    torch_dtype = _torch_dtype(dtype)
    module = VisionChunkEncoder.from_dims(_in_dtype(thinker.visual, torch_dtype), dims).eval()
    example = example_pixels(dims, torch_dtype, device=next(module.parameters()).device)
    return write_traced(module, example, VISION_ENCODER, dims, path, opset=opset, external_data=external_data)


def export_audio_encoder(thinker, dims: Dims, path: Path, *, dtype: str = "fp32", opset: int = 17,
                         external_data: bool = False) -> Path:
    """Trace `AudioWindowEncoder` for one full window into `path` (written atomically)."""
    torch_dtype = _torch_dtype(dtype)
    tower = _in_dtype(thinker.audio_tower, torch_dtype)
    if 2 * tower.n_window != dims.window_frames:
        raise UsageError(f"the audio tower attends within {2 * tower.n_window} mel frames but dims say "
                         f"{dims.window_frames}; build Dims with encoder_dims(thinker, H, W)")
    module = AudioWindowEncoder(tower).eval()
    device = next(module.parameters()).device
    example = (example_features(dims, torch_dtype, device=device), torch.tensor([dims.window_frames], device=device))
    return write_traced(module, example, AUDIO_ENCODER, dims, path, opset=opset, external_data=external_data)


# --------------------------------------------------------------------------------------- validation

@dataclass(frozen=True)
class EncoderCheck:
    """ONNX Runtime (CPU) against PyTorch."""

    max_abs: float
    max_rel: float      # largest |ort - torch| / |torch| over elements with |torch| > atol
    ok: bool            # every element within atol + rtol * |torch| (numpy.allclose's rule)
    atol: float         # absolute (already scaled when the check was asked relative to ref_max)
    rtol: float
    ref_max: float      # max |torch|: the output's scale

    def worst(self, other: "EncoderCheck") -> "EncoderCheck":
        return EncoderCheck(max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel),
                            self.ok and other.ok, max(self.atol, other.atol), self.rtol,
                            max(self.ref_max, other.ref_max))


def validate_encoder(onnx_path: Path, torch_module: nn.Module, example_input, *, atol: float, rtol: float,
                     relative_atol: bool = False, valid: int | None = None, rows: int | None = None) -> EncoderCheck:
    """Run the graph on `example_input` in ONNX Runtime's CPU provider and compare with `torch_module`.

    Both see the input rounded to the graph's input dtype. `relative_atol`: atol is a fraction of
    max |torch| (real models' embeddings are 100x the tiny default's). `valid`: the graph's second
    input (a valid-length count; the torch module sees the input cropped to it), `rows`: the output
    rows compared (the valid ones).
    """
    from omnisift_edge.artifact.onnx_runtime import ort_session

    session = ort_session(onnx_path)
    graph_input, graph_output = session.get_inputs()[0], session.get_outputs()[0]
    feed_dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
    feed = torch.as_tensor(example_input).detach().cpu().numpy().astype(feed_dtype)   # both see these values
    feeds = {graph_input.name: feed}
    if len(session.get_inputs()) > 1:                              # a valid-length input: the whole input by default
        feeds[session.get_inputs()[1].name] = np.array([valid or feed.shape[-1]], np.int64)
    param = next(torch_module.parameters())
    cropped = feed if valid is None else feed[..., :valid]
    with torch.no_grad():
        want = torch_module(torch.from_numpy(np.ascontiguousarray(cropped)).to(param.device, param.dtype))
    want = want.float().cpu().numpy()[:rows]
    got = session.run([graph_output.name], feeds)[0][:len(want)]
    return compare_outputs(got, want, atol=atol, rtol=rtol, relative_atol=relative_atol)


def compare_outputs(got: np.ndarray, want: np.ndarray, *, atol: float, rtol: float,
                    relative_atol: bool = False) -> EncoderCheck:
    """A graph's output `got` against PyTorch's `want` (same shape, else not ok) under numpy's allclose rule."""
    ref_max = float(np.abs(want).max())
    atol = atol * ref_max if relative_atol else atol
    diff = np.abs(got.astype(np.float32) - want) if got.shape == want.shape else np.full(1, np.inf)
    if not np.isfinite(diff).all():
        return EncoderCheck(float("inf"), float("inf"), False, atol, rtol, ref_max)
    big = np.abs(want) > atol
    max_rel = float((diff[big] / np.abs(want[big])).max()) if big.any() else 0.0
    ok = bool((diff <= atol + rtol * np.abs(want)).all())
    return EncoderCheck(float(diff.max()), max_rel, ok, atol, rtol, ref_max)


# (atol as a fraction of max |torch|, rtol) for a graph of each dtype against the torch module
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 5e-2)}


def clip_inputs(thinker, dims: Dims, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One generated 2-second chunk: (pixel patches [chunk_patches, 1176], log-mel [n_mels, 200])."""
    from omnisift_edge.model.preprocess import log_mel, video_patches
    from omnisift_edge.model.synthetic import synthetic_clip

    spec = OmniSpec.from_thinker_config(thinker.config)
    size = (dims.grid_h * spec.patch_size, dims.grid_w * spec.patch_size)
    clip = synthetic_clip(spec.seconds_per_chunk, *size, fps=spec.fps, sample_rate=spec.sample_rate,
                          seed=seed, events=(0.5,))
    return video_patches(clip.frames, spec, size=size)[0], log_mel(clip.pcm, spec)


def _validate(path, module, inputs, dtype: str) -> EncoderCheck:
    atol, rtol = TOLERANCES[dtype]
    checks = [validate_encoder(path, module, x, atol=atol, rtol=rtol, relative_atol=True) for x in inputs]
    return checks[0].worst(checks[1])


def validate_vision_encoder(path: Path, thinker, dims: Dims, *, dtype: str = "fp32") -> EncoderCheck:
    """The exported vision graph against `VisionChunkEncoder` on random and generated frames."""
    module = VisionChunkEncoder.from_dims(thinker.visual, dims).eval()
    inputs = (example_pixels(dims, seed=1), clip_inputs(thinker, dims)[0])
    return _validate(path, module, inputs, dtype)


def validate_audio_encoder(path: Path, thinker, dims: Dims, *, dtype: str = "fp32") -> EncoderCheck:
    """The exported audio graph against `AudioWindowEncoder` on random and generated log-mel."""
    module = AudioWindowEncoder(thinker.audio_tower).eval()
    inputs = (example_features(dims, seed=1), clip_inputs(thinker, dims)[1])
    check = _validate(path, module, inputs, dtype)
    atol, rtol = TOLERANCES[dtype]
    for n in SHORT_WINDOWS:     # a clip's last, short window: valid_frames against the tower on n frames alone
        short = AudioWindowEncoder(thinker.audio_tower, window_frames=n).eval()
        check = check.worst(validate_encoder(path, short, inputs[1], atol=atol, rtol=rtol, relative_atol=True,
                                             valid=n, rows=short.tokens))
    return check


SHORT_WINDOWS = (5, 101, 150)   # valid log-mel frames the audio graph's check also runs (odd, even, both halves)
