"""Issue 21's done-when on the mid-size model: an int4 export (calibrated, the default gptq) of the
896-wide, 8-layer thinker (benchmarks/pipeline.py's "mid": 14 heads, 2 KV heads, vocab 152064)
passes its own checks, builds with `--target rtx`, and its TensorRT-10.3 form (decoder_trt10.onnx)
parses and builds in TensorRT-RTX with INT4 DEQUANTIZE layers, on the CPU.

Minutes, not seconds (a 0.8 GB fp16 checkpoint exported and built once for the module), so this
file runs the whole chain once and asserts every step on it.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")
trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu12)")

MID = {"hidden_size": 896, "num_hidden_layers": 8, "num_attention_heads": 14, "num_key_value_heads": 2,
       "intermediate_size": 4864}


def mid_thinker_config() -> dict:
    """benchmarks/pipeline.py's mid-size thinker (text as above, vision 4 x 256, audio 4 x 256)."""
    from omnisift_edge.model.tiny import tiny_thinker_config_dict

    cfg = tiny_thinker_config_dict()
    d, heads = MID["hidden_size"], MID["num_attention_heads"]
    cfg["text_config"].update(MID, rope_scaling={"mrope_section": [d // heads // 8, 3 * d // heads // 16,
                                                                   3 * d // heads // 16],
                                                 "rope_type": "default", "type": "default"})
    cfg["vision_config"].update(depth=4, hidden_size=256, num_heads=4, intermediate_size=1024, out_hidden_size=d,
                                fullatt_block_indexes=[3])
    cfg["audio_config"].update(encoder_layers=4, d_model=256, encoder_attention_heads=4, encoder_ffn_dim=1024,
                               output_dim=d)
    return cfg


@pytest.fixture(scope="module")
def mid_int4(tmp_path_factory):
    from benchmarks.export_cost import write_folder
    from omnisift_edge.export.stage import ExportConfig, export
    from omnisift_edge.model.load import ModelSource

    root = tmp_path_factory.mktemp("mid")
    write_folder(root / "model", mid_thinker_config())
    out = root / "export"
    export(ExportConfig(out=out, source=ModelSource(path=root / "model", dtype="fp16"), dtype="fp16", ratios=(1.0,),
                        resolution=(112, 84), max_context=1024, weights="int4"))
    return out


def test_the_mid_size_int4_export_is_calibrated_and_checked(mid_int4):
    manifest = json.loads((mid_int4 / "manifest.json").read_text())
    assert manifest["dims"]["hidden"] == MID["hidden_size"] and manifest["dims"]["num_layers"] == 8
    weights = manifest["weights"]
    assert weights["mode"] == "int4" and weights["method"] == "awq+clip+gptq" and weights["block_size"] == 32
    assert weights["quantized_matmuls"] == 7 * 8                           # q k v o gate up down per layer
    assert all(check["ok"] for check in manifest["validation"].values())   # every graph against PyTorch
    assert "decoder_trt10" in manifest["kv_cache"]


def test_the_mid_size_int4_export_builds_for_rtx(mid_int4, tmp_path):
    import shutil

    from omnisift_edge.engines.build import build_engines
    from omnisift_edge.engines.plan import BuildConfig

    folder = tmp_path / "export"
    shutil.copytree(mid_int4, folder)
    build_engines(BuildConfig(folder, target="rtx"))
    report = json.loads((folder / "manifest.json").read_text())["builds"]["rtx"]
    assert report["decoder_form"]["graph"] == "decoder_scatter"               # TensorRT-RTX: the in-place form
    assert {"vision_encoder", "audio_encoder", "decoder_scatter"} <= set(report["engines"])
    assert all((folder / e["file"]).stat().st_size == e["bytes"] > 10_000 for e in report["engines"].values())


def test_the_mid_size_tensorrt_10_3_form_parses_and_builds_with_int4_dequantize(mid_int4):
    from omnisift_edge.export.decoder import trt_int4
    from tests.export.test_quantize import rtx_build

    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(mid_int4 / trt_int4.FILE)), [parser.get_error(i).desc()
                                                                   for i in range(parser.num_errors)]
    layers = trt_int4.dequantize_layers(trt, network)
    assert len(layers) == 7 * 8 and {dtype for _, dtype in layers} == {"INT4"}
    assert rtx_build(mid_int4 / trt_int4.FILE, trt) > 0
