"""The export folder contract: the typed Manifest and ExportFolder, on a real export of the embedded default."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.artifact.folder import ExportFolder  # noqa: E402
from omnisift_edge.artifact.manifest import Manifest, read_manifest  # noqa: E402
from omnisift_edge.artifact.tensors import AUDIO_ENCODER, COMPRESSOR, VISION_ENCODER, decoder_graph  # noqa: E402
from omnisift_edge.errors import UsageError  # noqa: E402


@pytest.fixture(scope="module")
def folder(small_export):
    return small_export(ratios=(1.0, 0.25), resolution=(112, 84))


def test_the_typed_manifest_mirrors_the_json(folder):
    raw = read_manifest(folder)
    m = Manifest.from_dict(raw)
    assert m.dtype == raw["dtype"] and m.resolution == (112, 84) and m.max_context == raw["max_context"]
    assert [p.ratio for p in m.ratios] == [1.0, 0.25]
    assert m.ratio_plan(0.25).kept_total == raw["ratios"][1]["kept_per_chunk"]["total"]
    assert m.dims.num_layers == raw["dims"]["num_layers"] and m.dims.tokens_per_frame == 12
    # tensor names in the order artifact.tensors declares them, for every graph kind
    assert m.graph("vision_encoder").input_names == VISION_ENCODER.input_names
    assert m.graph("audio_encoder").output_names == AUDIO_ENCODER.output_names
    assert m.graph(m.ratio_plan(0.25).graph).output_names == COMPRESSOR.output_names
    assert m.graph("decoder").input_names == decoder_graph(m.dims.num_layers).input_names


def test_a_manifest_missing_a_key_is_one_line(folder):
    raw = read_manifest(folder)
    del raw["graphs"]["decoder"]["inputs"]
    with pytest.raises(UsageError, match="not an omnisift-edge manifest this version can read .*export again"):
        Manifest.from_dict(raw)


def test_ratio_and_graph_lookups_name_what_there_is(folder):
    m = ExportFolder.open(folder).manifest
    assert m.ratio_plan(None).ratio == 1.0                       # the first the export lists
    with pytest.raises(UsageError, match=r"no compressor for ratio 0.5 \(it has 1, 0.25\)"):
        m.ratio_plan(0.5)
    with pytest.raises(UsageError, match="has no talker graph"):
        m.graph("talker")


def test_export_folder_reads_tables_and_roles(folder):
    export = ExportFolder.open(folder)
    graphs = export.graphs_for(0.25)
    assert set(graphs) == {"vision_encoder", "audio_encoder", "compressor", "decoder"}
    assert graphs["compressor"].key == "compressor_r0.25"
    table = export.embed_table()
    assert table.dtype == np.float32 and table.shape == tuple(read_manifest(folder)["text_embeddings"]["shape"])
    assert (export.tokenizer_path / "tokenizer.json").is_file()


def test_export_folder_checks_version_and_checksums(folder, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["tools"]["omnisift_edge"] = "0.0.1"
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(UsageError, match="written by omnisift-edge 0.0.1"):
        ExportFolder.open(copy)
    assert ExportFolder.open(copy, check_version=False).manifest.dtype == "fp32"
    (copy / "embed_tokens.safetensors").write_bytes(b"changed")
    with pytest.raises(UsageError, match="does not match its checksum"):
        ExportFolder.open(copy, check_version=False)


def test_engine_build_choice(folder):
    export = ExportFolder.open(folder)
    with pytest.raises(UsageError, match="no engines built for this export"):
        export.build(None)
    report = {"tensorrt": "10.3.0", "compute_capability": "8.7", "engines": {}}
    builds = {"l4": dict(report, x=1), "orin-agx": dict(report, x=2)}
    two = ExportFolder(export.path, Manifest.from_dict({**read_manifest(export.path), "builds": builds}))
    with pytest.raises(UsageError, match="has engines for l4, orin-agx; pick one with --target"):
        two.build(None)
    target, build = two.build("orin-agx")
    assert (target, build.get("x"), build.compute_capability) == ("orin-agx", 2, "8.7")
    with pytest.raises(UsageError, match=r"no engines for h100 \(it has l4, orin-agx\)"):
        two.build("h100")
