"""export/shared_weights.py: each weight the graphs share stored once, every graph still the same.

Small hand-built graphs first (a big aligned weight, one in a graph's own .onnx.data, a graph that
shares nothing, interruptions at each write), then the real export of the embedded default:
before and after the pass, every graph computes the same in ONNX Runtime.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from omnisift_edge.export import shared_weights  # noqa: E402
from omnisift_edge.export.shared_weights import ALIGNMENT, SHARED_FILE, share_weights  # noqa: E402

K = 600                                  # W [600, 600] fp32 is 1.44 MB: over the 1 MiB alignment threshold
RNG = np.random.default_rng(0)
BIG = RNG.standard_normal((K, K)).astype(np.float32)        # shared by a and b
BIAS = RNG.standard_normal(K).astype(np.float32)            # shared, 2400 bytes
TINY = RNG.standard_normal(4).astype(np.float32)            # shared but 16 bytes: stays in the protos


def _graph(path: Path, head: np.ndarray, *, external: bool = False, shared: bool = True) -> Path:
    """y = ((x @ BIG + BIAS) @ head) * TINY, x [1, K] -> y [1, 4]; with shared=False y = x @ head."""
    if not shared:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(np.ascontiguousarray(head), "w")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "big"], ["h"]), helper.make_node("Add", ["h", "bias"], ["hb"]),
                 helper.make_node("MatMul", ["hb", "head"], ["z"]), helper.make_node("Mul", ["z", "tiny"], ["y"])]
        inits = [numpy_helper.from_array(a, n) for a, n in ((BIG, "big"), (BIAS, "bias"), (head, "head"), (TINY, "tiny"))]
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=external, location=f"{path.name}.data", size_threshold=1024)
    return path


@pytest.fixture()
def folder(tmp_path) -> Path:
    """a.onnx (weights in the proto), b.onnx (in b.onnx.data), c.onnx (shares nothing)."""
    _graph(tmp_path / "a.onnx", RNG.standard_normal((K, 4)).astype(np.float32))
    _graph(tmp_path / "b.onnx", RNG.standard_normal((K, 4)).astype(np.float32), external=True)
    _graph(tmp_path / "c.onnx", BIG[:, :4], shared=False)
    return tmp_path


X = RNG.standard_normal((1, K)).astype(np.float32)


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    """Each graph's output on X, run from its file path (relative external data resolves) as ort_session does."""
    return {p.name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
            for p in sorted(folder.glob("*.onnx"))}


def _where(path: Path) -> dict[str, dict]:
    model = onnx.load(str(path), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer}


def test_each_shared_weight_is_stored_once_and_every_graph_computes_the_same(folder):
    before = _outputs(folder)
    c_bytes = (folder / "c.onnx").read_bytes()
    shared = share_weights(folder)

    assert shared.graphs == ("a.onnx", "b.onnx")                   # c shares nothing: untouched
    assert (folder / "c.onnx").read_bytes() == c_bytes
    assert shared.removed_files == ("b.onnx.data",) and not (folder / "b.onnx.data").exists()
    heads = 2 * K * 4 * 4
    assert shared.tensors == 4 and shared.references == 6           # big, bias once; each head once
    assert shared.tensor_bytes == BIG.nbytes + BIAS.nbytes + heads
    assert shared.bytes_before == 2 * (BIG.nbytes + BIAS.nbytes) + heads
    assert (folder / SHARED_FILE).stat().st_size == shared.file_bytes < BIG.nbytes + BIAS.nbytes + heads + ALIGNMENT
    a, b = _where(folder / "a.onnx"), _where(folder / "b.onnx")
    assert a["big"] == b["big"] and a["bias"] == b["bias"]          # one copy, both point at it
    assert a["big"]["location"] == SHARED_FILE and int(a["big"]["offset"]) % ALIGNMENT == 0
    assert a["head"]["offset"] != b["head"]["offset"]
    assert a["tiny"] == {} and b["tiny"] == {}                      # under 1 KiB: stays in the proto
    after = _outputs(folder)
    assert after.keys() == before.keys()
    for name in before:
        assert np.array_equal(after[name], before[name]), name


def test_graphs_that_share_nothing_stay_as_they_are(tmp_path):
    _graph(tmp_path / "c.onnx", BIG[:, :4], shared=False)
    _graph(tmp_path / "d.onnx", BIG[:, 4:8], shared=False, external=True)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert share_weights(tmp_path) is None
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_interrupted_after_the_first_graph_every_graph_still_loads(folder, monkeypatch):
    before = _outputs(folder)
    real, calls = shared_weights._replace_graph, []

    def replace_then_fail(path, proto):
        calls.append(path.name)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(path, proto)

    monkeypatch.setattr(shared_weights, "_replace_graph", replace_then_fail)
    with pytest.raises(KeyboardInterrupt):
        share_weights(folder)
    assert _where(folder / "a.onnx")["big"]["location"] == SHARED_FILE           # a already points at the new file
    assert _where(folder / "b.onnx")["big"]["location"] == "b.onnx.data"         # b still at its own, kept
    after = _outputs(folder)
    for name in before:
        assert np.array_equal(after[name], before[name]), name
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]      # no temp files left


def test_interrupted_while_writing_the_data_leaves_the_folder_unchanged(folder, monkeypatch):
    files = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(shared_weights, "_point_at", fail)
    with pytest.raises(KeyboardInterrupt):
        share_weights(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files          # no shared file, no temp file


# ------------------------------------------------------------------------------ the real export

SIZES = {"batch_size": 1, "sequence_length": 3, "past_sequence_length": 2, "total_sequence_length": 5,
         "cache_length": 8, "logits_length": 1}


def _decoder_inputs(entry: dict) -> dict[str, np.ndarray]:
    """Inputs for a decoder form from its manifest entry: 2 cached rows, 3 new, logits for the last."""
    rng = np.random.default_rng(1)
    fixed = {"attention_mask": np.ones((1, 5), np.int64), "position_ids": np.arange(3 * 3).reshape(3, 1, 3) + 2,
             "seqlens_k": np.array([4], np.int32), "total_sequence_length": np.array([5], np.int32),
             "logits_index": np.array([2], np.int64)}
    inputs = {}
    for t in entry["inputs"]:
        shape = [SIZES[d] if isinstance(d, str) else d for d in t["shape"]]
        inputs[t["name"]] = (fixed[t["name"]].astype(t["dtype"]) if t["name"] in fixed
                             else rng.standard_normal(shape).astype(t["dtype"]))
    return inputs


@pytest.fixture(scope="module")
def before_and_after(tmp_path_factory):
    """The embedded default exported without the pass, and a copy with it run."""
    pytest.importorskip("torch")
    from omnisift_edge.export import build
    from omnisift_edge.export.stage import ExportConfig, export

    root = tmp_path_factory.mktemp("share")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "_share_weights", lambda folder, manifest: manifest)   # the manifest unchanged
        # without the batched forms (they share the encoders' weights: tests/export/test_batch_graphs.py)
        export(ExportConfig(out=root / "before", ratios=(1.0, 0.25), resolution=(112, 84), batch_graphs=False))
    shutil.copytree(root / "before", root / "after")
    return root / "before", root / "after", share_weights(root / "after")


def test_the_decoder_forms_share_one_copy_and_compute_the_same(before_and_after):
    from omnisift_edge.artifact.manifest import read_manifest

    before, after, shared = before_and_after
    assert shared.graphs == ("decoder.onnx", "decoder_gqa.onnx", "decoder_scatter.onnx")   # encoders, one compressor: nothing to share
    one_copy = sum(len(t.raw_data) for t in onnx.load(str(before / "decoder.onnx")).graph.initializer)
    assert one_copy * 0.99 < shared.file_bytes < one_copy * 1.01         # about one decoder copy, not two
    assert shared.bytes_before - shared.tensor_bytes > 0.99 * one_copy
    size = sum(p.stat().st_size for p in after.rglob("*") if p.is_file())
    size_before = sum(p.stat().st_size for p in before.rglob("*") if p.is_file())
    assert size < size_before - 0.99 * one_copy
    manifest = read_manifest(before, verify=False)
    entries = {"decoder": manifest["graphs"]["decoder"], "decoder_gqa": manifest["kv_cache"]["decoder_gqa"]["entry"]}
    for graph, entry in entries.items():
        inputs = _decoder_inputs(entry)
        want = ort.InferenceSession(str(before / entry["file"]), providers=["CPUExecutionProvider"]).run(None, inputs)
        got = ort.InferenceSession(str(after / entry["file"]), providers=["CPUExecutionProvider"]).run(None, inputs)
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want)), graph
    for path in before.glob("*.onnx"):
        if path.name not in shared.graphs:
            assert (after / path.name).read_bytes() == path.read_bytes(), path.name


def test_the_export_records_lints_and_checksums_the_shared_file(small_export):
    from omnisift_edge.artifact.manifest import graph_file_bytes, read_manifest
    from omnisift_edge.engines.plan import BuildConfig, plan_build
    from omnisift_edge.export.lint import has_errors, lint_export

    folder = small_export()
    manifest = read_manifest(folder, verify=True)
    record = manifest["shared_weights"]
    decoders = ["decoder.onnx", "decoder_gqa.onnx", "decoder_scatter.onnx"]
    batched = [f"{g}.onnx" for g in ("audio_encoder", "audio_encoder_batch", "compressor_batch_r0.25", "compressor_r0.25",
                                     "vision_encoder", "vision_encoder_batch")]   # each one-chunk graph and its batched form
    assert record["file"] == SHARED_FILE and record["graphs"] == sorted(decoders + batched)
    assert manifest["files"][SHARED_FILE]["bytes"] == record["bytes"] == (folder / SHARED_FILE).stat().st_size
    assert manifest["graphs"]["decoder"]["external_data"] is True
    assert manifest["kv_cache"]["decoder_gqa"]["entry"]["external_data"] is True
    assert manifest["graphs"]["vision_encoder"]["external_data"] is True                  # shared with its batched form
    assert not manifest["graphs"]["compressor_r1"].get("external_data")                   # no weights: nothing shared
    assert not any((folder / f"{g}.data").exists() for g in record["graphs"])
    assert not has_errors(lint_export(folder))
    # what an engine of the decoder holds: its proto and the shared weights (engines' build --plan)
    assert record["bytes"] >= record["graph_bytes"]["decoder.onnx"] > 0.95 * record["bytes"]   # ~all of it: the LLM
    decoder_bytes = (folder / "decoder.onnx").stat().st_size + record["graph_bytes"]["decoder.onnx"]
    assert graph_file_bytes(folder, manifest, "decoder.onnx") == decoder_bytes
    plan = plan_build(BuildConfig(folder, target="orin-agx", precision="fp32"), write=False)
    assert {e.graph: e.weight_bytes for e in plan.engines}["decoder"] == decoder_bytes


def test_compressors_sharing_the_selector_are_charged_their_own_bytes(small_export):
    """Two ratios below 1: both compressors hold the selector, so they point into the shared file too;
    an engine plan charges each what it points at, not the LLM beside it."""
    from omnisift_edge.artifact.manifest import graph_file_bytes, read_manifest

    folder = small_export(ratios=(1.0, 0.5, 0.25))
    manifest = read_manifest(folder, verify=True)
    record = manifest["shared_weights"]
    compressors = [e["file"] for g, e in manifest["graphs"].items() if g in ("compressor_r0.5", "compressor_r0.25")]
    assert len(compressors) == 2 and set(compressors) <= set(record["graphs"])
    for file in compressors:
        graph = onnx.load(str(folder / file), load_external_data=False).graph
        own = sum(int({e.key: e.value for e in t.external_data}["length"])
                  for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
        assert record["graph_bytes"][file] == own > 0                   # the selector's weights, counted once
        assert graph_file_bytes(folder, manifest, file) == (folder / file).stat().st_size + own
        assert own < 0.2 * record["bytes"]                              # not the decoder's
