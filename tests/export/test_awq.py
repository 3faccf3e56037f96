"""Calibrated symmetric INT4 (export/decoder/awq.py): exact folding, never worse than RTN on its rows, finds
planted outlier channels, records what calibrated it, and refuses bad calibration input in one line."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from omnisift_edge.export.decoder import awq  # noqa: E402

SIZE = (112, 84)


@pytest.fixture(scope="module")
def calibrated(tiny_model):
    clips, record = awq.calibration_clips(tiny_model, SIZE)
    inputs = awq.collect_inputs(tiny_model, clips[:1], SIZE, 0.5, 0.5)
    return inputs, record


def _logits(thinker, embeds):
    with torch.inference_mode():
        return thinker.model(inputs_embeds=embeds).last_hidden_state @ thinker.lm_head.weight.T   # [1, S, V]


def _plant(thinker, channels, factor=20.0):
    """Outlier channels, same function: norm weight x factor, the columns reading it / factor."""
    groups, _ = awq.layer_groups(thinker)
    with torch.no_grad():
        for group in groups:
            prev = thinker.get_submodule(group.prev)
            if prev.weight.dim() == 1:
                prev.weight[channels] *= factor
                for name in group.linears:
                    thinker.get_submodule(name).weight[:, channels] /= factor


def test_calibration_rows_come_from_the_stream(calibrated, tiny_model):
    inputs, record = calibrated
    groups, skipped = awq.layer_groups(tiny_model.thinker)
    assert set(inputs) == {g.linears[0] for g in groups}
    hidden = tiny_model.thinker.config.text_config.hidden_size
    assert all(x.shape[1] in (hidden, tiny_model.thinker.config.text_config.intermediate_size) for x in inputs.values())
    assert min(x.shape[0] for x in inputs.values()) > 20            # chunks' kept tokens + prompt + answer
    assert record["source"] == "generated" and len(record["clips"]) == awq.CLIPS
    assert skipped == [] and any(name.endswith("o_proj") for name in inputs)   # o_proj too, under the tiny model's GQA


def test_folding_is_exact_in_float_and_never_worse_than_rtn(calibrated, tiny_model):
    inputs, _ = calibrated
    thinker = copy.deepcopy(tiny_model.thinker).float()
    embeds = torch.randn(1, 12, thinker.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    before = _logits(thinker, embeds)
    report = awq.apply_awq(thinker, inputs, 32)
    after = _logits(thinker, embeds)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)        # x/s then s W: the same function
    assert all(g.error_awq <= g.error_rtn for g in report.groups)
    steps = report.record()["output_error_ratio_per_step"]
    assert steps["clip"] <= steps["awq"] <= 1.0 and steps["gptq"] < steps["clip"]   # each step pays on its rows
    norm = thinker.model.layers[0].input_layernorm.weight
    assert not torch.equal(norm, tiny_model.thinker.model.layers[0].input_layernorm.weight.float()) or \
        all(g.alpha == 0 for g in report.groups)


def test_planted_outlier_channels_are_found(tiny_model):
    thinker_model = copy.deepcopy(tiny_model)
    _plant(thinker_model.thinker, torch.tensor([3, 17, 40]))
    clips, _ = awq.calibration_clips(thinker_model, SIZE)
    inputs = awq.collect_inputs(thinker_model, clips[:1], SIZE, 0.5, 0.5)
    report = awq.apply_awq(thinker_model.thinker, inputs, 32)
    norm_groups = [g for g in report.groups if g.prev.endswith("layernorm")]
    assert all(g.alpha > 0 for g in norm_groups)
    assert sum(g.error_awq for g in norm_groups) < 0.5 * sum(g.error_rtn for g in norm_groups)


def test_o_proj_fold_under_gqa_keeps_the_function(tiny_model):
    """o_proj's input channel (head h, dim d) takes the scale of kv head h // group, dim d, folded into v_proj."""
    thinker = copy.deepcopy(tiny_model.thinker).float()
    text = thinker.config.text_config
    assert text.num_key_value_heads < text.num_attention_heads                      # the tiny model has GQA
    group = next(g for g in awq.layer_groups(thinker)[0] if g.linears[0].endswith("o_proj"))
    embeds = torch.randn(1, 12, text.hidden_size, generator=torch.Generator().manual_seed(1))
    before = _logits(thinker, embeds)
    kv_scale = torch.rand(thinker.get_submodule(group.prev).weight.shape[0], generator=torch.Generator().manual_seed(2))
    s = awq._repeat_heads(kv_scale.view(-1, group.head_dim) * 4 + 0.25, group.kv_repeat)     # [heads x D]
    awq.fold(thinker, group, s)
    assert not torch.equal(thinker.get_submodule(group.linears[0]).weight, tiny_model.thinker.get_submodule(group.linears[0]).weight)
    torch.testing.assert_close(_logits(thinker, embeds), before, rtol=1e-4, atol=1e-4)


def test_gptq_and_clip_beat_rtn_on_correlated_rows():
    """A planted case: rows with strong correlations (what GPTQ's error feedback exploits)."""
    from omnisift_edge.export.decoder import gptq

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=gen) @ torch.randn(16, 128, generator=gen) + 0.1 * torch.randn(512, 128, generator=gen)
    w = 0.02 * torch.randn(48, 128, generator=gen)                                   # [N, K]
    h = gptq.hessian(x)                                                              # [K, K]
    scale = gptq.rtn_scales(w, 32)
    rtn = gptq.output_error(w, gptq.round_with(w, scale, 32), scale, h, 32)
    clipped = gptq.clip_scales(w, h, 32)
    clip = gptq.output_error(w, gptq.round_with(w, clipped, 32), clipped, h, 32)
    q = gptq.gptq_round(w, h, clipped, 32)
    assert q.abs().max() <= 7 and torch.equal(q, q.round())                         # ints on the symmetric grid
    direct = float(((x.double() @ (w - q * clipped.repeat_interleave(32, dim=1)).T.double()) ** 2).sum())
    assert gptq.output_error(w, q, clipped, h, 32) == pytest.approx(direct, rel=1e-6)   # tr(D H D^T) is the row error
    assert clip <= rtn and gptq.output_error(w, q, clipped, h, 32) < 0.5 * rtn


def test_fake_quant_is_the_export_rtn():
    from omnisift_edge.export.decoder.quantize import dequantize_weight, quantize_weight

    w = np.random.default_rng(0).standard_normal((48, 128)).astype(np.float32)      # [N, K]
    q, scale = quantize_weight(w.T.copy(), 4, 32)                                   # [K, N]
    want = dequantize_weight(q, scale, 4, 32).T                                     # [N, K]
    np.testing.assert_allclose(awq.fake_quant(torch.from_numpy(w), 32).numpy(), want, rtol=1e-6, atol=1e-6)


def test_export_records_method_calibration_and_block(small_export):
    pytest.importorskip("optimum.exporters.onnx")
    folder = small_export(ratios=(0.25,), resolution=SIZE, weights="int4")
    weights = json.loads((folder / "manifest.json").read_text())["weights"]
    assert (weights["method"], weights["block_size"], weights["symmetric"]) == ("awq+clip+gptq", 32, True)
    calibration = weights["calibration"]
    assert calibration["method"] == "awq+clip+gptq" and calibration["steps"][-1] == "gptq rounding"
    assert calibration["calibration"]["source"] == "generated" and calibration["calibration"]["rows"] > 20
    assert calibration["output_error_ratio"] < 1.0


def test_every_decoder_form_holds_the_same_calibrated_ints(small_export):
    """decoder, decoder_gqa, decoder_scatter and decoder_trt10: one set of ints (shared_weights stores it once),
    and the export's ORT-vs-PyTorch checks on the dequantized weights passed."""
    pytest.importorskip("optimum.exporters.onnx")
    from tests.export.test_quantize import _graph_ints

    folder = small_export(ratios=(0.25,), resolution=SIZE, weights="int4")
    forms = {name: _graph_ints(folder / f"{name}.onnx") for name in ("decoder", "decoder_gqa", "decoder_scatter",
                                                                     "decoder_trt10")}
    layers = json.loads((folder / "manifest.json").read_text())["thinker_shape"]["text"]["layers"]
    assert len(forms["decoder"]) == 7 * layers
    for name, ints in forms.items():
        assert ints.keys() == forms["decoder"].keys(), name
        assert all(np.array_equal(a, b) for key in ints for a, b in zip(ints[key], forms["decoder"][key])), name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert all(manifest["validation"][g]["ok"] for g in ("decoder", "decoder_gqa", "decoder_scatter"))


@pytest.mark.parametrize("args, needle", [
    (["--weights", "int4", "--calibration-data", "missing.mp4"], "does not exist"),
    (["--weights", "int8", "--calibration", "awq"], "is for --weights int4"),
    (["--weights", "fp32", "--calibration", "rtn"], "is for --weights int4"),
    (["--weights", "int8", "--calibration", "gptq"], "is for --weights int4"),
    (["--weights", "int4", "--calibration", "rtn", "--calibration-data", "clip.bin"], "calibrates --calibration gptq"),
    (["--weights", "int4", "--calibration-data", "clip.bin"], "clip.bin"),
])
def test_bad_calibration_input_is_one_line_exit_1_nothing_written(tmp_path, monkeypatch, args, needle):
    pytest.importorskip("optimum.exporters.onnx")
    from click.testing import CliRunner

    from omnisift_edge.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "clip.bin").write_bytes(b"not a video at all" * 10)          # unreadable: found only when decoded
    out = tmp_path / "x"
    result = CliRunner().invoke(main, ["export", *args, "--resolution", "112x84", "-o", str(out)])
    assert result.exit_code == 1 and needle in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3
    assert not out.exists() and not list(tmp_path.glob(".x.partial-*"))
