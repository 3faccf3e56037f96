"""The decoder's TensorRT-10.3 weight-only form (decoder_trt10.onnx, export/decoder/trt_int4.py).

What CI can prove without TensorRT 10.3: the form parses and builds in TensorRT-RTX, its DEQUANTIZE
layers read INT4 (int8: INT8) constants, it computes what the Q/DQ form does (ONNX Runtime runs
decoder.onnx; the TensorRT form with a numpy dequantization of its own weights runs beside it),
its weights are the Q/DQ form's bytes (stored once), the manifest names it, and the engines stage
picks it on TensorRT 10.0-10.5 instead of refusing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.export.decoder import trt_int4  # noqa: E402

RESOLUTION = (112, 84)


@pytest.fixture(scope="module", params=["int4", "int8"])
def quant_export(request, small_export):
    return request.param, small_export(ratios=(0.25,), resolution=RESOLUTION, weights=request.param)


@pytest.fixture(scope="module")
def int4_export(small_export):
    return small_export(ratios=(0.25,), resolution=RESOLUTION, weights="int4")


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _feeds(session, past=5, seq=3, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        if i.name == "inputs_embeds":
            feeds[i.name] = rng.standard_normal((1, seq, i.shape[2])).astype(np.float32)       # [1, S, H]
        elif i.name == "position_ids":
            feeds[i.name] = np.tile(np.arange(past, past + seq), (3, 1, 1)).astype(np.int64)  # [3, 1, S]
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, past + seq), np.int64)                                 # [1, P + S]
        else:
            feeds[i.name] = rng.standard_normal((1, i.shape[1], past, i.shape[3])).astype(np.float32)  # [1, kv, P, hd]
    return feeds


def _session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_manifest_names_the_form_and_which_tensorrt_takes_which(int4_export):
    manifest = _manifest(int4_export)
    form = manifest["kv_cache"][trt_int4.GRAPH]
    assert form["file"] == "decoder_trt10.onnx" and form["replaces"] == "decoder" and form["opset"] == 17
    assert form["weights_node"] == "trt::TRT_INT4DequantizeLinear"
    assert form["quantized_matmuls"] == manifest["weights"]["quantized_matmuls"]
    assert [t["name"] for t in form["entry"]["inputs"]] == [t["name"] for t in manifest["graphs"]["decoder"]["inputs"]]
    forms = {f["graph"] for f in manifest["weights"]["tensorrt_forms"]}
    assert "decoder_trt10.onnx" in forms and "decoder_scatter.onnx" in forms
    shared = manifest["shared_weights"]
    assert "decoder_trt10.onnx" in shared["graphs"]                 # its int4 weights are decoder.onnx's bytes
    assert shared["graph_bytes"]["decoder_trt10.onnx"] <= shared["graph_bytes"]["decoder.onnx"]
    assert not list(int4_export.glob("*.onnx.data"))
    assert not [f for f in manifest["lint"]["decoder_trt10"] if f["severity"] == "error"]


def test_the_tensorrt_form_computes_what_the_qdq_form_does(quant_export):
    """ORT runs decoder.onnx (Q/DQ); the TensorRT form, its weights dequantized in numpy, runs beside it."""
    from omnisift_edge.artifact.onnx_runtime import ort_session

    weights, folder = quant_export
    model = onnx.load(str(folder / trt_int4.FILE))
    op = trt_int4.OP if weights == "int4" else "DequantizeLinear"
    assert sum(n.op_type == op for n in model.graph.node) == _manifest(folder)["weights"]["quantized_matmuls"]
    assert next(o.version for o in model.opset_import if o.domain == "") == 17
    qdq = ort_session(folder / "decoder.onnx")
    copy = trt_int4.dequantized_copy(folder / trt_int4.FILE)
    plain = _session(copy)
    feeds = _feeds(qdq)
    got, want = plain.run(None, feeds), qdq.run(None, feeds)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    unquantized = trt_int4.dequantized_copy(folder / trt_int4.FILE)   # a wrong scale must show
    scale = next(t for t in unquantized.graph.initializer if t.name.endswith("_dq"))
    array = onnx.numpy_helper.to_array(scale) * 1.5
    scale.CopyFrom(onnx.numpy_helper.from_array(array.astype(array.dtype), scale.name))
    off = _session(unquantized).run(None, feeds)[0]
    assert np.abs(off - want[0]).max() > 1e-3


@pytest.mark.rtx
def test_tensorrt_rtx_parses_and_builds_the_form_with_int4_dequantize_layers(quant_export):
    import tensorrt_rtx as trt

    from tests.export.test_quantize import rtx_build

    weights, folder = quant_export
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(folder / trt_int4.FILE)), [parser.get_error(i).desc()
                                                                 for i in range(parser.num_errors)]
    layers = trt_int4.dequantize_layers(trt, network)
    assert len(layers) == _manifest(folder)["weights"]["quantized_matmuls"]
    assert {dtype for _, dtype in layers} == {"INT4" if weights == "int4" else "INT8"}
    assert rtx_build(folder / trt_int4.FILE, trt) > 0


@pytest.mark.parametrize("flavour, tensorrt, graph", [("tensorrt", "10.3", "decoder_trt10"),
                                                      ("tensorrt", "10.0", "decoder_trt10"),
                                                      ("tensorrt", "10.8", "decoder"),
                                                      ("tensorrt", "10.15", "decoder_scatter"),
                                                      ("tensorrt_rtx", "1.7", "decoder_scatter")])
def test_the_engines_stage_picks_the_form_by_tensorrt_version(int4_export, flavour, tensorrt, graph):
    from omnisift_edge.engines.kv_form import build_graphs, decoder_form
    from omnisift_edge.engines.plan import weights_form_problem

    manifest = _manifest(int4_export)
    form, why = decoder_form(manifest, flavour, tensorrt)
    assert form == graph and why
    assert weights_form_problem(manifest, tensorrt, flavour) is None
    files = {g: e.file for g, e in build_graphs(manifest, form).items()}
    assert ("decoder" in files) == (graph != "decoder_scatter")          # the engine keeps the name `decoder`
    if graph == "decoder_trt10":
        assert files["decoder"] == "decoder_trt10.onnx"


def test_a_tensorrt_with_neither_form_is_refused_in_one_line(int4_export):
    from omnisift_edge.engines.plan import weights_form_problem

    manifest = _manifest(int4_export)
    assert "no INT4 importer" in weights_form_problem(manifest, "8.6", "tensorrt")
    del manifest["kv_cache"][trt_int4.GRAPH]                             # an export from before the form
    problem = weights_form_problem(manifest, "10.3", "tensorrt")
    assert "no decoder_trt10 form" in problem and "\n" not in problem


def test_build_plan_for_orin_nx_plans_the_form_and_says_which_target_gets_which(int4_export, tmp_path):
    import shutil

    from click.testing import CliRunner

    from omnisift_edge.cli import main

    folder = tmp_path / "export"
    shutil.copytree(int4_export, folder)
    result = CliRunner().invoke(main, ["build", str(folder), "--target", "orin-nx", "--plan"])
    assert result.exit_code == 0, result.output
    assert "--onnx=" + str(folder / "decoder_trt10.onnx") in result.output
    plan = json.loads((folder / "engines" / "orin-nx" / "build_plan.json").read_text())
    assert plan["decoder_form"]["graph"] == "decoder_trt10"
    fits = {f["target"]: f["decoder_form"] for f in plan["memory"]["fits"]}
    assert fits["orin-nx"].startswith("decoder_trt10") and fits["h100"].startswith("decoder_scatter")
    assert "decoder form" in result.output and not any("cannot parse" in w for w in plan["warnings"])


def _node_model(scale_shape, zero_point=None):
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    q = numpy_helper.from_array(np.zeros((64, 32), ml_dtypes.int4), "q")
    inits = [q, numpy_helper.from_array(np.ones(scale_shape, np.float32), "s")]
    inputs = ["q", "s"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(np.full(scale_shape, zero_point, ml_dtypes.int4), "z"))
        inputs.append("z")
    nodes = [helper.make_node(trt_int4.OP, inputs, ["w"], domain="trt", name="dq", axis=0),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt", 1)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("scale_shape, zero_point, needle", [((2, 32), None, None), ((3, 32), None, "scale shape"),
                                                             ((2, 16), None, "scale shape"), ((2, 32), 1, "zero point")])
def test_lint_knows_the_node(scale_shape, zero_point, needle):
    from omnisift_edge.export.lint import lint_model

    findings = lint_model(_node_model(scale_shape, zero_point))
    errors = [f.message for f in findings if f.severity == "error"]
    assert any("ONNX Runtime cannot run" in f.message for f in findings)
    assert (not errors) if needle is None else any(needle in e for e in errors), errors
