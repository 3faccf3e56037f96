"""Activation-aware symmetric INT4 scales (AWQ-style), folded into the thinker before export.

RTN (export/decoder/quantize.py) gives every input channel k of a linear layer W [N, K] the same treatment;
AWQ (Lin et al., 2023) observes that channels with large activations matter more and scales them up
before quantizing: W' = W diag(s), x' = x / s, so x' W'^T = x W^T exactly in float, while the
rounding error of the salient columns shrinks by s. The division by s is folded into what produces x:

    q_proj, k_proj, v_proj  <- input_layernorm.weight / s        (one s for the three: one input)
    gate_proj, up_proj      <- post_attention_layernorm.weight / s
    down_proj               <- up_proj's output rows / s         (x = act(gate) * up)
    o_proj                  <- v_proj's output rows / s, only without GQA (kv heads == heads); else kept

so the exported graphs hold plain (scaled) weights and norms: nothing new for ONNX Runtime or
TensorRT, and the int4 quantizer stays the symmetric RTN one (zero point 0, which TensorRT needs).
s = mean|x|^alpha per input channel (normalized by sqrt(max * min)), alpha searched on a grid of
`grid` points in [0, 1) per group to minimize the group's output error on the calibration rows
with its weights RTN-quantized; alpha = 0 is s = 1, i.e. RTN itself, so the search never picks a
scaling worse than RTN on the calibration rows.

The calibration rows are the export's own inputs: generated clips (or the user's
`--calibration-data` clips) pushed through the PyTorch stream — encoders, the OmniSIFT compressor
and the real prompt layout — then a question and a few greedy answer tokens (`collect_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from omnisift_edge.errors import UsageError, require

METHODS = ("awq", "rtn")
DEFAULT_METHOD = "awq"
GRID = 20                      # alpha in {0, 1/20, ..., 19/20}
MAX_ROWS = 1024                # calibration rows kept per group (evenly spaced), bounds the search's cost
CLIP_SECONDS = 4.0             # each generated calibration clip: two whole chunks
CLIPS = 3                      # generated clips when no --calibration-data is given
QUESTION = "What happens when the sound plays?"
ANSWER_TOKENS = 8


@dataclass(frozen=True)
class AwqGroup:
    """One scaling: the linears reading one input, and what the 1/s is folded into."""

    prev: str                  # module path: a norm (weight [K]) or a linear whose output rows are x's channels
    linears: tuple[str, ...]   # module paths of the linears W [N, K] scaled by s
    alpha: float = 0.0         # the chosen exponent (0: RTN)
    error_rtn: float = 0.0     # the group's squared output error on the calibration rows, RTN
    error_awq: float = 0.0     # the same with the chosen scales


@dataclass(frozen=True)
class AwqReport:
    """What `apply_awq` did: per group the chosen alpha and errors; what calibrated it."""

    groups: tuple[AwqGroup, ...]
    calibration: dict = field(default_factory=dict)   # {"source": generated | files, "clips": [...], "rows": n}
    skipped: tuple[str, ...] = ()                      # linears left at RTN (o_proj under GQA)

    def record(self) -> dict:
        rtn = sum(g.error_rtn for g in self.groups)
        awq = sum(g.error_awq for g in self.groups)
        return {"method": "awq", "grid": GRID, "calibration": self.calibration, "groups": len(self.groups),
                "alpha_mean": round(sum(g.alpha for g in self.groups) / max(1, len(self.groups)), 4),
                "output_error_ratio": round(awq / rtn, 4) if rtn else None, "kept_rtn": list(self.skipped),
                "folded_into": "input_layernorm, post_attention_layernorm, up_proj rows (v_proj rows without GQA)"}


def layer_groups(thinker) -> tuple[list[AwqGroup], list[str]]:
    """The scaling groups of every decoder layer, and the linears left at RTN (o_proj under GQA)."""
    text = thinker.config.text_config
    gqa = text.num_key_value_heads != text.num_attention_heads
    groups, skipped = [], []
    for i in range(text.num_hidden_layers):
        p = f"model.layers.{i}"
        groups.append(AwqGroup(f"{p}.input_layernorm", tuple(f"{p}.self_attn.{n}_proj" for n in "qkv")))
        groups.append(AwqGroup(f"{p}.post_attention_layernorm", (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj")))
        groups.append(AwqGroup(f"{p}.mlp.up_proj", (f"{p}.mlp.down_proj",)))
        if gqa:
            skipped.append(f"{p}.self_attn.o_proj")
        else:
            groups.append(AwqGroup(f"{p}.self_attn.v_proj", (f"{p}.self_attn.o_proj",)))
    return groups, skipped


def fake_quant(w, block_size: int):
    """W [N, K] (torch) through symmetric int4 RTN along K in blocks (export/decoder/quantize.py's rule), dequantized."""
    n, k = w.shape
    blocks = w.float().reshape(n, k // block_size, block_size)                       # [N, K/B, B]
    scale = blocks.abs().amax(dim=2, keepdim=True) / 7                                # [N, K/B, 1]
    scale = scale.masked_fill(scale == 0, 1.0)
    return ((blocks / scale).round().clamp(-7, 7) * scale).reshape(n, k)             # [N, K]


def search_group(thinker, group: AwqGroup, x, block_size: int):
    """(s [K], group with alpha and errors): the scaling that minimizes the group's output error on x [T, K]."""
    weights = [thinker.get_submodule(name).weight.detach().float() for name in group.linears]   # [N, K] each
    target = [x @ w.T for w in weights]                                                          # [T, N] each
    x_mean = x.abs().mean(dim=0).clamp(min=1e-8)                                                 # [K]
    best = (None, float("inf"), 0.0)
    rtn = None
    for step in range(GRID):
        alpha = step / GRID
        s = x_mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()                                                       # [K]
        error = sum(float(((x @ (fake_quant(w * s, block_size) / s).T) - t).pow(2).sum())
                    for w, t in zip(weights, target))
        rtn = error if step == 0 else rtn
        if error < best[1]:
            best = (s, error, alpha)
    s, error, alpha = best
    return s, AwqGroup(group.prev, group.linears, alpha, rtn, error)


def fold(thinker, group: AwqGroup, s) -> None:
    """W <- W diag(s) for the group's linears; prev's weight (norm [K] or output rows [K, :]) <- / s."""
    torch = require("torch")
    with torch.no_grad():
        for name in group.linears:
            w = thinker.get_submodule(name).weight                                                  # [N, K]
            w.copy_((w.float() * s[None, :]).to(w.dtype))
        prev = thinker.get_submodule(group.prev)
        if prev.weight.dim() == 1:                                                                  # RMSNorm [K]
            prev.weight.copy_((prev.weight.float() / s).to(prev.weight.dtype))
        else:                                                                                       # Linear [K, H]
            prev.weight.copy_((prev.weight.float() / s[:, None]).to(prev.weight.dtype))
            if getattr(prev, "bias", None) is not None:
                prev.bias.copy_((prev.bias.float() / s).to(prev.bias.dtype))


def apply_awq(thinker, inputs: dict, block_size: int, calibration: dict | None = None) -> AwqReport:
    """Search and fold every group's scales in place (see the module docstring); `inputs` maps a
    linear's module path to its calibration rows [T, K] (`collect_inputs`)."""
    groups, skipped = layer_groups(thinker)
    done = []
    for group in groups:
        x = inputs[group.linears[0]].float()                                                        # [T, K]
        s, chosen = search_group(thinker, group, x, block_size)
        fold(thinker, chosen, s)
        done.append(chosen)
    return AwqReport(tuple(done), dict(calibration or {}), tuple(skipped))


def collect_inputs(model, clips: Sequence, size: tuple[int, int], rho_video: float, rho_audio: float) -> dict:
    """Each scaled linear's input rows [T, K] over `clips` ((frames, pcm) pairs) streamed through the
    PyTorch pipeline with the real prompt: chunks through the compressor, then a question and answer."""
    torch = require("torch")
    from omnisift_edge.model.media import fit_audio_to_video
    from omnisift_edge.model.preprocess import log_mel, video_patches
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.runtime.torch_pipeline import CompressionConfig, TorchStream

    groups, _ = layer_groups(model.thinker)
    names = sorted({g.linears[0] for g in groups})
    rows: dict[str, list] = {name: [] for name in names}
    hooks = [model.thinker.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: rows[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).float()))
        for name in names]
    spec = model.spec
    pieces = build_prompt(model.tokenizer, QUESTION, spec=spec)
    try:
        for frames, pcm in clips:
            pixels, grid = video_patches(frames, spec, size=size)
            mel = log_mel(fit_audio_to_video(pcm, len(frames), spec), spec)
            h, w = int(grid[1]), int(grid[2])
            stream = TorchStream(model, pieces.prefix_ids, grid_hw=(h, w),
                                 compression=CompressionConfig(rho_video, rho_audio))
            per_chunk, window = h * w * spec.grids_per_chunk, spec.audio_window_frames
            for j in range(int(grid[0]) // spec.grids_per_chunk):
                stream.push(pixels[j * per_chunk:(j + 1) * per_chunk], spec.grids_per_chunk,
                            mel[:, j * window:(j + 1) * window])
            list(stream.ask(pieces.suffix_ids, max_new_tokens=ANSWER_TOKENS))
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    for name, parts in rows.items():
        x = torch.cat(parts)                                                                       # [T, K]
        keep = torch.linspace(0, x.shape[0] - 1, min(MAX_ROWS, x.shape[0])).round().long()
        out[name] = x[keep]
    return out


def calibration_clips(model, size: tuple[int, int], files: Sequence[Path] = ()) -> tuple[list, dict]:
    """((frames, pcm) per clip, the manifest's record of them): the user's files, else generated clips."""
    spec = model.spec
    if files:
        from omnisift_edge.model.media import load_media

        clips = []
        for path in files:
            media = load_media(Path(path), spec, max_seconds=2 * CLIP_SECONDS)   # UsageError, one line, if unreadable
            if len(media.frames) < spec.raw_frames_per_chunk:
                raise UsageError(f"calibration clip {path} is shorter than one chunk "
                                 f"({spec.raw_frames_per_chunk / spec.fps:g} s); pass a longer clip")
            clips.append((media.frames, media.pcm))
        return clips, {"source": "files", "clips": [Path(p).name for p in files]}
    from omnisift_edge.model.synthetic import synthetic_clip

    clips = [synthetic_clip(CLIP_SECONDS, *size, fps=spec.fps, sample_rate=spec.sample_rate, seed=100 + i)
             for i in range(CLIPS)]
    return ([(c.frames, c.pcm) for c in clips],
            {"source": "generated", "clips": [f"synthetic_clip({CLIP_SECONDS:g} s, seed {100 + i})" for i in range(CLIPS)]})


def check_calibration_files(files: Sequence[Path]) -> None:
    """Before anything is exported: every --calibration-data file exists and is a file (decoded later)."""
    for path in files:
        if not Path(path).is_file():
            raise UsageError(f"calibration clip {path} does not exist or is not a file; pass video files "
                             "(any format PyAV reads) or leave --calibration-data out for generated clips")
