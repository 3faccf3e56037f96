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

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from omnisift_edge.errors import UsageError, require
from omnisift_edge.export.decoder import gptq
from omnisift_edge.export.decoder.quantize import METHOD_STEPS

METHODS = ("gptq", "awq", "rtn")  # gptq: awq + clip + GPTQ rounding; awq: scales + clip; rtn: none
DEFAULT_METHOD = "gptq"
STEPS = {"gptq": ("awq scales", "clip search", "gptq rounding"), "awq": ("awq scales", "clip search")}
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
    kv_repeat: int = 1         # o_proj under GQA: heads per kv head (s shared by a kv head's heads)
    head_dim: int = 0          # o_proj: D of each head's channels
    alpha: float = 0.0         # the chosen exponent (0: RTN)
    error_rtn: float = 0.0     # the group's squared output error on the calibration rows, RTN
    error_awq: float = 0.0     # the same with the chosen scales


@dataclass(frozen=True)
class AwqReport:
    """What `apply_awq` did: per group the chosen alpha, per step the calibration rows' output error,
    what calibrated it, and the ints the export writes (module path -> (q [K, N] int8, scale [K/B, N]))."""

    groups: tuple[AwqGroup, ...]
    calibration: dict = field(default_factory=dict)   # {"source": generated | files, "clips": [...], "rows": n}
    method: str = DEFAULT_METHOD
    errors: dict = field(default_factory=dict)        # {linear kind: {step: squared output error}}
    ints: dict = field(default_factory=dict, repr=False, compare=False)

    def record(self) -> dict:
        steps = {}
        for kind in self.errors.values():
            for step, value in kind.items():
                steps[step] = steps.get(step, 0.0) + value
        rtn = steps.get("rtn", 0.0)
        ratio = {step: round(v / rtn, 4) for step, v in steps.items() if rtn and step != "rtn"}
        per_kind = {kind: round(e[_last(e)] / e["rtn"], 4) for kind, e in self.errors.items() if e.get("rtn")}
        return {"method": METHOD_STEPS[self.method], "steps": list(STEPS[self.method]), "grid": GRID,
                "clip_grid": list(gptq.CLIP_GRID), "calibration": self.calibration, "groups": len(self.groups),
                "alpha_mean": round(sum(g.alpha for g in self.groups) / max(1, len(self.groups)), 4),
                "output_error_ratio": ratio.get(_last(steps)) if steps else None,
                "output_error_ratio_per_step": ratio, "output_error_ratio_per_linear": per_kind,
                "folded_into": "input_layernorm, post_attention_layernorm, up_proj rows, v_proj rows "
                               "(o_proj: one scale per kv head's channel under GQA)"}


def _last(errors: dict) -> str:
    return next(step for step in ("gptq", "clip", "awq", "rtn") if step in errors)


def layer_groups(thinker) -> tuple[list[AwqGroup], list[str]]:
    """The scaling groups of every decoder layer, and the linears left unscaled (none: o_proj's scale is
    shared by the heads of one kv head under GQA, folded into that kv head's v_proj rows)."""
    text = thinker.config.text_config
    repeat = text.num_attention_heads // text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    groups = []
    for i in range(text.num_hidden_layers):
        p = f"model.layers.{i}"
        groups.append(AwqGroup(f"{p}.input_layernorm", tuple(f"{p}.self_attn.{n}_proj" for n in "qkv")))
        groups.append(AwqGroup(f"{p}.self_attn.v_proj", (f"{p}.self_attn.o_proj",), kv_repeat=repeat,
                               head_dim=head_dim))
        groups.append(AwqGroup(f"{p}.post_attention_layernorm", (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj")))
        groups.append(AwqGroup(f"{p}.mlp.up_proj", (f"{p}.mlp.down_proj",)))
    return groups, []


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
    x_mean = _kv_shared(x.abs().mean(dim=0).clamp(min=1e-8), group)                              # [K]
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
    return s, dataclasses.replace(group, alpha=alpha, error_rtn=rtn, error_awq=error)


def _kv_shared(x_mean, group: AwqGroup):
    """o_proj under GQA: mean |x| [heads x D] -> averaged over the heads of each kv head, repeated back, so
    that s is one value per (kv head, dim): what v_proj's output rows can carry."""
    if group.kv_repeat == 1:
        return x_mean
    return _repeat_heads(_per_kv(x_mean, group).mean(dim=1), group.kv_repeat)


def _per_kv(v, group: AwqGroup):
    """[heads x D] -> [kv heads, heads per kv head, D] (head h reads kv head h // kv_repeat)."""
    return v.view(-1, group.kv_repeat, group.head_dim)


def _repeat_heads(v, repeat: int):
    """[kv heads, D] -> [heads x D]: each kv head's values for each of its heads."""
    return v[:, None, :].expand(-1, repeat, -1).reshape(-1)


def fold(thinker, group: AwqGroup, s) -> None:
    """W <- W diag(s) for the group's linears; prev's weight (norm [K] or output rows [K', :]) <- / s,
    s reduced to one value per kv head's channel for o_proj under GQA (K' = kv heads x D)."""
    torch = require("torch")
    with torch.no_grad():
        for name in group.linears:
            w = thinker.get_submodule(name).weight                                                  # [N, K]
            w.copy_((w.float() * s[None, :]).to(w.dtype))
        prev = thinker.get_submodule(group.prev)
        rows = prev.weight.shape[0]
        s_prev = s if group.kv_repeat == 1 else _per_kv(s, group)[:, 0].reshape(rows)
        if prev.weight.dim() == 1:                                                                  # RMSNorm [K]
            prev.weight.copy_((prev.weight.float() / s_prev).to(prev.weight.dtype))
        else:                                                                                       # Linear [K', H]
            prev.weight.copy_((prev.weight.float() / s_prev[:, None]).to(prev.weight.dtype))
            if getattr(prev, "bias", None) is not None:
                prev.bias.copy_((prev.bias.float() / s_prev).to(prev.bias.dtype))


def apply_awq(thinker, inputs: dict, block_size: int, calibration: dict | None = None,
              method: str = DEFAULT_METHOD) -> AwqReport:
    """Search and fold every group's scales in place, then round every scaled linear into the ints the
    export writes (clip search; GPTQ too for method gptq). `inputs` maps the first linear of each group
    to its calibration rows [T, K] (`collect_inputs`)."""
    groups, scales = fold_scales(thinker, inputs, block_size)
    ints, errors = round_linears(thinker, inputs, groups, scales, block_size, clip=True, gptq_rounding=method == "gptq")
    return AwqReport(tuple(groups), dict(calibration or {}), method, errors, ints)


def fold_scales(thinker, inputs: dict, block_size: int) -> tuple[list[AwqGroup], list]:
    """Every group's alpha search and fold, in place: (groups with their alpha and errors, s [K] per group)."""
    groups, scales = [], []
    for group in layer_groups(thinker)[0]:
        x = inputs[group.linears[0]].float()                                                        # [T, K]
        s, chosen = search_group(thinker, group, x, block_size)
        fold(thinker, chosen, s)
        groups.append(chosen)
        scales.append(s)
    return groups, scales


def round_linears(thinker, inputs: dict, groups, scales, block_size: int, *, clip: bool,
                  gptq_rounding: bool) -> tuple[dict, dict]:
    """(ints: module path -> (q [K, N] int8, scale [K/B, N] float32), errors: linear kind -> step -> the
    squared output error on the calibration rows) for the group's (already folded) linears. Run after
    every fold: o_proj's scales move v_proj's rows."""
    ints, errors = {}, {}
    for group, s in zip(groups, scales):
        h_plain = gptq.hessian(inputs[group.linears[0]])                                          # [K, K]
        s64 = s.double()
        h = h_plain / s64[:, None] / s64[None, :]                                                   # of x / s
        for name in group.linears:
            kind = errors.setdefault(name.rsplit(".", 1)[-1], {})
            ints[name] = _round_linear(thinker.get_submodule(name).weight.detach().float(), s, (h_plain, h),
                                       block_size, kind, clip, gptq_rounding)
    return ints, errors


def _round_linear(w, s, hessians, block_size: int, errors: dict, clip: bool, gptq_rounding: bool):
    """One linear W [N, K] (scaled by s [K]): its ints and scales, each step's output error added to `errors`."""
    torch = require("torch")
    h_plain, h = hessians

    def add(step, weight, q, scale, hess):
        errors[step] = errors.get(step, 0.0) + gptq.output_error(weight, q, scale, hess, block_size)

    w0 = w / s[None, :]                                                                             # [N, K] unscaled
    scale0 = gptq.rtn_scales(w0, block_size)                                                        # [N, K/B]
    add("rtn", w0, gptq.round_with(w0, scale0, block_size), scale0, h_plain)
    scale = gptq.rtn_scales(w, block_size)
    q = gptq.round_with(w, scale, block_size)                                                       # [N, K]
    add("awq", w, q, scale, h)
    if clip:
        scale = gptq.clip_scales(w, h, block_size)
        q = gptq.round_with(w, scale, block_size)
        add("clip", w, q, scale, h)
    if gptq_rounding:
        q = gptq.gptq_round(w, h, scale, block_size)
        add("gptq", w, q, scale, h)
    return (q.T.contiguous().to(torch.int8).numpy(), scale.T.contiguous().numpy())                  # [K, N], [K/B, N]


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
