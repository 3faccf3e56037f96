"""engines/speed.py: the roofline speed prediction, checked against NVIDIA's published Orin figures and
against ONNX Runtime on this CPU (`profile`), and `plan --target`'s output and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from omnisift_edge.cli import main
from omnisift_edge.engines.hardware import FIGURES, cpu_hardware, hardware_for
from omnisift_edge.engines.speed import llm_speed, speed_for_config
from omnisift_edge.errors import UsageError
from omnisift_edge.model.shape import TextShape

CONFIGS = Path(__file__).parents[1] / "model" / "configs"
SEVEN_B = CONFIGS / "qwen2_5_omni_7b.json"
PUBLISHED = Path(__file__).parent / "published"
TOLERANCE = 0.25          # the bar for the published figures


def _published(name: str):
    record = json.loads((PUBLISHED / f"{name}.json").read_text())
    return TextShape(**record["text"]), record["quantization"], record["published"]


@pytest.mark.parametrize("target", ["orin-agx", "orin-nx"])
def test_decode_lands_within_25pct_of_published_qwen3_vl_8b(target):
    text, quant, published = _published("qwen3_vl_8b")
    _, decode = llm_speed(text, target, weights=quant["weights"], block_size=quant["block_size"],
                          prompt=published["prompt_tokens"])
    predicted, measured = 1 / decode.seconds, published["decode_tokens_per_s"][target]
    assert decode.bound == "memory"
    assert abs(predicted / measured - 1) <= TOLERANCE, (predicted, measured)


def test_prefill_lands_within_25pct_of_published_qwen2_5_vl_7b():
    text, quant, published = _published("qwen2_5_vl_7b")
    prefill, _ = llm_speed(text, "orin-agx", weights=quant["weights"], block_size=quant["block_size"],
                           prompt=published["prompt_tokens"])
    measured = published["prefill_ms"]["orin-agx"]
    assert prefill.bound == "math"
    assert abs(prefill.ms / measured - 1) <= TOLERANCE, (prefill.ms, measured)


def _seven_b(target="orin-nx", ratios=(1.0, 0.5, 0.25), weights="int4", **kw):
    return speed_for_config(SEVEN_B, target=target, ratios=ratios, resolution=(448, 448), dtype="fp16",
                            weights=weights, block_size=32, lm_head_quantized=False, max_context=kw.get("ctx", 8192))


def test_ratio_cuts_prefill_not_the_encoders_and_buys_a_longer_window():
    plan = _seven_b()
    full, quarter = plan.ratio(1.0), plan.ratio(0.25)
    assert (full.kept, quarter.kept) == (562, 141)
    assert quarter.stages["vision_encoder"].ms == full.stages["vision_encoder"].ms
    assert 3.5 < full.stages["prefill"].ms / quarter.stages["prefill"].ms < 4.2      # math-bound: ~ the kept tokens
    assert quarter.real_time_factor < full.real_time_factor
    assert quarter.window_seconds > 3 * full.window_seconds
    assert full.chunk.seconds == pytest.approx(sum(s.seconds for s in full.stages.values()))


def test_decode_is_memory_bound_and_follows_bandwidth_and_weights():
    nx, agx = _seven_b("orin-nx").ratio(0.25), _seven_b("orin-agx").ratio(0.25)
    assert nx.decode_short.bound == agx.decode_short.bound == "memory"
    assert agx.decode_short.seconds == pytest.approx(nx.decode_short.seconds * 102.4 / 204.8, rel=1e-6)
    fp16 = _seven_b("orin-agx", weights="fp16").ratio(0.25)
    assert 2 < fp16.decode_short.seconds / agx.decode_short.seconds < 3.5     # int4 streams ~1/3 of the bytes
    assert agx.decode_full.seconds > agx.decode_short.seconds                 # the longer cache is read too


def test_every_preset_has_sourced_figures():
    from omnisift_edge.engines.presets import PRESETS

    for name, target in PRESETS.items():
        figures = target.figures
        assert figures is not None and figures.source and figures.bandwidth_gbs > 0, name
        assert 1.98 <= figures.int8_tops / figures.fp16_tflops <= 4.02, name     # GeForce: fp32-accumulate fp16 is half rate
        assert figures.memory_gb == target.memory_gb, name


def test_cpu_figures_come_from_the_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNISIFT_CPU_PROBE", str(tmp_path / "probe.json"))
    hw = hardware_for("cpu")
    assert hw.kind == "cpu" and hw.fp32_tflops > 0 and hw.bandwidth_gbs > 0
    cached = json.loads((tmp_path / "probe.json").read_text())
    assert hardware_for("cpu").bandwidth_gbs == cpu_hardware(cached).bandwidth_gbs    # measured once, then read


def test_plan_target_prints_stages_and_rtf():
    result = CliRunner().invoke(main, ["plan", str(SEVEN_B), "--weights", "int4", "--target", "orin-nx",
                                       "--ratio", "0.25"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "predicted speed on orin-nx" in text and "RTF" in text and "prefill" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("0.25"))
    assert "141" in row and "(M)" in row


@pytest.mark.parametrize("args,message", [
    (["--target", "bogus"], "no speed figures for --target 'bogus'"),
    (["--target", "auto"], "no speed figures for --target 'auto'"),
])
def test_plan_bad_target_is_one_line(args, message):
    result = CliRunner().invoke(main, ["plan", str(SEVEN_B), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_plan_config_that_is_not_omni_is_one_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "qwen3_vl", "text_config": {}}))
    result = CliRunner().invoke(main, ["plan", str(config), "--target", "orin-nx"])
    assert result.exit_code == 1 and "not Qwen2.5-Omni" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_plan_export_ratio_it_lacks_is_one_line(engine_export):
    result = CliRunner().invoke(main, ["plan", str(engine_export), "--target", "orin-nx", "--ratio", "0.5"])
    assert result.exit_code == 1 and "no compressor for ratio 0.5" in result.output
    ok = CliRunner().invoke(main, ["plan", str(engine_export), "--target", "orin-agx", "--ratio", "0.25"])
    assert ok.exit_code == 0 and "predicted speed on orin-agx" in ok.output, ok.output


def test_unknown_figures_name_the_choices():
    with pytest.raises(UsageError, match="orin-nx"):
        hardware_for("jetson-xavier")
    assert set(FIGURES) >= {"orin-nano", "orin-nx", "orin-agx", "a100", "l4", "h100", "rtx"}


# The check against this CPU: tolerance is a factor of 4 either way. The dev machine is a 2-core VM shared
# by 8 engineers (load averages of 16 seen while this was written): the probe (median of 5) and the profile run
# back to back still see different loads, and ONNX Runtime's matrix-vector products reach less of the copy
# bandwidth than the probe; each decode step also pays ONNX Runtime's per-call cost and numpy's argmax over
# 152064 logits, which the roofline leaves out. The slower of two probes (before and after) is used. A factor
# of 4 still fails a predictor that is wrong by an order of magnitude
# (a wrong byte count, fp16 counted as fp16 on a CPU that runs fp32, a missing LM head).
CPU_FACTOR = 4.0


def test_cpu_decode_prediction_matches_profile(engine_export, tmp_path):
    """(1) The tiny default's decode (memory-bound: its 39 MB fp32 LM head per token) measured by
    `profile` against the roofline on this CPU's probed figures, measured just before."""
    from omnisift_edge.engines.hardware import measure_cpu
    from omnisift_edge.engines.speed import PROMPT_TOKENS, QUESTION_TOKENS, speed_for_export
    from omnisift_edge.profiling.profile import ProfileConfig, profile

    before = measure_cpu(statistic="median", copy_mb=128)
    report = profile(ProfileConfig(engine_export, ratios=(1.0,), seconds=6.0, max_new_tokens=48,
                                   out=tmp_path / "profile"), bar=False)
    after = measure_cpu(statistic="median", copy_mb=128)
    probe = min(before, after, key=lambda p: p["bandwidth_gbs"])        # the load the run saw, at its worst
    measured = report.ratios[0]
    kept = measured["tokens_kept"] // measured["chunks"]
    window = max(PROMPT_TOKENS + measured["chunks"] * kept + QUESTION_TOKENS, 256)
    plan = speed_for_export(engine_export, target="cpu", ratios=(1.0,), max_context=window,
                            hardware=cpu_hardware(probe))
    predicted = plan.ratios[0].decode_full
    assert predicted.bound == "memory"
    ratio = measured["decode_tokens_per_s"] * predicted.seconds        # predicted time / measured time
    assert 1 / CPU_FACTOR <= ratio <= CPU_FACTOR, (measured["decode_tokens_per_s"], 1 / predicted.seconds, probe)
