"""Weight-only int8/int4 decoders against fp32/fp16, measured side by side in one run (issue 15).

On a mid-size random thinker (`pipeline.py --size mid`: Qwen2-0.5B-like LLM, 896 wide x 8 layers,
vocab 152064; seeded, no download) the decoder is exported once in fp32 and once in fp16, and the
fp32 graph quantized to int8 (per channel) and int4 (block 32), the fp16 one to int4:

1. decoder file size, and ONNX Runtime CPU peak memory (load + one prefill call) next to what the
   memory plan predicts for it (engines/memory.py `ort_cpu_decoder_peak`);
2. ORT CPU decode tokens/s on a cache of --past tokens (quantized graphs at MatMulNBits accuracy
   level 0, our default: float activations, and 4, ORT's default: int8 activations);
3. first-token logit drift and greedy-token agreement against fp32 over --clips "clips": random
   kept-token embeddings at gapped TMRoPE positions (a chunk's prefill), then --tokens greedy steps
   teacher-forced on fp32's tokens (agreement = share of steps whose argmax equals fp32's);
4. whether TensorRT-RTX (if installed; builds without a GPU) builds each quantized decoder.

    python benchmarks/quantize.py [--size mid] [--clips 5] [--tokens 16] [--past 1024]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from omnisift_edge.engines.memory import GB, graph_weight_bytes, ort_cpu_decoder_peak
from omnisift_edge.export.decoder import decoder_dims
from omnisift_edge.export.decoder.checks import gapped_positions
from omnisift_edge.export.decoder.past_present import export_decoder
from omnisift_edge.export.decoder.quantize import QuantConfig, quantize_decoder
from omnisift_edge.artifact.tensors import Dims, decoder_graph
from omnisift_edge.model.shape import ThinkerShape
from omnisift_edge.profiling.ort_memory import measure_decoder_peak

BASE = Dims(hidden=0, patch_dim=1176, grid_h=8, grid_w=8, spatial_merge=2, grids_per_chunk=2, n_mels=128,
            window_frames=200, window_audio_tokens=50)


def session(path: Path, accuracy_level: str = "0"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", accuracy_level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(graph, embeds, positions, past):
    total = past[0].shape[2] + embeds.shape[1]
    return dict(zip(graph.input_names, [embeds, positions, np.ones((1, total), np.int64), *past]))


def decode_rate(sess, graph, shape, float_np, past_len: int, steps: int) -> float:
    """Greedy-shaped decode steps/s on a cache of `past_len` random entries (presents fed back)."""
    t = shape.text
    rng = np.random.default_rng(0)
    past = [rng.standard_normal((1, t.kv_heads, past_len, t.head_dim)).astype(float_np) for _ in range(2 * t.layers)]
    x = rng.standard_normal((1, 1, t.hidden)).astype(float_np) * 0.5
    sess.run(graph.output_names, feeds(graph, x, np.full((3, 1, 1), past_len, np.int64), past))   # warm-up
    start = time.perf_counter()
    for i in range(steps):
        out = sess.run(graph.output_names, feeds(graph, x, np.full((3, 1, 1), past_len + i, np.int64), past))
        past = out[1:]
    return steps / (time.perf_counter() - start)


def agreement(sessions: dict, graph, table: np.ndarray, shape, clips: int, tokens: int) -> dict:
    """Per graph vs fp32: first-token logit drift and teacher-forced greedy agreement over the clips."""
    t = shape.text
    stats = {name: {"max_abs": [], "rel": [], "first_equal": 0, "agree": 0, "steps": 0} for name in sessions}
    for clip in range(clips):
        rng = np.random.default_rng(100 + clip)
        n = 160
        embeds = (rng.standard_normal((1, n, t.hidden)) * 0.5).astype(np.float32)              # [1, n, D]
        positions = gapped_positions(1, n, start=3, rng=rng)                                    # [3, 1, n]
        results = {}
        for name, (sess, float_np) in sessions.items():
            past = [np.zeros((1, t.kv_heads, 0, t.head_dim), float_np)] * (2 * t.layers)
            out = sess.run(graph.output_names, feeds(graph, embeds.astype(float_np), positions, past))
            results[name] = (out[0][0, -1].astype(np.float32), out[1:], float_np)
        ref_tokens, ref_logits = [], results["fp32"][0]
        # fp32's greedy continuation, then every graph is teacher-forced on it
        forced = {name: list(r) for name, r in results.items()}
        position = int(positions.max()) + 1
        for step in range(tokens):
            token = int(forced["fp32"][0].argmax())
            ref_tokens.append(token)
            x = table[token][None, None]                                                        # [1, 1, D]
            for name, (sess, float_np) in sessions.items():
                logits, past, _ = forced[name]
                if name != "fp32":
                    stats[name]["agree"] += int(int(logits.argmax()) == token)
                    stats[name]["steps"] += 1
                out = sess.run(graph.output_names, feeds(graph, x.astype(float_np),
                                                         np.full((3, 1, 1), position, np.int64), past))
                forced[name] = [out[0][0, -1].astype(np.float32), out[1:], float_np]
            position += 1
        for name, (logits, _, _) in results.items():
            if name == "fp32":
                continue
            stats[name]["max_abs"].append(float(np.abs(logits - ref_logits).max()))
            stats[name]["rel"].append(float(np.linalg.norm(logits - ref_logits) / np.linalg.norm(ref_logits)))
            stats[name]["first_equal"] += int(logits.argmax() == ref_logits.argmax())
    return {name: {"first_token_logit_max_abs": float(np.mean(s["max_abs"])),
                   "first_token_logit_rel_l2": float(np.mean(s["rel"])),
                   "first_token_equal": f"{s['first_equal']}/{clips}",
                   "greedy_agreement": s["agree"] / s["steps"]} for name, s in stats.items() if name != "fp32"}


def rtx_build(path: Path) -> dict:
    try:
        import tensorrt_rtx as trt
    except ImportError:
        return {"built": None, "why": "tensorrt_rtx not installed"}
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        return {"built": False, "why": parser.get_error(0).desc()}
    config, profile = builder.create_builder_config(), builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)

        def shape(s, p, t=t):
            if t.name == "inputs_embeds":
                return (1, s, t.shape[2])
            if t.name in ("position_ids", "attention_mask"):
                return (3, 1, s) if t.name == "position_ids" else (1, p + s)
            return (1, t.shape[1], p, t.shape[3])
        profile.set_shape(t.name, shape(1, 0), shape(64, 1024), shape(512, 4096))
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    return {"built": engine is not None, "seconds": round(time.perf_counter() - start, 1),
            "engine_mb": round(engine.nbytes / 2**20, 1) if engine is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=["mid", "3b", "7b"])
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--past", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-rtx", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="Sizes and peak memory only.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from pipeline import build_model

    model = build_model(args.size, "cpu", torch.float32)
    thinker = model.thinker
    shape = ThinkerShape.from_config(thinker.config.to_dict())
    dims = decoder_dims(thinker, BASE)
    graph = decoder_graph(dims.num_layers)
    table = thinker.get_input_embeddings().weight.detach().numpy()
    report = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"), "size": args.size, "graphs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {"fp32": export_decoder(thinker, dims, tmp / "fp32" / "decoder.onnx", check=False),
                 "fp16": export_decoder(thinker, dims, tmp / "fp16" / "decoder.onnx", dtype="fp16", check=False)}
        for name, src, cfg in (("int8", "fp32", QuantConfig("int8")), ("int4", "fp32", QuantConfig("int4")),
                               ("int4-fp16", "fp16", QuantConfig("int4"))):
            paths[name] = tmp / name / "decoder.onnx"
            paths[name].parent.mkdir()
            quantize_decoder(paths[src], paths[name], cfg)
        for name, path in paths.items():
            float_np = np.float16 if "fp16" in name else np.float32
            row = {"file_mb": round(sum(p.stat().st_size for p in path.parent.iterdir()) / 2**20, 1)}
            peak = measure_decoder_peak(path, 64, args.past)
            predicted = ort_cpu_decoder_peak(shape, graph_weight_bytes(path, 2 if float_np is np.float16 else 4),
                                             dtype="fp16" if float_np is np.float16 else "fp32",
                                             sequence=64, past=args.past)
            row.update(ort_peak_mb=round(peak.peak / 2**20, 1), plan_predicted_mb=round(predicted / 2**20, 1),
                       predicted_over_measured=round(predicted / peak.peak, 3))
            report["graphs"][name] = row
            if args.memory_only:
                print(name, json.dumps(row), flush=True)
                continue
            row["decode_tok_s"] = round(decode_rate(session(path), graph, shape, float_np, args.past, args.steps), 2)
            if name.startswith("int"):
                row["decode_tok_s_accuracy_level_4"] = round(
                    decode_rate(session(path, "4"), graph, shape, float_np, args.past, args.steps), 2)
                if not args.no_rtx:
                    row["tensorrt_rtx"] = rtx_build(path)
            report["graphs"][name] = row
            print(name, json.dumps(row), flush=True)
        if args.memory_only:
            paths = {}
        sessions = {name: (session(p), np.float16 if "fp16" in name else np.float32) for name, p in paths.items()}
        if paths:
            sessions["int4 (level 4)"] = (session(paths["int4"], "4"), np.float32)
        report["agreement_vs_fp32"] = {} if not sessions else agreement(sessions, graph, table, shape, args.clips, args.tokens)
        print(json.dumps(report["agreement_vs_fp32"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"(GB = {GB} bytes)")


if __name__ == "__main__":
    main()
