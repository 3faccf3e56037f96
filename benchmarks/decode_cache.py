"""Decode and chunk-prefill cost against the KV cache length: the copied cache vs the in-place one.

Issue 11's first goal: ONNX Runtime CPU decode tokens/s with ~7k cached tokens >= 0.85x that with
~1k. Measured side by side in one process, on a random-weight thinker LLM built here (no download;
`--width 512 --layers 12` by default, the real 152,064-token vocabulary):

- "past_present": `decoder.onnx`, the cache handed in and out through numpy on every call (what the
  ONNX Runtime stream did before; still the TensorRT form);
- "shared_buffer": `decoder_gqa.onnx` through `runtime.kv_buffers.OrtInPlaceCache` (IOBinding, one
  preallocated buffer per layer, GroupQueryAttention writes only the new rows);
- with `--torch`, the PyTorch backends too: transformers' DynamicCache vs our static cache;
- where a CUDA GPU and TensorRT >= 10.15 (or TensorRT-RTX) exist, the two TensorRT decoder engines
  (`decode_cache_trt.py`): the past/present fallback (presents copied back on the device) vs the
  in-place KVCacheUpdate engine, ms per token; elsewhere one line says why that part was skipped.

The cache is filled with random keys/values up to each length (attention costs the same whatever
the values), then `--tokens` decode steps are timed: the median of `--repeats`, every case taken
in turn within each repeat so that the load of a shared machine drifts into all of them. A chunk
prefill (`--chunk` kept tokens) is timed with logits for its last row and without (the in-place
graph's `logits_index`), at the short length.

    python benchmarks/decode_cache.py [--lengths 1000 7000] [--tokens 16] [--torch]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_thinker(width: int, layers: int, heads: int, kv_heads: int, seed: int = 0):
    import transformers
    from transformers.modeling_utils import no_init_weights

    from omnisift_edge.model.tiny import seeded_fill_, tiny_thinker_config_dict

    cfg = tiny_thinker_config_dict()
    hd = width // heads
    cfg["text_config"].update(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=kv_heads, intermediate_size=4 * width,
                              rope_scaling={"mrope_section": [hd // 8, 3 * hd // 16, 3 * hd // 16],
                                            "rope_type": "default", "type": "default"})
    transformers.logging.set_verbosity_error()
    config = transformers.Qwen2_5OmniThinkerConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    config._attn_implementation = "sdpa"
    with no_init_weights():
        thinker = transformers.Qwen2_5OmniThinkerForConditionalGeneration(config)
    seeded_fill_(thinker, seed)
    return thinker.eval()


def interleaved(cases: dict, repeats: int) -> dict:
    """Median seconds of each case, the cases taken in turn within every repeat (a shared machine's
    load drifts: timing one case after the other would put the drift into the ratios)."""
    for fn in cases.values():
        fn()                                                 # warm-up
    times = {key: [] for key in cases}
    for _ in range(repeats):
        for key, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs=2, default=(1000, 7000))
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=178, help="kept tokens of one chunk (224x224 at ratio 1: 178)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: its default)")
    parser.add_argument("--torch", action="store_true", help="also the PyTorch DynamicCache vs static cache")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from omnisift_edge.export.decoder import decoder_dims
    from omnisift_edge.export.decoder.past_present import export_decoder
    from omnisift_edge.export.decoder.gqa import export_decoder_gqa
    from omnisift_edge.artifact.manifest import graph_entry
    from omnisift_edge.artifact.tensors import Dims, decoder_graph, decoder_gqa_graph
    from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache

    thinker = build_thinker(args.width, args.layers, args.heads, args.kv_heads)
    text = thinker.config.text_config
    capacity = max(args.lengths) + args.chunk + args.tokens + 8
    base = Dims(hidden=args.width, patch_dim=1176, grid_h=16, grid_w=16, spatial_merge=2, grids_per_chunk=2,
                n_mels=128, window_frames=200, window_audio_tokens=50)
    dims = decoder_dims(thinker, base)
    kv, hd, layers, hidden = dims.kv_heads, dims.head_dim, dims.num_layers, dims.hidden
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if args.threads:
        options.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        old_path = export_decoder(thinker, dims, Path(tmp) / "decoder.onnx", check=False)
        new_path = export_decoder_gqa(thinker, dims, Path(tmp) / "decoder_gqa.onnx")
        print(f"exported both graphs in {time.perf_counter() - t0:.0f} s")
        old = ort.InferenceSession(str(old_path), options, providers=["CPUExecutionProvider"])
        new = ort.InferenceSession(str(new_path), options, providers=["CPUExecutionProvider"])
        graph = decoder_graph(layers)
        entry = graph_entry(decoder_gqa_graph(layers), dims, new_path.name, 17, "fp32")
        token = (rng.standard_normal((1, 1, hidden)) * 0.5).astype(np.float32)           # [1, 1, D]
        chunk = (rng.standard_normal((1, args.chunk, hidden)) * 0.5).astype(np.float32)  # [1, K, D]

        cases = {}                          # (name, length) -> a callable; timed interleaved below
        for length in args.lengths:
            cached = [(rng.standard_normal((1, kv, length, hd)) * 0.5).astype(np.float32)  # [1, kv, L, hd]
                      for _ in range(2 * layers)]
            cache = OrtInPlaceCache(new, entry, capacity, {"rope_theta": text.rope_theta})
            for name, value in zip(cache.past_names, cached):
                cache.arrays[name][:, :, :length] = value
            cases[("ort past_present", length)] = _past_present(old, graph, cached, token, args.tokens)
            cases[("ort shared_buffer", length)] = _shared_buffer(cache, length, token, args.tokens, True)
            if length == args.lengths[0]:
                cases[("prefill past_present (last-row logits)", length)] = _past_present(old, graph, cached, chunk, 1)
                cases[("prefill shared_buffer, last-row logits", length)] = _shared_buffer(cache, length, chunk, 1, True)
                cases[("prefill shared_buffer, no logits", length)] = _shared_buffer(cache, length, chunk, 1, False)
            if args.torch:
                cases.update(_torch_cases(thinker, cached, length, capacity, args.tokens))
        seconds = interleaved(cases, args.repeats)
        results = {key: (value if key[0].startswith("prefill") else args.tokens / value)
                   for key, value in seconds.items()}

    short, long = args.lengths
    print(f"\n{platform.node()} {platform.processor() or platform.machine()}, onnxruntime {ort.__version__}, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; thinker LLM {args.width} wide x {args.layers} "
          f"layers ({args.heads}/{args.kv_heads} heads, vocab {text.vocab_size}), {args.tokens} decode tokens")
    print(f"| backend | tokens/s at {short} cached | at {long} cached | ratio |")
    print("|---|---|---|---|")
    for name in ("ort past_present", "ort shared_buffer", "torch DynamicCache", "torch static cache"):
        if (name, short) in results:
            a, b = results[(name, short)], results[(name, long)]
            print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    print(f"\none chunk prefill ({args.chunk} tokens after {short} cached), seconds:")
    for (name, length), value in results.items():
        if name.startswith("prefill"):
            print(f"- {name}: {value * 1000:.1f} ms")
    _tensorrt_part(thinker, dims, args)


def _tensorrt_part(thinker, dims, args) -> None:
    """The TensorRT engines' per-token decode cost, in-place vs fallback, where they can run; else why not."""
    import decode_cache_trt as part

    flavour, why = part.skip_reason()
    if flavour is None:
        print(f"\nTensorRT decode (in-place engine vs past/present fallback): skipped, {why}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = part.measure(flavour, thinker, dims, Path(tmp), args.lengths, args.tokens, args.repeats)
    part.report(flavour, results, args.lengths)


def _past_present(session, graph, cached, embeds, calls: int):
    """`calls` calls of the copied-cache decoder from `cached`, each feeding the presents back (numpy)."""
    def run():
        past = list(cached)
        n = embeds.shape[1]
        for _ in range(calls):
            total = past[0].shape[2] + n
            pos = np.ascontiguousarray(np.broadcast_to(np.arange(total - n, total), (3, 1, n)), dtype=np.int64)
            out = session.run(graph.output_names, dict(zip(graph.input_names, [
                embeds, pos, np.ones((1, total), np.int64), *past])))
            past = out[1:]                   # the copied cache, fed back as numpy
    return run


def _shared_buffer(cache, length: int, embeds, calls: int, want_logits: bool):
    """`calls` calls of the in-place decoder after `length` cached rows (the rows after them are rewritten)."""
    def run():
        cache.length = length
        n = embeds.shape[1]
        for _ in range(calls):
            pos = np.broadcast_to(np.arange(cache.length, cache.length + n), (3, 1, n))
            cache.step(embeds, pos, want_logits=want_logits)
    return run


def _torch_cases(thinker, cached, length, capacity, tokens) -> dict:
    from transformers import DynamicCache

    from omnisift_edge.runtime.torch_kv import TorchInPlaceCache

    embed = thinker.get_input_embeddings()(torch.tensor([[7]])).detach()              # [1, 1, D]
    static = TorchInPlaceCache(thinker, capacity)
    for i, (key, value) in enumerate(static.buffers):
        key[:, :, :length] = torch.from_numpy(cached[2 * i])
        value[:, :, :length] = torch.from_numpy(cached[2 * i + 1])

    @torch.inference_mode()
    def dynamic():
        cache = DynamicCache(config=thinker.config.text_config)
        for i in range(len(cached) // 2):
            cache.update(torch.from_numpy(cached[2 * i]), torch.from_numpy(cached[2 * i + 1]), i)
        for t in range(tokens):
            pos = torch.full((3, 1, 1), length + t)
            out = thinker.model(inputs_embeds=embed, position_ids=pos, past_key_values=cache, use_cache=True)
            thinker.lm_head(out.last_hidden_state[:, -1])

    @torch.inference_mode()
    def in_place():
        static.length = length
        for t in range(tokens):
            static.step(embed, np.full((3, 1), length + t), True)

    return {("torch DynamicCache", length): dynamic, ("torch static cache", length): in_place}


if __name__ == "__main__":
    main()
