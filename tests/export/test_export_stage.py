"""`export` end to end on the embedded default: folder, manifest, validation, lint, bad input."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.artifact.manifest import SCHEMA_VERSION, read_manifest  # noqa: E402
from omnisift_edge.export.stage import ExportConfig, export  # noqa: E402
from omnisift_edge.artifact.tensors import decoder_graph  # noqa: E402

RES = (112, 84)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny"
    return export(ExportConfig(out=out, ratios=(1.0, 0.35, 0.25), resolution=RES))


def test_folder_holds_every_graph_and_a_verified_manifest(exported):
    manifest = read_manifest(exported.folder)                    # schema + every checksum
    assert manifest["schema_version"] == SCHEMA_VERSION
    one_chunk = {"vision_encoder", "audio_encoder", "compressor_r1", "compressor_r0.35", "compressor_r0.25"}
    batched = {"vision_encoder_batch", "audio_encoder_batch",                         # a stream pool's (issue 23)
               "compressor_batch_r1", "compressor_batch_r0.35", "compressor_batch_r0.25"}
    assert set(manifest["graphs"]) == one_chunk | batched | {"decoder"}
    for graph in manifest["graphs"].values():
        assert (exported.folder / graph["file"]).is_file()
        assert graph["file"] in manifest["files"]
    assert [t["name"] for t in manifest["graphs"]["decoder"]["inputs"]] == \
        decoder_graph(manifest["dims"]["num_layers"]).input_names
    assert (exported.folder / "tokenizer" / "tokenizer.json").is_file()
    assert manifest["layout"]["tokens"]["video"] == 151656
    assert manifest["tie_rule"].startswith("rank by score")
    assert not list(exported.folder.parent.glob(".tiny.partial-*"))      # staging cleaned up
    from omnisift_edge.compress.selector import selector_record
    from omnisift_edge.model.tiny import build_tiny_selector

    assert manifest["selector"] == selector_record(build_tiny_selector(0), "embedded default")


def test_ratio_plan_records_what_was_achieved(exported):
    plan = {p["graph"]: p for p in exported.manifest.to_dict()["ratios"]}
    assert plan["compressor_r1"]["rho_video"] == 0 and plan["compressor_r1"]["achieved"] == 1
    for name, target in (("compressor_r0.35", 0.35), ("compressor_r0.25", 0.25)):
        assert abs(plan[name]["achieved"] - target) < 0.05
        kept = plan[name]["kept_per_chunk"]
        assert kept["total"] == kept["video"] + kept["audio"]
        shape = exported.manifest.graph(name).outputs[0].shape
        assert shape[1] == kept["total"]                                 # K is baked into the graph


def test_every_check_passed_and_lint_is_clean(exported):
    checks = exported.manifest.section("validation")
    assert {"vision_encoder", "audio_encoder", "decoder", "end_to_end_compressor_r0.25"} <= set(checks)
    assert all(c["ok"] for c in checks.values())
    e2e = checks["end_to_end_compressor_r0.25"]
    assert e2e["torch_tokens"] == e2e["ort_tokens"] and len(e2e["torch_tokens"]) > 0
    assert all(not findings for findings in exported.lint.values())


def test_tampered_or_foreign_folders_are_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported.folder, copy)
    with open(copy / "audio_encoder.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UsageError, match="checksum"):
        read_manifest(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="schema version 99"):
        read_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(UsageError, match="no manifest.json"):
        read_manifest(copy)


def test_non_empty_output_needs_overwrite(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="--overwrite"):
        export(ExportConfig(out=out, resolution=RES))
    assert (out / "keep.txt").read_text() == "mine"


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    import omnisift_edge.export.decoder.past_present as decoder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(decoder, "export_decoder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(ExportConfig(out=tmp_path / "out", resolution=RES))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"ratios": (0.0,)}, "ratios must be in"),
    ({"ratios": (1.5,)}, "ratios must be in"),
    ({"resolution": (100, 100)}, "try 112x112"),
    ({"video_drop": 0.5}, "go together"),
    ({"video_drop": 1.0, "audio_drop": 0.3}, "--video-drop must be in"),
    ({"dtype": "bf16"}, "fp32 or fp16"),
])
def test_bad_configs_name_the_fix(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        ExportConfig(out=tmp_path / "x", **kwargs)
