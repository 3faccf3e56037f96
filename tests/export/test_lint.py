"""The TensorRT 10.3 lint: each check fires on a graph built to violate it, and clean graphs pass."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.export import lint as lint_mod  # noqa: E402
from omnisift_edge.export import trt_ops  # noqa: E402
from omnisift_edge.export.lint import (  # noqa: E402
    Finding, format_findings, has_errors, lint_folder, lint_model,
)

F32 = TensorProto.FLOAT


def model(nodes, inputs, outputs, initializers=(), opset=20, ir_version=9, **kw):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)
    m.ir_version = ir_version
    return m


def vi(name, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def topk_model(k=4, k_const=True, sorted_=1):
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=-1, sorted=sorted_)]
    inputs = [vi("x", ["batch_size", 5000])]
    inits = [const("k", [k])] if k_const else []
    if not k_const:
        inputs.append(vi("k", [1], TensorProto.INT64))
    return model(nodes, inputs, [vi("v", ["batch_size", k]), vi("i", ["batch_size", k], TensorProto.INT64)],
                 inits)


def errors(findings, op_type=None):
    return [f for f in findings if f.severity == "error" and (op_type is None or f.op_type == op_type)]


def clean_model():
    w = const("w", np.ones((8, 16)), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Softmax", ["h"], ["p"], name="softmax", axis=-1),
             helper.make_node("Constant", [], ["k"], name="kconst", value=const("kv", [4])),
             helper.make_node("TopK", ["p", "k"], ["v", "i"], name="topk", axis=-1)]
    return model(nodes, [vi("x", ["batch_size", 8])],
                 [vi("v", ["batch_size", 4]), vi("i", ["batch_size", 4], TensorProto.INT64)], [w])


def test_clean_graph_has_no_findings():
    findings = lint_model(clean_model())
    assert findings == []
    assert not has_errors(findings)
    assert format_findings({"g": findings}).startswith("no findings")


def test_unsupported_op_is_an_error():
    m = model([helper.make_node("Unique", ["x"], ["y"], name="u")], [vi("x", [4])], [vi("y", [None])])
    (f,) = errors(lint_model(m), "Unique")
    assert f.node == "u" and "data-dependent" in f.message
    m = model([helper.make_node("Det", ["x"], ["y"], name="det")], [vi("x", [3, 3])], [vi("y", [])])
    assert "unsupported" in errors(lint_model(m), "Det")[0].message
    m = model([helper.make_node("STFT", ["x", "s"], ["y"], name="stft")], [vi("x", [1, 64]), vi("s", [])],
              [vi("y", [1, 2, 33, 2])])
    assert "10.5" in errors(lint_model(m), "STFT")[0].message


def test_other_domains_error_unless_trt_plugin():
    ms = helper.make_node("FastGelu", ["x"], ["y"], name="fg", domain="com.microsoft")
    m = model([ms], [vi("x", [4])], [vi("y", [4])])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    (f,) = errors(lint_model(m))
    assert f.op_type == "FastGelu" and "com.microsoft" in f.message
    plugin = helper.make_node("EfficientNMS_TRT", ["x"], ["y"], name="nms", domain="trt.plugins")
    m = model([plugin], [vi("x", [4])], [vi("y", [4])])
    m.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    (f,) = lint_model(m)
    assert f.severity == "warning" and "plugin" in f.message


def test_topk_k_over_limit():
    (f,) = errors(lint_model(topk_model(k=4000)), "TopK")
    assert "4000" in f.message and "3840" in f.message
    assert lint_model(topk_model(k=trt_ops.TOPK_MAX_K)) == []


def test_topk_dynamic_k():
    (f,) = errors(lint_model(topk_model(k_const=False)), "TopK")
    assert "runtime tensor" in f.message


def test_topk_k_from_value_ints_constant():
    nodes = [helper.make_node("Constant", [], ["k"], name="kc", value_ints=[4000]),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")]
    m = model(nodes, [vi("x", [5000])], [vi("v", [4000]), vi("i", [4000], TensorProto.INT64)])
    assert "4000" in errors(lint_model(m), "TopK")[0].message


def test_topk_unsorted_and_smallest():
    (f,) = lint_model(topk_model(sorted_=0))
    assert f.severity == "warning" and "sorted" in f.message
    m = topk_model()
    m.graph.node[0].attribute.append(helper.make_attribute("largest", 0))
    assert lint_model(m) == []      # largest=0 maps to TopKOperation::kMIN


def test_nonzero_is_an_error_with_design_reason():
    m = model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [vi("x", [4])],
              [vi("y", [1, None], TensorProto.INT64)])
    (f,) = errors(lint_model(m))
    assert f.op_type == "NonZero" and "static per-chunk engines forbid" in f.message


def test_control_flow_is_a_warning():
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "then", [], [vi("y", [4])])
    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=body, else_branch=body)
    m = model([node], [vi("c", [], TensorProto.BOOL), vi("x", [4])], [vi("y", [4])])
    (f,) = lint_model(m)
    assert f.severity == "warning" and f.op_type == "If"


def test_unsupported_op_inside_subgraph_is_found():
    body = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="inner")], "b", [],
                             [vi("y", [1, None], TensorProto.INT64)])
    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=body, else_branch=body)
    m = model([node], [vi("c", [], TensorProto.BOOL), vi("x", [4])], [vi("y", [1, None], TensorProto.INT64)])
    assert [f.node for f in errors(lint_model(m))] == ["if/inner"]


def test_unnamed_dynamic_input_dim():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [None, 8])], [vi("y", [None, 8])])
    (f,) = errors(lint_model(m))
    assert f.node == "x" and "unnamed" in f.message


def test_dim_param_not_in_dynamic_axes():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["n_frames", 8])], [vi("y", ["n_frames", 8])])
    (f,) = errors(lint_model(m))
    assert "'n_frames'" in f.message and "DYNAMIC_AXES" in f.message
    for axis in ("batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"):
        m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [axis, 8])], [vi("y", [axis, 8])])
        assert lint_model(m) == []


def test_float64_tensor_is_an_error():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [4], TensorProto.DOUBLE)],
              [vi("y", [4], TensorProto.DOUBLE)])
    found = errors(lint_model(m))
    assert {f.node for f in found} == {"x", "y"} and "float64" in found[0].message
    cast = helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.DOUBLE)
    m = model([cast], [vi("x", [4])], [vi("y", [4], TensorProto.DOUBLE)])
    assert errors(lint_model(m), "Cast")


def test_weights_over_protobuf_limit(monkeypatch):
    monkeypatch.setattr(trt_ops, "PROTOBUF_LIMIT_BYTES", 8 * 16 * 4)   # the clean model's one weight
    (f,) = errors(lint_model(clean_model()))
    assert "external data" in f.message


def test_external_weights_do_not_count_and_must_exist(tmp_path):
    # a 4 GiB initializer declared external: its size comes from dims, nothing is allocated
    big = TensorProto(name="w", data_type=F32, dims=[2**20, 2**10])
    big.data_location = TensorProto.EXTERNAL
    big.external_data.add(key="location", value="w.onnx.data")
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", [1, 2**20])],
              [vi("y", [1, 2**10])], [big])
    assert lint_mod._Linter(m, "g", None)._tensor_nbytes(big) == 2**32
    onnx.save(m, tmp_path / "big.onnx")
    (f,) = lint_model(tmp_path / "big.onnx")
    assert f.severity == "error" and f.node == "w" and "missing" in f.message   # no size error
    (tmp_path / "w.onnx.data").write_bytes(b"\0" * 16)
    (f,) = lint_model(tmp_path / "big.onnx")
    assert "truncated" in f.message


def test_external_data_round_trip_is_clean(tmp_path):
    m = clean_model()
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    assert lint_model(tmp_path / "m.onnx") == []
    (tmp_path / "m.onnx.data").unlink()
    assert errors(lint_model(tmp_path / "m.onnx"))


def test_too_new_and_too_old_opset():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [4])], [vi("y", [4])], opset=21)
    (f,) = errors(lint_model(m))
    assert "opset 21" in f.message and "opset_version=20" in f.message
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [4])], [vi("y", [4])], opset=8)
    assert errors(lint_model(m))


def test_new_ir_version_warns():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [4])], [vi("y", [4])], ir_version=11)
    (f,) = lint_model(m)
    assert f.severity == "warning" and "IR version" in f.message


@pytest.mark.parametrize("node, inputs, inits, needle", [
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", mode="cubic"), [vi("x", [1, 1, 4, 4])],
     [const("s", [1, 1, 2, 2], np.float32)], "cubic"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", coordinate_transformation_mode="tf_crop_and_resize"),
     [vi("x", [1, 1, 4, 4])], [const("s", [1, 1, 2, 2], np.float32)], "tf_crop_and_resize"),
    (helper.make_node("Einsum", ["x", "x"], ["y"], name="n", equation="IJ,JK->IK"), [vi("x", [4, 4])], [], "lower-case"),
    (helper.make_node("Cast", ["x"], ["y"], name="n", to=TensorProto.INT16), [vi("x", [4])], [], "int16"),
    (helper.make_node("Pad", ["x", "p", "", "a"], ["y"], name="n"), [vi("x", [4]), vi("a", [1], TensorProto.INT64)],
     [const("p", [1, 1])], "10.4"),
    (helper.make_node("ReduceSum", ["x", "a"], ["y"], name="n"), [vi("x", [4]), vi("a", [1], TensorProto.INT64)],
     [], "`axes`"),
    (helper.make_node("Squeeze", ["x", "a"], ["y"], name="n"), [vi("x", [1, 4]), vi("a", [1], TensorProto.INT64)],
     [], "`axes`"),
    (helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="n", reduction="add"),
     [vi("x", [4]), vi("i", [1, 1], TensorProto.INT64), vi("u", [1])], [], "reduction"),
    (helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"], name="n"), [vi("x", [2, 4])],
     [const("s", np.ones(4), np.float32)], "first output"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="n", kernel_shape=[2, 2], dilations=[2, 2]),
     [vi("x", [1, 1, 8, 8])], [], "dilations"),
])
def test_op_restrictions(node, inputs, inits, needle):
    m = model([node], inputs, [vi("y", None)], inits)
    found = errors(lint_model(m), node.op_type)
    assert found and any(needle in f.message for f in found), found


def test_local_function_bodies_are_linted():
    fn = helper.make_function("local", "Wrap", ["a"], ["b"], [helper.make_node("NonZero", ["a"], ["b"], name="nz")],
                              [helper.make_opsetid("", 20)])
    m = model([helper.make_node("Wrap", ["x"], ["y"], name="call", domain="local")], [vi("x", [4])],
              [vi("y", [1, None], TensorProto.INT64)], functions=[fn])
    m.opset_import.append(helper.make_opsetid("local", 1))
    assert [f.node for f in errors(lint_model(m))] == ["call/nz"]


def test_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        lint_model(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x07not a model at all")
    with pytest.raises(UsageError, match="not an ONNX model"):
        lint_model(tmp_path / "junk.onnx")
    with pytest.raises(UsageError, match="folder"):
        lint_model(tmp_path)
    with pytest.raises(UsageError, match="no such folder"):
        lint_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"no \*\.onnx"):
        lint_folder(empty)


def test_oversized_file_is_not_loaded(tmp_path, monkeypatch):
    onnx.save(clean_model(), tmp_path / "m.onnx")
    monkeypatch.setattr(trt_ops, "PROTOBUF_LIMIT_BYTES", 16)
    (f,) = lint_model(tmp_path / "m.onnx")
    assert f.severity == "error" and "external data" in f.message


def test_folder_format_and_has_errors(tmp_path):
    onnx.save(clean_model(), tmp_path / "clean.onnx")
    onnx.save(topk_model(k=4000), tmp_path / "bad.onnx")
    by_graph = lint_folder(tmp_path)
    assert set(by_graph) == {"clean", "bad"} and by_graph["clean"] == []
    assert has_errors(by_graph) and not has_errors(by_graph["clean"])
    text = format_findings(by_graph)
    assert text.splitlines() == [str(f) for f in by_graph["bad"]]
    assert text.startswith("error: bad/topk [TopK]: ")
    assert Finding("warning", "g", "", "", "m").__str__() == "warning: g: m"


def _export_tiny(tmp_path, dynamo: bool):
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 16)

        def forward(self, x):
            probs = torch.softmax(self.proj(x), dim=-1)
            return torch.topk(probs, 4, dim=-1)

    path = tmp_path / f"tiny_{'dynamo' if dynamo else 'legacy'}.onnx"
    torch.onnx.export(Tiny().eval(), (torch.randn(2, 8),), str(path), dynamo=dynamo,
                      input_names=["x"], output_names=["values", "indices"],
                      dynamic_axes={"x": {0: "batch_size"}}, opset_version=trt_ops.OPSET_MAX)
    return path


def test_torch_legacy_export_lints_clean(tmp_path):
    path = _export_tiny(tmp_path, dynamo=False)
    assert lint_model(path) == [], format_findings(lint_model(path))


def test_torch_dynamo_export_lints_clean(tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    path = _export_tiny(tmp_path, dynamo=True)
    assert lint_model(path) == [], format_findings(lint_model(path))
