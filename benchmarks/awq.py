"""Calibrated INT4 (AWQ scales, clip search, GPTQ rounding) against round-to-nearest, side by side (issue 21).

On the mid-size random thinker (`pipeline.py --size mid`: 896 wide x 8 layers, vocab 152064) the
decoder's linear layers are int4 (block 32, symmetric) in several ways, all in PyTorch with the exact
dequantized weights (q * scale) the exported graphs hold (the export checks graph == PyTorch on them):

- rtn: round-to-nearest of the weights as they are (export/decoder/quantize.py);
- gptq (no awq): GPTQ rounding of the unscaled weights with RTN's scales (export/decoder/gptq.py);
- awq: the scales from the calibration clips folded into the norms / up_proj / v_proj, then RTN;
- awq+clip: the same with the clip search of the block scales (`--calibration awq`);
- awq+gptq: AWQ scales, RTN's block scales, GPTQ rounding;
- awq+clip+gptq: all three (`--calibration gptq`, the export's default).

The calibration is run once (rows collected, scales searched and folded), then each variant rounds
the same folded weights; besides the logit numbers each prints the calibration rows' output error
relative to RTN per linear kind (q/k/v/o/gate/up/down, summed over layers).

Calibration: --calib generated clips (seeds 100...); evaluation: --clips other generated clips
(seeds 200...), each streamed through the compressor with the real prompt, then a question: the
relative first-token logit error ||l - l_fp32|| / ||l_fp32|| and greedy agreement (share of the
first --tokens free-running greedy tokens equal to fp32's, position by position).

Random weights have no activation outliers, so `--outliers N` also plants N outlier channels the
way trained LLMs have them (a norm's weight x20 on N hidden channels, the columns of the linears
reading it /20): the fp32 model computes exactly the same function, its activations now have
outliers, and the question is whether calibration finds them.

    python benchmarks/awq.py [--size mid] [--calib 3] [--clips 4] [--tokens 8] [--outliers 8]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import platform
import time

import numpy as np
import torch

from benchmarks.pipeline import build_model
from omnisift_edge.export.decoder.awq import collect_inputs, fake_quant, fold_scales, layer_groups, round_linears
from omnisift_edge.export.decoder.quantize import dequantize_weight
from omnisift_edge.model.synthetic import synthetic_clip
from omnisift_edge.runtime.torch_pipeline import CompressionConfig

SIZE = (112, 112)


def quantize_in_place(thinker, block: int) -> None:
    """Every decoder-layer linear's weight -> its int4 RTN dequantization (the LM head stays float)."""
    with torch.no_grad():
        for name, module in thinker.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name and name.startswith("model."):
                module.weight.copy_(fake_quant(module.weight, block).to(module.weight.dtype))


def plant_outliers(thinker, n: int, factor: float = 20.0, seed: int = 0) -> None:
    """Outlier input channels without changing the function: norm weight x factor, reader columns / factor."""
    rng = np.random.default_rng(seed)
    groups, _ = layer_groups(thinker)
    with torch.no_grad():
        for group in groups:
            prev = thinker.get_submodule(group.prev)
            if prev.weight.dim() != 1:
                continue
            channels = torch.from_numpy(rng.choice(prev.weight.shape[0], n, replace=False))
            prev.weight[channels] *= factor
            for name in group.linears:
                thinker.get_submodule(name).weight[:, channels] /= factor


def answer(model, clip, tokens: int):
    """(first-token logits [V], greedy ids) of one clip: chunks through the compressor, then the question."""
    from omnisift_edge.model.preprocess import log_mel, video_patches
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.runtime.torch_pipeline import TorchStream

    spec = model.spec
    pieces = build_prompt(model.tokenizer, "What happens when the sound plays?", spec=spec)
    pixels, grid = video_patches(clip.frames, spec, size=SIZE)
    mel = log_mel(clip.pcm, spec)
    h, w = int(grid[1]), int(grid[2])
    comp = CompressionConfig.for_ratio(0.25, spec.tokens_per_frame(*SIZE))
    stream = TorchStream(model, pieces.prefix_ids, grid_hw=(h, w), compression=comp)
    per_chunk = h * w * spec.grids_per_chunk
    for j in range(int(grid[0]) // spec.grids_per_chunk):
        stream.push(pixels[j * per_chunk:(j + 1) * per_chunk], spec.grids_per_chunk, mel[:, j * 200:(j + 1) * 200])
    logits = []
    hook = model.thinker.lm_head.register_forward_hook(lambda m, a, out: logits.append(out[0, -1].float().clone()))
    try:
        ids = list(stream.ask(pieces.suffix_ids, max_new_tokens=tokens))
    finally:
        hook.remove()
    return logits[0], ids


def evaluate(model, clips, tokens):
    return [answer(model, clip, tokens) for clip in clips]


def compare(ref, got) -> tuple[float, float]:
    errors = [float((g[0] - r[0]).norm() / r[0].norm()) for r, g in zip(ref, got)]
    agree = [np.mean([a == b for a, b in zip(r[1], g[1])]) if r[1] else 1.0 for r, g in zip(ref, got)]
    return float(np.mean(errors)), float(np.mean(agree))


@contextlib.contextmanager
def int4_weights(thinker, ints: dict, block: int):
    """The linears in `ints` run q * scale (what the exported graphs hold) while inside; restored on exit."""
    saved = []
    with torch.no_grad():
        for name, (q, scale) in ints.items():
            weight = thinker.get_submodule(name).weight                                   # [N, K]
            saved.append((weight, weight.detach().clone()))
            weight.copy_(torch.from_numpy(dequantize_weight(q, scale, 4, block).T.copy()))
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, old in saved:
                weight.copy_(old)


VARIANTS = (("awq", False, False), ("awq+clip", True, False), ("awq+gptq", False, True), ("awq+clip+gptq", True, True))


def run(model, args, label: str) -> dict:
    """Every variant side by side: logit error and agreement vs fp32, and the calibration rows' output error."""
    spec = model.spec
    calib = [synthetic_clip(4.0, *SIZE, fps=spec.fps, sample_rate=spec.sample_rate, seed=100 + i) for i in range(args.calib)]
    evals = [synthetic_clip(4.0, *SIZE, fps=spec.fps, sample_rate=spec.sample_rate, seed=200 + i) for i in range(args.clips)]
    ref = evaluate(model, evals, args.tokens)
    rtn = copy.deepcopy(model)
    quantize_in_place(rtn.thinker, args.block)
    scores = {"rtn": compare(ref, evaluate(rtn, evals, args.tokens)) + (1.0,)}
    print(f"  {label} rtn: logit error {scores['rtn'][0]:.4f}, agreement {scores['rtn'][1]:.2f}", flush=True)
    del rtn
    cal = copy.deepcopy(model)
    comp = CompressionConfig.for_ratio(0.25, spec.tokens_per_frame(*SIZE))
    start = time.perf_counter()
    inputs = collect_inputs(cal, [(c.frames, c.pcm) for c in calib], SIZE, comp.rho_video, comp.rho_audio)
    groups = layer_groups(cal.thinker)[0]
    ones = [torch.ones(inputs[g.linears[0]].shape[1]) for g in groups]
    seconds = {"collect": time.perf_counter() - start}
    rounded = {"gptq (no awq)": round_linears(cal.thinker, inputs, groups, ones, args.block, clip=False, gptq_rounding=True)}
    start = time.perf_counter()
    groups, scales = fold_scales(cal.thinker, inputs, args.block)
    seconds["awq search"] = time.perf_counter() - start
    for name, clip, gptq in VARIANTS:
        start = time.perf_counter()
        rounded[name] = round_linears(cal.thinker, inputs, groups, scales, args.block, clip=clip, gptq_rounding=gptq)
        seconds[name] = time.perf_counter() - start
    for name, (ints, errors) in rounded.items():
        model_for = model if name.startswith("gptq (no") else cal
        with int4_weights(model_for.thinker, ints, args.block):
            error, agree = compare(ref, evaluate(model_for, evals, args.tokens))
        rows = sum(e[_step(name)] for e in errors.values())
        scores[name] = (error, agree, rows / sum(e["rtn"] for e in errors.values()))
        per_linear = {k: round(e[_step(name)] / e["rtn"], 3) for k, e in errors.items()}
        print(f"  {label} {name}: logit error {error:.4f} ({error / scores['rtn'][0]:.3f} x RTN), agreement "
              f"{agree:.2f}; calibration-row output error / RTN per linear {per_linear}", flush=True)
    print(f"{label}: seconds {({k: round(v) for k, v in seconds.items()})}; alpha mean "
          f"{np.mean([g.alpha for g in groups]):.3f}", flush=True)
    print(f"| {'variant':<16} | logit error | / RTN | greedy agreement | calib-row out-err / RTN |")
    for name, (error, agree, rows) in scores.items():
        print(f"| {name:<16} | {error:.4f} | {error / scores['rtn'][0]:.3f} | {agree:.2f} | {rows:.3f} |", flush=True)
    return scores


def _step(name: str) -> str:
    return "gptq" if "gptq" in name else "clip" if "clip" in name else "awq"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid")
    parser.add_argument("--calib", type=int, default=3)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--outliers", type=int, default=8)
    parser.add_argument("--only-outliers", action="store_true", help="skip the plain random model")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{dt.date.today()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; int4 block {args.block}, {args.clips} eval clips, "
          f"{args.calib} calibration clips", flush=True)
    model = build_model(args.size, "cpu", torch.float32)
    with torch.inference_mode(False):
        if not args.only_outliers:
            run(model, args, f"{args.size} random")
        if args.outliers:
            plant_outliers(model.thinker, args.outliers)
            run(model, args, f"{args.size} + {args.outliers} outlier ch.")


if __name__ == "__main__":
    main()
