"""export/onnx_io.py: a graph and its external data file appear whole, data first, or not at all."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from omnisift_edge.export.onnx_io import data_path, staged_graph, uses_external_data, write_graph  # noqa: E402


def _graph(scale: float):
    """y [4, 512] = x [4, 512] + w, w a 8 KiB initializer (over write_graph's 1 KiB threshold)."""
    w = numpy_helper.from_array(np.full((4, 512), scale, np.float32), "w")
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 512])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(session.run(None, {"x": np.zeros((4, 512), np.float32)})[0][0, 0])


def test_external_data_then_embedded_leaves_no_stale_data_file(tmp_path):
    path = tmp_path / "g.onnx"
    with staged_graph(path) as staged:
        assert staged.name == "g.onnx" and staged.parent.parent == tmp_path and staged.parent.name.startswith(".")
        write_graph(_graph(1.0), staged, external_data=True)
        assert not path.exists()                                  # nothing at the name until the block ends
    assert data_path(path).is_file() and uses_external_data(path) and _run(path) == 1.0
    with staged_graph(path) as staged:
        write_graph(_graph(2.0), staged, external_data=False)
    assert not data_path(path).exists() and not uses_external_data(path) and _run(path) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


def test_a_failure_keeps_the_previous_graph_and_its_data(tmp_path):
    path = tmp_path / "g.onnx"
    with staged_graph(path) as staged:
        write_graph(_graph(1.0), staged, external_data=True)
    before = path.read_bytes(), data_path(path).read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with staged_graph(path) as staged:
            write_graph(_graph(3.0), staged, external_data=True)
            raise KeyboardInterrupt                               # e.g. the validation was interrupted
    assert (path.read_bytes(), data_path(path).read_bytes()) == before and _run(path) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.onnx.data"]
