"""The TensorRT part of `decode_cache.py`: per-token decode cost of the in-place engine vs the fallback.

Both TensorRT decoder forms of the same random-weight thinker, built here for decode (one new token):
- "past_present": `decoder.onnx` (the TensorRT 10.3 / JetPack 6 fallback) driven as `TrtStream` drives
  it: `runtime.trt_kv.DeviceKV` binds the packed cache, the presents are copied device-to-device back
  after every call (the copy is part of the cost measured);
- "in_place": `decoder_scatter.onnx` (KVCacheUpdate: TensorRT >= 10.15 or TensorRT-RTX) with
  `runtime.trt_kv.StaticDeviceKV`: the present aliases the past, the engine writes one row per token.
Needs a CUDA GPU and TensorRT >= 10.15 (else TensorRT-RTX); `skip_reason()` says why not otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def skip_reason() -> tuple[str | None, str | None]:
    """(flavour to use, None) where the measurement can run, else (None, why not)."""
    from omnisift_edge.errors import UsageError
    from omnisift_edge.runtime.trt_env import detect_device, require_tensorrt

    if detect_device() is None:
        return None, "no CUDA GPU found"
    why = []
    for flavour in ("tensorrt", "tensorrt_rtx"):
        try:
            trt = require_tensorrt(flavour)
        except UsageError as exc:
            why.append(str(exc).split(";")[0])
            continue
        if flavour == "tensorrt_rtx" or tuple(int(p) for p in trt.__version__.split(".")[:2]) >= (10, 15):
            return flavour, None
        why.append(f"TensorRT {trt.__version__} has no KVCacheUpdate layer (needs >= 10.15)")
    return None, "; ".join(why)


def _engine(flavour: str, network, shapes: dict, values: dict):
    from polygraphy.backend import trt as ptrt

    profile = ptrt.Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    for name, (lo, opt, hi) in values.items():
        profile.add(name, min=(lo,), opt=(opt,), max=(hi,))
    if flavour == "tensorrt_rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        config = CreateConfigRTX(use_gpu=True, profiles=[profile])
    else:
        config = ptrt.CreateConfig(profiles=[profile])
    runner = ptrt.TrtRunner(ptrt.EngineFromBytes(ptrt.EngineBytesFromNetwork(network, config=config)))
    runner.activate()
    return runner


def measure(flavour: str, thinker, dims, folder: Path, lengths, tokens: int, repeats: int) -> dict:
    """(form, length) -> seconds per decoded token (median of `repeats` runs of `tokens` steps)."""
    from polygraphy.backend import trt as ptrt

    from omnisift_edge.artifact.tensors import decoder_graph, decoder_scatter_graph
    from omnisift_edge.engines.kv_form import parse_static
    from omnisift_edge.export.decoder.past_present import export_decoder
    from omnisift_edge.export.decoder.scatter import export_decoder_scatter
    from omnisift_edge.runtime.trt_env import require_tensorrt
    from omnisift_edge.runtime.trt_kv import DeviceKV, StaticDeviceKV

    trt = require_tensorrt(flavour)
    capacity = max(lengths) + tokens + 8
    kv, hd, layers, d = dims.kv_heads, dims.head_dim, dims.num_layers, dims.hidden
    old_path = export_decoder(thinker, dims, folder / "decoder.onnx", check=False)
    new_path = export_decoder_scatter(thinker, dims, folder / "decoder_scatter.onnx", max_context=capacity)
    old, new = decoder_graph(layers), decoder_scatter_graph(layers)
    pasts = {n: ((1, kv, 1, hd), (1, kv, max(lengths), hd), (1, kv, capacity - 1, hd)) for n in old.input_names[3:]}
    fallback = _engine(flavour, ptrt.NetworkFromOnnxPath(str(old_path), strongly_typed=True), {
        old.input_names[0]: ((1, 1, d),) * 3, old.input_names[1]: ((3, 1, 1),) * 3,
        old.input_names[2]: ((1, 2), (1, max(lengths) + 1), (1, capacity)), **pasts}, {})
    in_place = _engine(flavour, parse_static(trt, ptrt, new_path, True, {"batch_size": 1, "cache_length": capacity}), {
        new.input_names[0]: ((1, 1, d),) * 3, new.input_names[1]: ((3, 1, 1),) * 3,
        new.input_names[3]: ((1,),) * 3}, {new.input_names[2]: (0, max(lengths), capacity - 1)})
    token = (np.random.default_rng(0).standard_normal((1, 1, d)) * 0.5).astype(np.float32)   # [1, 1, D]
    old_kv = DeviceKV(old.input_names[3:], old.output_names[1:], kv, hd, capacity, np.float32)
    new_kv = StaticDeviceKV(new.input_names[4:], new.output_names[1:], kv, hd, capacity, np.float32)

    def run_old(length):
        old_kv.length = length                         # the rows' values do not change the cost
        for t in range(tokens):
            pos = np.full((3, 1, 1), length + t, np.int64)
            out = fallback.infer({old.input_names[0]: token, old.input_names[1]: pos,
                                  old.input_names[2]: np.ones((1, old_kv.length + 1), np.int64), **old_kv.bind()},
                                 copy_outputs_to_host=False)
            old_kv.append(1, out)
            old_kv.memory.to_host(out[old.output_names[0]])

    def run_new(length):
        new_kv.length = length
        for t in range(tokens):
            out = in_place.infer({new.input_names[0]: token, new.input_names[1]: np.full((3, 1, 1), length + t, np.int64),
                                  new.input_names[2]: np.array([new_kv.length], np.int64),
                                  new.input_names[3]: np.array([0], np.int64), **new_kv.bind()},
                                 copy_outputs_to_host=False)
            new_kv.append(1, out)
            new_kv.memory.to_host(out[new.output_names[0]])

    results = {}
    for length in lengths:
        for form, fn in (("past_present", run_old), ("in_place", run_new)):
            fn(length)                                   # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(length)
                times.append((time.perf_counter() - start) / tokens)
            results[(form, length)] = float(np.median(times))
    for runner in (fallback, in_place):
        runner.deactivate()
    old_kv.close()
    new_kv.close()
    return results


def report(flavour: str, results: dict, lengths) -> None:
    print(f"\n{flavour} decode, ms per token (one new token; fallback includes its device-to-device present copy):")
    print("| cached | past_present (fallback) | in_place (KVCacheUpdate) | fallback / in-place |")
    print("|---|---|---|---|")
    for length in lengths:
        a, b = results[("past_present", length)], results[("in_place", length)]
        print(f"| {length} | {a * 1000:.2f} | {b * 1000:.2f} | {a / b:.2f}x |")
