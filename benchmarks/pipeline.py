"""Pipeline benchmarks (the runtime issue's 2-4), measured side by side in one process.

2. decoder prefill of one chunk's kept tokens at 25% against 100% (same past length);
3. stream + first-token time at 25% against 100%, compared with the bound set by the encoders'
   measured share (the encoders run on every token whatever the ratio): measured / bound;
4. answer latency (question prefill + greedy tokens) after a short and a long stream.

Random weights at a configurable width (no download): `--size mid` (Qwen2-0.5B-like LLM, small
towers) for CPUs, `--size 3b` / `--size 7b` (real LLM widths, fewer layers) for GPUs.

    python benchmarks/pipeline.py --size mid --resolution 224x224 [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from omnisift_edge.compress.ratio import drops_for_ratio
from omnisift_edge.model.load import OmniModel, ModelSource
from omnisift_edge.model.preprocess import log_mel, video_patches
from omnisift_edge.model.spec import OmniSpec
from omnisift_edge.model.synthetic import synthetic_clip
from omnisift_edge.model.tiny import seeded_fill_, tiny_thinker_config_dict
from omnisift_edge.model.tokenizer import load_tokenizer, write_tiny_tokenizer
from omnisift_edge.runtime.torch_pipeline import CompressionConfig, TorchStream

SIZES = {   # text (hidden, layers, heads, kv heads, intermediate), vision (depth, hidden, heads), audio (layers, d_model)
    "mid": ((896, 8, 14, 2, 4864), (4, 256, 4), (4, 256)),
    "3b": ((2048, 8, 16, 2, 11008), (8, 1280, 16), (8, 1280)),
    "7b": ((3584, 6, 28, 4, 18944), (8, 1280, 16), (8, 1280)),
}


def build_model(size: str, device: str, dtype: torch.dtype) -> OmniModel:
    import tempfile
    from pathlib import Path

    import transformers
    from transformers.modeling_utils import no_init_weights

    from omnisift_edge.compress.selector import AudioSelector, SelectorConfig

    (d, layers, heads, kv, inter), (v_depth, v_hidden, v_heads), (a_layers, a_model) = SIZES[size]
    cfg = tiny_thinker_config_dict()
    cfg["text_config"].update(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=kv, intermediate_size=inter,
                              rope_scaling={"mrope_section": [d // heads // 8, 3 * d // heads // 16, 3 * d // heads // 16],
                                            "rope_type": "default", "type": "default"})
    cfg["vision_config"].update(depth=v_depth, hidden_size=v_hidden, num_heads=v_heads, intermediate_size=4 * v_hidden,
                                out_hidden_size=d, fullatt_block_indexes=list(range(v_depth - 1, v_depth)))
    cfg["audio_config"].update(encoder_layers=a_layers, d_model=a_model, encoder_attention_heads=max(2, a_model // 64),
                               encoder_ffn_dim=4 * a_model, output_dim=d)
    transformers.logging.set_verbosity_error()
    config = transformers.Qwen2_5OmniThinkerConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    config._attn_implementation = "sdpa"
    with no_init_weights():
        thinker = transformers.Qwen2_5OmniThinkerForConditionalGeneration(config)
    seeded_fill_(thinker, 0)
    selector = AudioSelector(SelectorConfig(d_model=d))
    seeded_fill_(selector, 1, std=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(write_tiny_tokenizer(Path(tmp)))
    return OmniModel(thinker=thinker.to(device, dtype).eval(), selector=selector.to(device, dtype).eval(),
                     tokenizer=tokenizer, spec=OmniSpec.from_thinker_config(cfg), source=ModelSource())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stream_clip(model, seconds: float, size, ratio: float, device: str):
    """(stream, per-chunk stage seconds, seconds for the whole stream)."""
    clip = synthetic_clip(seconds, *size, seed=0)
    pixels, grid = video_patches(clip.frames, model.spec, size=size)
    mel = log_mel(clip.pcm, model.spec)
    h, w = int(grid[1]), int(grid[2])
    compression = CompressionConfig.for_ratio(ratio, model.spec.tokens_per_frame(*size))
    stream = TorchStream(model, [model.spec.tokens.im_start, 872, 198], grid_hw=(h, w), compression=compression)
    sync(device)
    start = time.perf_counter()
    for j, g0 in enumerate(range(0, int(grid[0]), 2)):
        n = min(2, int(grid[0]) - g0)
        stream.push(pixels[g0 * h * w:(g0 + n) * h * w], n, mel[:, j * 200:(j + 1) * 200])
    sync(device)
    return stream, time.perf_counter() - start


def answer_latency(stream, tokens: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    list(stream.ask([872, 198, 151645, 198, 151644, 77091, 198], max_new_tokens=tokens))
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--resolution", default="224x224")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--seconds", type=float, default=20.0, help="stream length for benchmarks 2 and 3")
    parser.add_argument("--long", type=float, default=120.0, help="the long stream of benchmark 4")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.resolution.split("x"))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    model = build_model(args.size, args.device, dtype)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU x{torch.get_num_threads()}"
    print(f"{args.size} ({model.hidden_size} wide) on {name}, torch {torch.__version__}, {args.dtype}, {args.resolution}")
    print(f"drops at 25%: {drops_for_ratio(0.25, model.spec.tokens_per_frame(*size))}")

    with torch.inference_mode():
        runs = {0.25: [], 1.0: []}
        for _ in range(args.repeats):                                  # interleaved repeats
            for ratio in (1.0, 0.25):
                stream, total = stream_clip(model, args.seconds, size, ratio, args.device)
                ttft = answer_latency(stream, 1, args.device)
                stages = {k: sum(r.seconds[k] for r in stream.reports[1:]) / (len(stream.reports) - 1)
                          for k in ("vision", "audio", "compressor", "prefill")}
                runs[ratio].append((total + ttft, stages))
        med = {r: statistics.median(t for t, _ in runs[r]) for r in runs}
        stage = {r: {k: statistics.median(s[k] for _, s in runs[r]) for k in runs[r][0][1]} for r in runs}
        print("\n2. prefill of one chunk's kept tokens (median ms):")
        p100, p25 = stage[1.0]["prefill"] * 1e3, stage[0.25]["prefill"] * 1e3
        print(f"   100%: {p100:.2f}  25%: {p25:.2f}  ratio {p100 / p25:.2f}x (goal >= 3.6x)")
        enc = (stage[1.0]["vision"] + stage[1.0]["audio"]) / (sum(stage[1.0].values()))
        bound = 1.0 / (enc + (1 - enc) * 0.25)
        print(f"\n3. stream + first token, {args.seconds:g} s: 100% {med[1.0]:.2f} s, 25% {med[0.25]:.2f} s, "
              f"speed-up {med[1.0] / med[0.25]:.2f}x; encoder share {enc:.1%} -> bound {bound:.2f}x; "
              f"measured/bound {med[1.0] / med[0.25] / bound:.0%} (goal >= 90%)")
        lat = {}
        for seconds in (10.0, args.long):
            values = []
            for _ in range(args.repeats):
                stream, _ = stream_clip(model, seconds, size, 0.25, args.device)
                values.append(answer_latency(stream, 8, args.device))
            lat[seconds] = statistics.median(values)
        print(f"\n4. answer latency (question + 8 tokens) at 25%: after 10 s {lat[10.0] * 1e3:.1f} ms, after "
              f"{args.long:g} s {lat[args.long] * 1e3:.1f} ms, ratio {lat[args.long] / lat[10.0]:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
