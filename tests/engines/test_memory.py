"""engines/memory.py: the memory plan per target, for a bare config and an export, checked against ORT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnisift_edge.engines.memory import (
    GB,
    MemoryConfig,
    graph_weight_bytes,
    kv_per_token,
    ort_cpu_decoder_peak,
    plan_config,
    plan_memory,
    weight_bytes,
)
from omnisift_edge.errors import UsageError
from omnisift_edge.model.shape import ThinkerShape

CONFIGS = Path(__file__).parents[1] / "model" / "configs"
SEVEN_B = CONFIGS / "qwen2_5_omni_7b.json"


def _fit(plan, target):
    return next(f for f in plan.fits if f.target == target)


def test_7b_int4_fits_orin_nx_and_fp16_does_not():
    int4 = plan_config(SEVEN_B, weights="int4", max_context=8192)
    fp16 = plan_config(SEVEN_B, weights="fp16", max_context=8192)
    assert _fit(int4, "orin-nx").fits and _fit(int4, "orin-nx").max_context >= 8192
    assert not _fit(fp16, "orin-nx").fits and not _fit(fp16, "orin-nano").fits
    assert _fit(fp16, "orin-agx-32").fits
    # int4 stores the 6.5B linear weights in 0.5 + 2/32 bytes each instead of 2
    saved = fp16.weights["decoder"] - int4.weights["decoder"]
    assert saved == pytest.approx(6.53e9 * (2 - 0.5625), rel=0.01)
    text = "\n".join(int4.summary().splitlines())
    assert "orin-nx" in text and "KV cache" in text


def test_largest_context_is_the_edge_of_fitting():
    plan = plan_config(SEVEN_B, weights="int8", max_context=8192)
    fit = _fit(plan, "orin-nx")
    assert 0 < fit.max_context < 32768
    over = plan_config(SEVEN_B, weights="int8", max_context=fit.max_context + 256)
    at = plan_config(SEVEN_B, weights="int8", max_context=fit.max_context)
    assert _fit(at, "orin-nx").fits and not _fit(over, "orin-nx").fits


def test_sliding_window_caps_the_cache():
    full = plan_config(SEVEN_B, weights="int4", max_context=32768)
    window = plan_config(SEVEN_B, weights="int4", max_context=32768, window=4096)
    assert window.cache_tokens == 4096 and window.kv_cache * 8 == full.kv_cache
    assert _fit(window, "orin-nx").max_context == 32768


@pytest.mark.parametrize("settings,match", [
    (dict(weights="int4", block_size=48), "does not divide the layer width"),
    (dict(weights="int2"), "--weights must be"),
    (dict(max_context=40000), "max_position_embeddings"),
    (dict(window=9000), "--window must be"),
])
def test_bad_settings_are_one_line(settings, match):
    with pytest.raises(UsageError, match=match):
        plan_config(SEVEN_B, **settings)


def test_cli_plan_for_a_config_that_is_not_omni_exits_1(tmp_path):
    from click.testing import CliRunner

    from omnisift_edge.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    result = CliRunner().invoke(main, ["plan", str(path)])
    assert result.exit_code == 1 and "not Qwen2.5-Omni" in result.output and "Traceback" not in result.output
    ok = CliRunner().invoke(main, ["plan", str(SEVEN_B), "--weights", "int4", "--json", str(tmp_path / "p.json")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "p.json").read_text())["weights_mode"] == "int4"


# ---- against real graphs: the embedded default --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_decoders(tiny_model, tmp_path_factory):
    pytest.importorskip("optimum.exporters.onnx")
    from omnisift_edge.export.decoder import decoder_dims
    from omnisift_edge.export.decoder.past_present import export_decoder
    from omnisift_edge.export.decoder.quantize import QuantConfig, quantize_decoder
    from omnisift_edge.artifact.tensors import Dims

    base = Dims(hidden=64, patch_dim=1176, grid_h=8, grid_w=6, spatial_merge=2, grids_per_chunk=2, n_mels=128,
                window_frames=200, window_audio_tokens=50)
    folder = tmp_path_factory.mktemp("decoders")
    fp32 = export_decoder(tiny_model.thinker, decoder_dims(tiny_model.thinker, base), folder / "decoder.onnx",
                          check=False)
    int4 = folder / "int4" / "decoder.onnx"
    int4.parent.mkdir()
    quantize_decoder(fp32, int4, QuantConfig("int4"))
    return {"fp32": fp32, "int4": int4}


@pytest.fixture(scope="module")
def tiny_shape(tiny_model):
    return ThinkerShape.from_config(tiny_model.thinker.config.to_dict())


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_analytic_decoder_weights_equal_the_graph(tiny_decoders, tiny_shape, weights):
    analytic, _ = weight_bytes(MemoryConfig(tiny_shape, dtype="fp32", weights=weights))
    assert graph_weight_bytes(tiny_decoders[weights], 4) == pytest.approx(analytic["decoder"], rel=0.01)


def test_kv_per_token_equals_the_graph_presents(tiny_decoders, tiny_shape):
    import numpy as np

    from omnisift_edge.artifact.onnx_runtime import ort_session
    from omnisift_edge.artifact.tensors import decoder_graph

    graph = decoder_graph(tiny_shape.text.layers)
    session = ort_session(tiny_decoders["fp32"])
    t = tiny_shape.text
    n = 10
    feeds = [np.zeros((1, n, t.hidden), np.float32), np.zeros((3, 1, n), np.int64), np.ones((1, n), np.int64),
             *[np.zeros((1, t.kv_heads, 0, t.head_dim), np.float32)] * (2 * t.layers)]
    presents = session.run(graph.output_names, dict(zip(graph.input_names, feeds)))[1:]
    one_buffer = sum(p.nbytes for p in presents) // n
    assert kv_per_token(MemoryConfig(tiny_shape, dtype="fp32")) == 2 * one_buffer   # past + present


@pytest.mark.parametrize("weights,sequence,past", [("fp32", 21, 0), ("fp32", 1, 8191), ("int4", 21, 2048),
                                                   ("fp32", 256, 2048)])
def test_plan_predicts_onnx_runtime_peak_within_15_percent(tiny_decoders, tiny_shape, weights, sequence, past):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc (VmHWM reset through clear_refs)")
    from omnisift_edge.profiling.ort_memory import measure_decoder_peak

    path = tiny_decoders[weights]
    measured = measure_decoder_peak(path, sequence, past)
    # fp32 graphs only: an fp16 graph runs through Casts on the CPU provider (docs/quantization.md)
    predicted = ort_cpu_decoder_peak(tiny_shape, graph_weight_bytes(path, 4), dtype="fp32", sequence=sequence, past=past)
    assert predicted == pytest.approx(measured.peak, rel=0.15), (predicted / GB, measured)


def test_build_plan_prints_the_memory_of_an_export(small_export):
    pytest.importorskip("optimum.exporters.onnx")
    from omnisift_edge.engines import BuildConfig
    from omnisift_edge.engines.plan import plan_build

    folder = small_export(ratios=(0.25,), resolution=(112, 84), weights="int4")
    plan = plan_build(BuildConfig(folder, target="orin-nx"))
    assert plan.memory is not None
    assert plan.memory.weights["decoder"] == pytest.approx(graph_weight_bytes(folder / "decoder.onnx", 2), rel=0.02)
    # TensorRT 10.3 cannot parse the Q/DQ decoder: it gets the TRT_INT4DequantizeLinear form (export/decoder/trt_int4.py)
    assert not any("opset 21" in w for w in plan.warnings) and plan.decoder_form[0] == "decoder_trt10"
    assert "memory plan: int4" in plan.summary()
    # build_engines refuses what the plan warns about; TensorRT-RTX and TensorRT >= 10.6 take the Q/DQ form
    from omnisift_edge.artifact.manifest import read_manifest
    from omnisift_edge.engines.plan import weights_form_problem

    manifest = read_manifest(folder)
    assert weights_form_problem(manifest, "10.3.0") is None
    assert "cannot parse" in weights_form_problem(manifest, "8.6.1")
    assert weights_form_problem(manifest, "10.6.0") is None
    assert weights_form_problem(manifest, "1.7.1", "tensorrt_rtx") is None


# --- build memory on Jetson (engines/build_memory.py) ---------------------------------------------


def test_7b_fp16_build_exceeds_orin_nx_and_is_refused_naming_the_fix():
    from omnisift_edge.engines.build_memory import build_memory_problem, build_peak, int4_alternative
    from omnisift_edge.engines.presets import get_target

    plan = plan_config(SEVEN_B, weights="fp16")
    nx = _fit(plan, "orin-nx")
    assert nx.build_gb > nx.memory_gb and nx.build_fits is False
    assert nx.build_gb > nx.need_gb                      # the build needs more than the run
    assert "builds" in plan.summary() and f"{nx.build_gb:5.1f}G  NO" in plan.summary()
    peak = build_peak({g: (b, b) for g, b in plan.weights.items()}, 2)
    assert peak.graph == "decoder" and peak.total == 3 * plan.weights["decoder"] + 2 * GB
    problem = build_memory_problem(peak, get_target("orin-nx"), int4_peak=int4_alternative(plan, 2))
    assert problem.startswith("building the decoder engine for orin-nx needs about")
    assert "\n" not in problem and "shared by CPU and GPU" in problem
    # the only Orin that holds a 7B fp16 build is the 64 GB AGX: build there, copy the engine
    assert "Jetson AGX Orin 64 GB" in problem and "compute capability 8.7" in problem
    assert _fit(plan, "orin-agx").build_fits and not _fit(plan, "orin-agx-32").build_fits


def test_7b_int4_build_on_orin_nx_states_why_not_and_int4_is_offered_where_it_fits():
    import dataclasses

    from omnisift_edge.engines.build_memory import build_memory_problem, build_peak, int4_alternative
    from omnisift_edge.engines.presets import get_target

    int4 = plan_config(SEVEN_B, weights="int4")
    nx = _fit(int4, "orin-nx")
    assert nx.fits                                        # the run fits the NX ...
    assert nx.build_fits is False and nx.usable_gb < nx.build_gb < nx.memory_gb   # ... its 3-copy build just does not
    peak = build_peak({g: (b, b) for g, b in int4.weights.items()}, 2)
    problem = build_memory_problem(peak, get_target("orin-nx"), int4_peak=int4_alternative(int4, 2))
    assert "--weights int4" not in problem and "Jetson AGX Orin 32 GB" in problem   # next larger Orin
    assert _fit(int4, "orin-agx-32").build_fits
    # fp16 on a 32 GB AGX: int4 is the fix named first (its build fits there)
    fp16 = plan_config(SEVEN_B, weights="fp16")
    agx32 = dataclasses.replace(get_target("orin-agx"), memory_gb=32)
    problem = build_memory_problem(build_peak({g: (b, b) for g, b in fp16.weights.items()}, 4), agx32,
                                   int4_peak=int4_alternative(fp16, 4))
    assert "export again with --weights int4 (its build needs about" in problem and "AGX Orin 64 GB" in problem


@pytest.mark.parametrize("target", ["l4", "a100", "h100"])
def test_discrete_gpus_are_not_refused_by_the_build_memory_rule(target):
    from omnisift_edge.engines.build_memory import build_memory_problem, build_peak
    from omnisift_edge.engines.presets import get_target

    plan = plan_config(SEVEN_B, weights="fp16")
    huge = build_peak({"decoder": (500 * GB, 500 * GB)}, 8)
    assert build_memory_problem(huge, get_target(target)) is None
    fit = _fit(plan, target)
    assert fit.build_fits is None and fit.build_gb > 0


def test_a_larger_detected_orin_may_build_a_smaller_ones_engines():
    from omnisift_edge.engines.build_memory import build_memory_problem, build_peak
    from omnisift_edge.engines.presets import get_target

    peak = build_peak({"decoder": (13 * GB, 13 * GB)}, 2)
    assert build_memory_problem(peak, get_target("orin-nx")) is not None
    assert build_memory_problem(peak, get_target("orin-nx"), machine_gb=64) is None


def test_a_grouped_prefill_counts_k_chunks_of_decoder_activations():
    """plan --prefill-chunks K: the decoder's activations are those of a K-chunk prefill call."""
    one = plan_config(SEVEN_B, weights="int4", max_context=8192)
    four = plan_config(SEVEN_B, weights="int4", max_context=8192, prefill_chunks=4)
    eight = plan_config(SEVEN_B, weights="int4", max_context=8192, prefill_chunks=8)
    assert four.config.prefill_rows == max(512, 4 * four.config.chunk_tokens) and eight.config.prefill_rows > 512
    assert one.activations["decoder"] <= four.activations["decoder"] < eight.activations["decoder"]
    assert one.activations["vision_encoder"] == eight.activations["vision_encoder"]
    assert eight.to_dict()["prefill_chunks"] == 8 and "8 chunks per call" in eight.summary()
    with pytest.raises(UsageError, match="--prefill-chunks 100 needs .*rows per call"):
        plan_config(SEVEN_B, weights="int4", max_context=8192, prefill_chunks=100)
    with pytest.raises(UsageError, match="--prefill-chunks must be a whole number"):
        plan_config(SEVEN_B, weights="int4", prefill_chunks=0)


def test_cli_plan_prints_the_grouped_prefill_and_refuses_a_bad_count():
    from click.testing import CliRunner

    from omnisift_edge.cli import main

    ok = CliRunner().invoke(main, ["plan", str(SEVEN_B), "--prefill-chunks", "8"])
    assert ok.exit_code == 0, ok.output
    assert "chunks per call" in ok.output
    bad = CliRunner().invoke(main, ["plan", str(SEVEN_B), "--prefill-chunks", "0"])
    assert bad.exit_code == 1 and [line for line in bad.output.splitlines() if line.startswith("Error:")] == \
        [line for line in bad.output.splitlines() if line.strip()], bad.output
