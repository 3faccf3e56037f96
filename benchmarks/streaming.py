"""Streaming benchmarks (issue 11), measured side by side in one run on ONNX Runtime CPU.

The script writes a random-weight thinker folder (no download; 512 wide, 12 layers by default),
exports it at ratios 1 and 0.25 for 224x224 frames, and streams generated media through
`OmniSession` (the app-facing API: host preprocessing included), measuring:

1. decode tokens/s with ~7k cached tokens (an 80 s stream at ratio 1) against ~1k (10 s);
2. answer latency (question + 16 tokens) after a 120 s stream against after 10 s, ratio 0.25;
3. one chunk's prefill at ratio 1 / ratio 0.25 (median over the 10 s streams' chunks after the first);
4. a 10-minute stream under the sliding policy (ratio 0.25): median chunk time of the last 10
   chunks against the first 10 after the window filled, and peak host memory (RSS) over the same two
   stretches;
5. stream + first token at ratio 0.25 against 1 (10 s), against the bound set by the measured share
   of the ratio-independent stages (preprocessing, vision, audio).

    python benchmarks/streaming.py [--quick] [--workdir DIR] [--resolution WxH] [--only 3,5]

`--quick` is a smoke run (a small thinker, 112x112, short streams), not a measurement. Goals are
those of issue 11 and are printed beside each ratio; nothing is asserted. `--resolution 448x448
--only 3,5` repeats the prefill benchmarks where a chunk holds 4x the tokens (562 at ratio 1), to
separate the per-call cost from the per-token cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Plan:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    resolution: tuple[int, int]
    short: float            # seconds
    long_decode: float      # ratio 1 stream for ~7k cached tokens
    long_answer: float      # ratio 0.25 stream for the answer latency
    sliding: float          # the endless stream
    window: float           # its window
    max_context: int


FULL = Plan(512, 12, 8, 2, 1536, (224, 224), 10.0, 80.0, 120.0, 600.0, 60.0, 8192)
QUICK = Plan(128, 2, 4, 2, 256, (112, 112), 6.0, 16.0, 20.0, 60.0, 10.0, 2048)


def write_thinker_folder(folder: Path, plan: Plan, seed: int = 0) -> Path:
    """A thinker-only model folder (config.json, safetensors, tokenizer) with random weights."""
    import transformers
    from safetensors.torch import save_file
    from transformers.modeling_utils import no_init_weights

    from omnisift_edge.compress.selector import AudioSelector, SelectorConfig
    from omnisift_edge.model.tiny import seeded_fill_, tiny_thinker_config_dict
    from omnisift_edge.model.tokenizer import write_tiny_tokenizer

    d, head_dim = plan.hidden, plan.hidden // plan.heads
    cfg = tiny_thinker_config_dict()
    cfg["text_config"].update(hidden_size=d, num_hidden_layers=plan.layers, num_attention_heads=plan.heads,
                              num_key_value_heads=plan.kv_heads, intermediate_size=plan.intermediate,
                              rope_scaling={"mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16],
                                            "rope_type": "default", "type": "default"})
    cfg["vision_config"].update(depth=2, hidden_size=128, num_heads=2, intermediate_size=256, out_hidden_size=d)
    cfg["audio_config"].update(encoder_layers=2, d_model=128, encoder_attention_heads=2, encoder_ffn_dim=256,
                               output_dim=d)
    transformers.logging.set_verbosity_error()
    config = transformers.Qwen2_5OmniThinkerConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    with no_init_weights():
        thinker = transformers.Qwen2_5OmniThinkerForConditionalGeneration(config)
    seeded_fill_(thinker, seed)
    selector = AudioSelector(SelectorConfig(d_model=d, hidden=128, heads=4))
    seeded_fill_(selector, seed + 1, std=0.2)
    state = {k: v.contiguous() for k, v in thinker.state_dict().items()
             if "rotary_emb" not in k and "positional_embedding" not in k}
    state.update({"compressor." + k: v.contiguous() for k, v in selector.state_dict().items()})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({**cfg, "omnisift_compressor": {"d_model": d, "hidden": 128,
                                                                                   "heads": 4}}, indent=2))
    write_tiny_tokenizer(folder)
    return folder


def chunk_media(session, index: int):
    """Frames [4, H, W, 3] and 2 s of PCM of chunk `index` (generated, seeded by the index)."""
    from omnisift_edge.model.synthetic import synthetic_clip

    clip = synthetic_clip(session.spec.seconds_per_chunk, *session.resolution, fps=session.spec.fps,
                          sample_rate=session.spec.sample_rate, seed=index)
    return clip.frames, clip.pcm


def stream(folder: Path, ratio: float, seconds: float, **context) -> tuple:
    """(session, per-chunk wall seconds, per-chunk peak RSS MB) after streaming `seconds` of media."""
    from omnisift_edge.profiling.profile import _rss_mb
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    session = OmniSession(RuntimeConfig(folder, ratio=ratio, system_prompt="You are a helpful assistant.",
                                        **context))
    times, rss, pending = [], [], 0.0
    for j in range(int(round(seconds / session.spec.seconds_per_chunk))):
        frames, pcm = chunk_media(session, j)
        start = time.perf_counter()
        pushed = session.append_chunk(frames, pcm)
        pending += time.perf_counter() - start
        if pushed:                         # a chunk is pushed when the next one's first 40 samples arrived
            times += [pending / len(pushed)] * len(pushed)
            rss += [_rss_mb()] * len(pushed)
            pending = 0.0
    start = time.perf_counter()
    session.finish()
    times.append(pending + time.perf_counter() - start)
    rss.append(_rss_mb())
    return session, times, rss


def answer(session, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, decode tokens/s after it, tokens) for a question + `tokens` tokens."""
    start = time.perf_counter()
    stamps = []
    for _ in session.ask_ids("What happens in the video, and what do you hear?", max_new_tokens=tokens):
        stamps.append(time.perf_counter())
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return stamps[0] - start, decode, len(stamps)


def kv_mb(session, tokens: int) -> float:
    dims = session.manifest.dims
    return tokens * dims.num_layers * 2 * dims.kv_heads * dims.head_dim * 4 / 2**20


def stage_median(session, stage: str, skip: int = 1) -> float:
    return statistics.median(r.seconds[stage] for r in session.reports[skip:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small model, short streams")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model folder and export here")
    parser.add_argument("--resolution", default=None, help="frame size WxH (default: the plan's, 224x224)")
    parser.add_argument("--only", default="1,2,3,4,5", help="which benchmarks to run, e.g. 3,5")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.resolution:
        from omnisift_edge.model.preprocess import parse_resolution

        plan = dataclasses.replace(plan, resolution=parse_resolution(args.resolution))
    only = {int(x) for x in args.only.split(",")}

    import onnxruntime

    from omnisift_edge.export.stage import ExportConfig, export
    from omnisift_edge.model.load import ModelSource

    work = args.workdir or Path(tempfile.mkdtemp(prefix="streaming-bench-"))
    model_dir, art = work / "model", work / "export"
    start = time.perf_counter()
    if not (art / "manifest.json").is_file():
        if not (model_dir / "config.json").is_file():
            write_thinker_folder(model_dir, plan)
        export(ExportConfig(out=art, source=ModelSource(path=model_dir), ratios=(1.0, 0.25),
                            resolution=plan.resolution, max_context=plan.max_context, overwrite=True))
    print(f"thinker {plan.hidden} wide x {plan.layers} layers, {plan.resolution[0]}x{plan.resolution[1]}, "
          f"onnxruntime {onnxruntime.__version__} CPU, {time.strftime('%Y-%m-%d')}; export ready in "
          f"{time.perf_counter() - start:.0f} s ({art})", flush=True)

    # 1 + 3 + 5: short streams at both ratios, the long ratio-1 stream
    short = {}
    for ratio in (1.0, 0.25):
        session, times, _ = stream(art, ratio, plan.short)
        ttft, decode, n = answer(session, 16)
        short[ratio] = dict(session=session, stream=sum(times), ttft=ttft, decode=decode,
                            kv=session.stream.kv_length(), tokens=n)
    p1, p25 = stage_median(short[1.0]["session"], "prefill"), stage_median(short[0.25]["session"], "prefill")
    k1, k25 = (short[r]["session"].reports[-1].kept_video + short[r]["session"].reports[-1].kept_audio
               for r in (1.0, 0.25))
    print(f"\n3. one chunk's prefill: ratio 1 {p1 * 1e3:.1f} ms ({k1} tokens), ratio 0.25 {p25 * 1e3:.1f} ms "
          f"({k25} tokens): {p1 / p25:.2f}x (goal >= 3.6x); t = a + b*n through the two: a = "
          f"{(p25 * k1 - p1 * k25) / (k1 - k25) * 1e3:.1f} ms per call, b = {(p1 - p25) / (k1 - k25) * 1e3:.3f} ms "
          "per token")
    s1, s25 = (short[r]["stream"] + short[r]["ttft"] for r in (1.0, 0.25))
    stages = {k: stage_median(short[1.0]["session"], k) for k in short[1.0]["session"].reports[0].seconds}
    fixed = sum(stages[k] for k in ("preprocess", "vision", "audio")) / sum(stages.values())
    bound = 1.0 / (fixed + (1 - fixed) * 0.25)
    print(f"\n5. stream + first token, {plan.short:g} s: ratio 1 {s1:.2f} s, ratio 0.25 {s25:.2f} s: {s1 / s25:.2f}x; "
          f"ratio-independent share {fixed:.1%} -> bound {bound:.2f}x; measured/bound {s1 / s25 / bound:.0%} "
          f"(goal >= 90%)")
    if only & {1, 2, 4}:
        decode_short = short[1.0]["decode"], short[1.0]["kv"]
        del short, session                    # released: benchmark 4's RSS is its own stream's
        gc.collect()
        long_benchmarks(art, plan, decode_short, only)


def long_benchmarks(art: Path, plan: Plan, decode_short: tuple[float, int], only: set) -> None:
    """Benchmarks 1, 2 and 4 (those in `only`): the long streams, minutes of media each."""
    if 1 in only:
        benchmark_decode(art, plan, decode_short)
    if 2 in only:
        benchmark_answer(art, plan)
    if 4 in only:
        benchmark_sliding(art, plan)


def benchmark_decode(art: Path, plan: Plan, decode_short: tuple[float, int]) -> None:
    long1, long_times, _ = stream(art, 1.0, plan.long_decode)
    kv_long = long1.stream.kv_length()
    _, decode_long, n_long = answer(long1, 16)
    print(f"\n1. decode tokens/s, ratio 1: {decode_short[0]:.1f} with {decode_short[1]} cached, "
          f"{decode_long:.1f} with {kv_long} cached ({n_long} tokens): {decode_long / decode_short[0]:.2f}x "
          f"(goal >= 0.85x)")
    print(f"   chunk time at ratio 1 across {plan.long_decode:g} s: chunk 2 {long_times[1] * 1e3:.0f} ms, "
          f"last {long_times[-1] * 1e3:.0f} ms")



def benchmark_answer(art: Path, plan: Plan) -> None:
    """2: answer latency after a long and a short stream at 0.25."""
    long25, _, _ = stream(art, 0.25, plan.long_answer)
    ttft_l, decode_l, n_l = answer(long25, 16)
    session, _, _ = stream(art, 0.25, plan.short)
    ttft_s, decode_s, n_s = answer(session, 16)
    lat_l, lat_s = ttft_l + (n_l - 1) / decode_l, ttft_s + (n_s - 1) / decode_s
    print(f"\n2. answer latency (question + 16 tokens), ratio 0.25: after {plan.short:g} s {lat_s * 1e3:.0f} ms "
          f"({session.stream.kv_length()} cached), after {plan.long_answer:g} s {lat_l * 1e3:.0f} ms "
          f"({long25.stream.kv_length()} cached): {lat_l / lat_s:.2f}x (goal <= 1.2x)")



def benchmark_sliding(art: Path, plan: Plan) -> None:
    """4: the endless stream under the sliding policy."""
    gc.collect()
    slide, times, rss = stream(art, 0.25, plan.sliding, context_policy="sliding", window_seconds=plan.window)
    filled = int(plan.window / 2)            # chunks until the window is full
    first, last = times[filled:filled + 10], times[-10:]
    per_chunk = slide.reports[-1].kept_video + slide.reports[-1].kept_audio
    rss_first, rss_last = max(rss[filled:filled + 10]), max(rss[-10:])
    print(f"\n4. {plan.sliding:g} s under --context-policy sliding --window-seconds {plan.window:g} (ratio 0.25, "
          f"{slide.stream.window.evicted_chunks} chunks evicted, {slide.stream.kv_length()} cached at the end, "
          f"positions re-based by {slide.stream.window.base}): median chunk {statistics.median(first) * 1e3:.0f} ms "
          f"(chunks {filled + 1}-{filled + 10}) vs {statistics.median(last) * 1e3:.0f} ms (last 10): "
          f"{statistics.median(last) / statistics.median(first):.2f}x (goal <= 1.2x); peak RSS {rss_first:.0f} vs "
          f"{rss_last:.0f} MB: {rss_last / rss_first - 1:+.1%} (goal within 5%); without eviction the KV cache "
          f"would have grown to {slide.stream.kv_length() + per_chunk * slide.stream.window.evicted_chunks} "
          f"tokens ({kv_mb(slide, slide.stream.kv_length() + per_chunk * slide.stream.window.evicted_chunks):.0f} "
          f"MB instead of {kv_mb(slide, slide.stream.kv_length()):.0f} MB)")


if __name__ == "__main__":
    main()
