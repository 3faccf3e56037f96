"""A real TensorRT-RTX build (on this machine's CPU, ahead of time) with `--max-streams 4`: the in-place decoder
engine gets a second profile, `in_place_decode`, whose batch runs 1 .. 4 with one row each and one write index
per row, and a third, `in_place_prefill`, 1 .. 4 rows of one chunk's kept tokens each (the chunks that arrived
together), read back from the engine itself; the build report records max_streams where the runtime reads it.
Marked `rtx`: skipped with the reason where tensorrt_rtx is absent."""

from __future__ import annotations

import shutil

import pytest

from omnisift_edge.artifact.manifest import load_manifest, read_manifest
from omnisift_edge.engines.build import build_engines
from omnisift_edge.engines.plan import BuildConfig

pytestmark = pytest.mark.rtx


def test_the_in_place_decoder_builds_with_a_four_stream_decode_profile(engine_export, tmp_path):
    import tensorrt_rtx as trt

    from omnisift_edge.runtime import trt_flavour as flavours

    folder = tmp_path / "export"
    shutil.copytree(engine_export, folder)
    artifact = build_engines(BuildConfig(folder, target="rtx", max_streams=4, max_prompt=1))
    report = read_manifest(folder, verify=True)["builds"]["rtx"]              # engines checksummed too
    assert report["max_streams"] == 4
    entry = report["engines"]["decoder_scatter"]
    prefill, decode, chunks = entry["profiles"]
    assert (prefill["name"], decode["name"], chunks["name"]) == ("in_place", "in_place_decode", "in_place_prefill")
    assert prefill["axes"]["batch_size"] == [1, 1, 1] and decode["axes"]["batch_size"] == [1, 4, 4]
    assert decode["axes"]["sequence_length"] == [1, 1, 1] and decode["axes"]["logits_length"] == [1, 1, 1]
    names = load_manifest(folder, verify=False).form_entry("decoder_scatter").input_names
    embeds, write_index, past = names[0], names[2], names[4]
    assert decode["inputs"][embeds]["min"][0] == 1 and decode["inputs"][embeds]["max"][0] == 4     # [B, 1, D]
    assert decode["inputs"][write_index] == {"min": [1], "opt": [4], "max": [4]}                   # one per row
    assert decode["inputs"][past]["max"][0] == 4 and "batch_size" not in entry["static_axes"]     # batch: a profile axis
    assert len(entry["kv_cache_updates"]) == 2 * read_manifest(folder)["dims"]["num_layers"]      # still in place
    data = artifact.engines["decoder_scatter"].read_bytes()
    validity = flavours.engine_validity(trt, data)
    assert validity["checked"] and validity["header_ok"], validity
    build = load_manifest(folder, verify=False).builds["rtx"]                # the typed record the pool reads
    assert build.max_streams == 4
    # what the builder got, on the network TensorRT-RTX parsed (the engine itself needs a GPU to deserialize):
    # the batch axis dynamic, profile 1 taking 1 .. 4 rows of the static cache, profile 0 one
    from polygraphy.backend import trt as polygraphy_trt

    from omnisift_edge.engines.build import require_tensorrt, trt_profiles
    from omnisift_edge.engines.kv_form import parse_static, shape_inputs

    ep = artifact.plan.engine("decoder_scatter")
    builder, network, _ = parse_static(require_tensorrt("tensorrt_rtx"), polygraphy_trt, ep.onnx, True, ep.static)
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    assert inputs[past].shape[0] == -1 and inputs[past].shape[2] == artifact.plan.max_context
    assert not shape_inputs(network)            # write_index [B], B dynamic: data, not a shape tensor (batch 1: one)
    one, four, batch = (p.to_trt(builder, network) for p in trt_profiles(polygraphy_trt, ep, shape_inputs(network)))
    assert [tuple(s)[0] for s in one.get_shape(past)] == [1, 1, 1]
    assert [tuple(s)[0] for s in four.get_shape(past)] == [1, 4, 4]
    assert [tuple(s) for s in four.get_shape(write_index)] == [(1,), (4,), (4,)]
    # profile 2: the chunks of 1 .. 4 streams prefilled together, K rows each, each row at its own write index
    kept = chunks["axes"]["sequence_length"][2]
    assert [tuple(s)[:2] for s in batch.get_shape(embeds)] == [(1, 1), (4, min(chunks["axes"]["sequence_length"][1],
                                                                                 kept)), (4, kept)]
    assert [tuple(s) for s in batch.get_shape(write_index)] == [(1,), (4,), (4,)]
    assert [tuple(s)[0] for s in batch.get_shape(names[3])] == [0, 0, 1]            # logits_index: none needed


def test_default_build_keeps_one_profile_of_batch_one(engine_export):
    """--max-streams 1 (the default) plans exactly the engines before stream pools: one profile, batch 1 fixed."""
    from omnisift_edge.engines.plan import plan_build

    plan = plan_build(BuildConfig(engine_export, target="rtx", max_prompt=1), write=False)
    ep = plan.engine("decoder_scatter")
    assert [p.name for p in ep.profiles] == ["in_place"] and ep.static["batch_size"] == 1
    assert plan.record()["max_streams"] == 1
