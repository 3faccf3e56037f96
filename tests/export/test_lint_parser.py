"""The TensorRT 10.3 lint against a real ONNX parser: TensorRT-RTX's (1.7), on the CPU.

Every graph the lint passes, the real parser parses and the builder builds; every planted bad graph
of test_lint.py the lint rejects, TensorRT-RTX rejects too (at parse or build) unless listed in
`RTX_ACCEPTS` with the reason the lint still reports it for TensorRT 10.3 (JetPack 6). The table
is what TensorRT-RTX 1.7 did here (2026-12-02); docs/lint.md carries it. A newer parser that
changes a verdict fails the test on purpose: update the table and the docs. The exported graphs
of the embedded default are checked the same way in tests/engines/test_rtx.py.

Marked `rtx`: skipped with the reason where `import tensorrt_rtx` fails.
"""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from omnisift_edge.export.lint import has_errors, lint_model  # noqa: E402
from tests.export import test_lint as planted  # noqa: E402
from tests.export.test_lint import model, vi  # noqa: E402

pytestmark = pytest.mark.rtx

# planted graph -> why the lint keeps its error although TensorRT-RTX 1.7 parses and builds it
RTX_ACCEPTS = {
    "topk_dynamic_k": "policy: the parser takes a runtime K (since 8.6), the per-chunk engines need K fixed",
    "float64_io": "the parser silently turns float64 inputs/outputs into float32 bindings",
    "cast_float64": "the parser silently casts to float32 instead",
    "opset21": "version: TensorRT-RTX's parser is newer; the 10.3 parser's table ends at opset 20",
    "opset8": "version table: 10.x documents opsets 9..20; TensorRT-RTX imports this opset-8 Relu",
    "unnamed_dynamic_dim": "policy: optimization profiles come from the DYNAMIC_AXES names",
    "resize_cubic": "the 10.x operator table lists nearest/linear only; TensorRT-RTX 1.7 builds cubic (10.3 unchecked)",
}


def _ms_fastgelu():
    m = model([helper.make_node("FastGelu", ["x"], ["y"], name="fg", domain="com.microsoft")], [vi("x", [4])],
              [vi("y", [4])])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m


def _relu(dtype=TensorProto.FLOAT, **kw):
    return model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [4], dtype)], [vi("y", [4], dtype)], **kw)


PLANTED = {
    "unique": lambda: model([helper.make_node("Unique", ["x"], ["y"], name="u")], [vi("x", [4])], [vi("y", [None])]),
    "det": lambda: model([helper.make_node("Det", ["x"], ["y"], name="det")], [vi("x", [3, 3])], [vi("y", [])]),
    "stft": lambda: model([helper.make_node("STFT", ["x", "s"], ["y"], name="stft")],
                          [vi("x", [1, 64]), vi("s", [], TensorProto.INT64)], [vi("y", [1, 2, 33, 2])]),
    "ms_fastgelu": _ms_fastgelu,
    "topk_over_3840": lambda: planted.topk_model(k=4000),
    "topk_dynamic_k": lambda: planted.topk_model(k_const=False),
    "nonzero": lambda: model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [vi("x", [4])],
                             [vi("y", [1, None], TensorProto.INT64)]),
    "float64_io": lambda: _relu(TensorProto.DOUBLE),
    "cast_float64": lambda: model([helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.DOUBLE)],
                                  [vi("x", [4])], [vi("y", [4], TensorProto.DOUBLE)]),
    "opset21": lambda: _relu(opset=21),
    "opset8": lambda: _relu(opset=8),
    "unnamed_dynamic_dim": lambda: model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [None, 8])],
                                         [vi("y", [None, 8])]),
}
# the operator restrictions, straight from test_lint.py's parametrization
_RESTRICTIONS = next(m for m in planted.test_op_restrictions.pytestmark if m.name == "parametrize").args[1]
for _node, _inputs, _inits, _needle in _RESTRICTIONS:
    _name = {"cubic": "resize_cubic"}.get(_needle, f"{_node.op_type.lower()}_{_needle.strip('`').replace(' ', '_')}")
    PLANTED[_name] = (lambda n=_node, i=_inputs, w=_inits: model([n], i, [vi("y", None)], w))

CLEAN = {"clean": planted.clean_model, "topk_3840": lambda: planted.topk_model(k=3840)}


def rtx_verdict(m) -> str:
    """'builds', 'build fails' or 'parse fails': TensorRT-RTX's parser and builder on the CPU (for sm_86)."""
    from polygraphy.backend import trt as polygraphy_trt
    from polygraphy.logger import G_LOGGER

    from omnisift_edge.runtime.trt_flavour import load

    load("tensorrt_rtx")
    from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        try:
            network = polygraphy_trt.NetworkFromOnnxBytes(m.SerializeToString(), strongly_typed=True)()
        except Exception:
            return "parse fails"
        try:
            polygraphy_trt.EngineBytesFromNetwork(network, config=CreateConfigRTX(compute_capabilities=[(8, 6)]))()
        except Exception:
            return "build fails"
    return "builds"


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_what_the_lint_passes_the_parser_builds(name):
    m = CLEAN[name]()
    assert not has_errors(lint_model(m))
    assert rtx_verdict(m) == "builds"


def test_small_torch_exports_lint_clean_and_build(tmp_path):
    path = planted._export_tiny(tmp_path, dynamo=False)
    assert lint_model(path) == []
    assert rtx_verdict(onnx.load(path)) == "builds"


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bad_graphs_the_parser_rejects_or_the_difference_is_stated(name):
    m = PLANTED[name]()
    assert has_errors(lint_model(m)), f"{name} should be a lint error"
    verdict = rtx_verdict(m)
    if name in RTX_ACCEPTS:
        assert verdict == "builds", f"TensorRT-RTX now rejects {name} ({verdict}): drop it from RTX_ACCEPTS and docs/lint.md"
    else:
        assert verdict in ("parse fails", "build fails"), f"TensorRT-RTX builds {name}: the lint is stricter here"


def test_the_table_names_only_planted_graphs():
    assert set(RTX_ACCEPTS) <= set(PLANTED) and len(PLANTED) >= 20
