"""artifact/onnx_runtime.py: how a stream's ONNX Runtime sessions share the CPU (issue 25)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from omnisift_edge.artifact.onnx_runtime import THREAD_POLICIES, ort_session, session_options  # noqa: E402
from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.runtime.session import RuntimeConfig  # noqa: E402

SPIN = "session.intra_op.allow_spinning"


def _entry(options, key):
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:          # not set: ONNX Runtime's default (spinning)
        return None


def _matmul(path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 8]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [8, 3])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_quiet_pools_do_not_spin_and_spin_keeps_onnx_runtimes_default():
    assert _entry(session_options(ort, "quiet"), SPIN) == "0"
    assert _entry(session_options(ort, "quiet"), "session.inter_op.allow_spinning") == "0"
    assert _entry(session_options(ort, "spin"), SPIN) is None
    assert _entry(session_options(ort, "decoder-spin"), SPIN) == "0"
    assert _entry(session_options(ort, "decoder-spin", spins=True), SPIN) is None


@pytest.mark.parametrize("policy", ["quiet", "spin", "decoder-spin"])
def test_every_per_session_policy_computes_the_same(tmp_path, policy):
    path = _matmul(tmp_path / "m.onnx")
    a, b = np.arange(32, dtype=np.float32).reshape(4, 8), np.ones((8, 3), np.float32)
    out = ort_session(path, threads=policy, spins=True).run(None, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(out, a @ b)


def test_shared_pools_serve_every_later_session(tmp_path):
    """ONNX Runtime refuses per-session pools once the global ones exist: later sessions use them too."""
    path = _matmul(tmp_path / "m.onnx")
    code = ("import numpy as np; from omnisift_edge.artifact.onnx_runtime import ort_session\n"
            f"s = ort_session({str(path)!r}, threads='shared'); q = ort_session({str(path)!r}, threads='quiet')\n"
            "f = {'a': np.ones((4, 8), np.float32), 'b': np.ones((8, 3), np.float32)}\n"
            "print(float(s.run(None, f)[0].sum() + q.run(None, f)[0].sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(2 * 4 * 3 * 8.0)


def test_an_unknown_policy_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="--ort-threads must be one of " + ", ".join(THREAD_POLICIES)):
        RuntimeConfig(tmp_path, ort_threads="busy")
