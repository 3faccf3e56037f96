"""Engines of the batched encoders and compressors (issue 23): planned and built only for a stream pool
(`build --max-streams N`, N > 1), one profile `batch` of batch 1 .. N taken from the declaration's `batch_size`
axis; the memory plan counts their weights and a call of N chunks; `verify --record` records cases for them;
a real TensorRT-RTX build (CPU, ahead of time) with --max-streams 2 parses and builds them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from omnisift_edge.artifact.manifest import load_manifest, read_manifest
from omnisift_edge.artifact.reference import load_reference
from omnisift_edge.artifact.tensors import BATCH_FORMS, is_batch_form, one_chunk_key
from omnisift_edge.engines.memory import activation_bytes, batch_activation_bytes
from omnisift_edge.engines.plan import BuildConfig, plan_build

BATCHED = {"vision_encoder_batch", "audio_encoder_batch", "compressor_batch_r1", "compressor_batch_r0.25"}


def test_one_stream_plans_no_batched_engine_and_a_pool_plans_each_with_a_batch_profile(engine_export, engine_manifest):
    one = plan_build(BuildConfig(engine_export, target="rtx"), write=False)
    assert not any(is_batch_form(e.graph) for e in one.engines)
    pool = plan_build(BuildConfig(engine_export, target="rtx", max_streams=3), write=False)
    engines = {e.graph: e for e in pool.engines}
    assert BATCHED <= set(engines) and set(engines) - BATCHED == {e.graph for e in one.engines}
    for graph in BATCHED:
        (profile,) = engines[graph].profiles
        assert profile.name == "batch" and dict(profile.axes) == {"batch_size": (1, 3, 3)}
        entry = engine_manifest["graphs"][graph]
        for tensor in entry["inputs"]:                               # every input: batch 1..3 where declared, else fixed
            r = profile.shapes[tensor["name"]]
            axis = tensor["axes"].index("batch_size")
            for got, n in ((r.min, 1), (r.opt, 3), (r.max, 3)):
                assert got == tuple(n if i == axis else d for i, d in enumerate(tensor["shape"])), (graph, tensor["name"])
        assert engines[graph].static == {}
    assert engines["compressor_batch_r0.25"].mode == engines["compressor_r0.25"].mode   # the graph's own precision
    shared = engine_manifest["shared_weights"]["graph_bytes"]                               # the same tensors
    assert shared["vision_encoder_batch.onnx"] == shared["vision_encoder.onnx"] > 0
    assert engines["vision_encoder_batch"].weight_bytes > shared["vision_encoder.onnx"]   # its proto + those tensors
    assert "batch" in pool.summary() and {e["graph"] for e in pool.to_dict()["engines"]} >= BATCHED


def test_the_batch_axis_comes_from_the_declaration(engine_manifest):
    from omnisift_edge.engines.profiles import batch_profiles, graph_entry

    for one_chunk, spec in BATCH_FORMS.items():
        key = spec.name if one_chunk != "compressor" else "compressor_batch_r0.25"
        assert one_chunk_key(key).startswith(one_chunk)
        entry = graph_entry(engine_manifest, key)
        (profile,) = batch_profiles(entry, 5)
        declared = {t.name for t in spec.inputs if "batch_size" in t.axes}
        assert set(profile.dynamic_inputs) == declared and profile.axes == (("batch_size", (1, 5, 5)),)


def test_the_memory_plan_counts_their_weights_and_a_call_of_n_chunks(engine_export):
    one = plan_build(BuildConfig(engine_export, target="rtx"), write=False).memory
    pool = plan_build(BuildConfig(engine_export, target="rtx", max_streams=4), write=False).memory
    assert not any("batch" in g for g in one.weights) and "encoders (chunks x streams)" not in one.activations
    for graph in ("vision_encoder", "audio_encoder"):                          # an engine holds its own copy:
        own = [pool.weights[g] - (engine_export / f"{g}.onnx").stat().st_size for g in (graph, f"{graph}_batch")]
        assert own[0] == own[1] > 0                                             # the same tensors (protos differ)
    assert pool.weights["compressor_batch"] >= pool.weights["compressor"] > 0
    per_chunk = activation_bytes(pool.config, 1)
    calls = pool.activations["encoders (chunks x streams)"]
    assert calls == batch_activation_bytes(pool.config, 4) == 4 * max(per_chunk[g] for g in
                                                                        ("vision_encoder", "audio_encoder", "compressor"))
    assert batch_activation_bytes(pool.config, 1) == 0
    # the pool loads the batched engines instead of the one-chunk ones (engines/pool_memory.py)
    assert pool.weights_total == sum(pool.weights.values()) - sum(pool.weights[g] for g in
                                                                  ("vision_encoder", "audio_encoder", "compressor"))
    assert one.weights_total == sum(one.weights.values()) < sum(pool.weights.values())


def test_verify_records_a_single_and_a_pair_case_for_each(recorded_export):
    manifest = read_manifest(recorded_export, verify=True)
    for graph in BATCHED:
        cases = load_reference(recorded_export, manifest, graph)
        assert [(c.name, c.profile) for c in cases] == [("one", "batch"), ("pair", "batch")]
        one, pair = cases
        first = manifest["graphs"][graph]["inputs"][0]["name"]
        assert one.inputs[first].shape[0] == 1 and pair.inputs[first].shape[0] == 2
        np.testing.assert_array_equal(pair.inputs[first][:1], one.inputs[first])
    audio = load_reference(recorded_export, manifest, "audio_encoder_batch")[1]
    assert audio.inputs["valid_frames"].tolist() == [200, 101]                         # a short last window rides along
    chunk = load_reference(recorded_export, manifest, "compressor_batch_r0.25")[1]
    assert chunk.inputs["valid_grids"].tolist() == [2, 1] and chunk.outputs["kept_count"][1] < chunk.outputs["kept_count"][0]


@pytest.mark.rtx
def test_tensorrt_rtx_builds_them_with_two_streams(engine_export, tmp_path):
    from polygraphy.backend import trt as polygraphy_trt

    from omnisift_edge.engines.build import build_engines, require_tensorrt, trt_profiles

    folder = tmp_path / "export"
    shutil.copytree(engine_export, folder)
    artifact = build_engines(BuildConfig(folder, target="rtx", max_streams=2, max_prompt=1))
    report = read_manifest(folder, verify=True)["builds"]["rtx"]              # engines checksummed
    assert BATCHED <= set(report["engines"]) and report["max_streams"] == 2
    for graph in BATCHED:
        (profile,) = report["engines"][graph]["profiles"]
        assert profile["name"] == "batch" and profile["axes"]["batch_size"] == [1, 2, 2]
        assert artifact.engines[graph].stat().st_size > 0
    assert load_manifest(folder, verify=False).builds["rtx"].engines["compressor_batch_r0.25"].file
    # the network TensorRT-RTX parsed: the batch axis dynamic, the profile 1..2 on it, every other axis fixed
    from omnisift_edge.engines.kv_form import parse_static

    for graph in ("vision_encoder_batch", "compressor_batch_r0.25"):
        ep = artifact.plan.engine(graph)
        builder, network, _ = parse_static(require_tensorrt("tensorrt_rtx"), polygraphy_trt, ep.onnx, True, {})
        first = network.get_input(0)
        assert first.shape[0] == -1 and all(d > 0 for d in list(first.shape)[1:])
        (profile,) = trt_profiles(polygraphy_trt, ep)
        shapes = profile.to_trt(builder, network).get_shape(first.name)
        assert [tuple(s)[0] for s in shapes] == [1, 2, 2]
