"""Hostile manifests (issue 26): wrong types, missing keys, nonsense ranges, paths out of the folder and
deep nesting are each one UsageError line naming the key, never a traceback, a hang or a file read
outside the export. Runs on the C++ goldens' mini export (placeholder files, true checksums): no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import omnisift_edge
from omnisift_edge.artifact.manifest import MANIFEST, load_manifest, read_manifest, write_manifest
from omnisift_edge.errors import UsageError

GOLDEN = Path(omnisift_edge.__file__).resolve().parents[1] / "cpp" / "golden" / "export_mini"


@pytest.fixture
def export(tmp_path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(GOLDEN, folder)
    return folder


def _edit(folder: Path, change) -> None:
    raw = json.loads((folder / MANIFEST).read_text())
    change(raw)
    (folder / MANIFEST).write_text(json.dumps(raw))


def _refused(folder: Path, *words: str, verify: bool = False) -> str:
    with pytest.raises(UsageError) as info:
        load_manifest(folder, verify=verify)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_the_golden_manifest_reads_and_round_trips_byte_for_byte(export, tmp_path):
    manifest = load_manifest(export, verify=True)
    assert manifest.max_context == 1024 and manifest.kv_cache["decoder_scatter"].write_index == "write_index"
    assert manifest.builds["golden-rtx"].flavour == "tensorrt_rtx" and manifest.rope.rope_theta == 1e6
    before = (export / MANIFEST).read_bytes()
    write_manifest(export, manifest)                       # the one writer: same bytes as the C++ goldens hold
    assert (export / MANIFEST).read_bytes() == before.rstrip(b"\n") or (export / MANIFEST).read_bytes() == before


TYPES = [
    ("files", lambda m: m.update(files=[]), "files"),
    ("graphs", lambda m: m.update(graphs=["decoder"]), "graphs"),
    ("graph entry", lambda m: m["graphs"].update(decoder="decoder.graph"), "graphs.decoder"),
    ("opset", lambda m: m["graphs"]["decoder"].update(opset="17"), "graphs.decoder.opset"),
    ("missing key", lambda m: m.pop("stop_token_ids"), "stop_token_ids is missing"),
    ("missing dims", lambda m: m["dims"].update(grid_h=None), "dims.grid_h"),
    ("max_context type", lambda m: m.update(max_context=2.5), "max_context"),
    ("kv_cache", lambda m: m.update(kv_cache=[1]), "kv_cache"),
    ("builds engines", lambda m: m["builds"]["golden-rtx"].update(engines=[]), "builds.golden-rtx.engines"),
    ("stop ids", lambda m: m.update(stop_token_ids=["<|im_end|>"]), "stop_token_ids[0]"),
    ("tokens", lambda m: m["layout"]["tokens"].update(im_end="x"), "layout.tokens.im_end"),
]

RANGES = [
    ("no ratios", lambda m: m.update(ratios=[]), "ratios is empty"),
    ("negative ratio", lambda m: m["ratios"][1].update(ratio=-0.25), "ratios[1].ratio"),
    ("ratio above 1", lambda m: m["ratios"][1].update(ratio=1.5), "ratios[1].ratio"),
    ("huge max_context", lambda m: m.update(max_context=10 ** 15), "max_context"),
    ("negative max_context", lambda m: m.update(max_context=-1), "max_context"),
    ("zero resolution", lambda m: m.update(resolution=[0, 84]), "resolution[0]"),
    ("negative resolution", lambda m: m.update(resolution=[112, -84]), "resolution[1]"),
    ("zero seconds_per_chunk", lambda m: m["layout"].update(seconds_per_chunk=0), "layout.seconds_per_chunk"),
    ("negative fps", lambda m: m["layout"].update(fps=-2), "layout.fps"),
    ("zero sample_rate", lambda m: m["layout"].update(sample_rate=0), "layout.sample_rate"),
    ("zero grid", lambda m: m["dims"].update(grid_w=0), "dims.grid_w"),
    ("kept counts", lambda m: m["ratios"][0]["kept_per_chunk"].update(total=-3), "ratios[0].kept_per_chunk"),
    ("unknown ratio graph", lambda m: m["ratios"][0].update(graph="compressor_r9"), "ratios[0].graph"),
    ("schema", lambda m: m.update(schema_version=2), "schema version 2"),
    ("dtype", lambda m: m.update(dtype="int3"), "dtype"),
    ("infinite rope", lambda m: m["rope"].update(rope_theta=-1), "rope.rope_theta"),
    ("scatter cache rows", lambda m: m["kv_cache"]["decoder_scatter"].update(max_context=10 ** 14),
     "kv_cache.decoder_scatter.max_context"),
]


@pytest.mark.parametrize("case, change, key", TYPES + RANGES, ids=[c[0] for c in TYPES + RANGES])
def test_a_hostile_value_is_one_line_naming_the_key(export, case, change, key):
    _edit(export, change)
    _refused(export, key)


OUTSIDE = [
    ("absolute graph", lambda m: m["graphs"]["decoder"].update(file="/etc/passwd"), "graphs.decoder.file"),
    ("dotdot graph", lambda m: m["graphs"]["decoder"].update(file="../other/decoder.onnx"), "graphs.decoder.file"),
    ("tokenizer folder", lambda m: m["tokenizer"].update(folder="/tmp"), "tokenizer.folder"),
    ("embeddings", lambda m: m["text_embeddings"].update(file="../../embed.safetensors"), "text_embeddings.file"),
    ("shared weights", lambda m: m.update(shared_weights={"file": "/data/w.data", "graphs": []}), "shared_weights.file"),
    ("kv form file", lambda m: m["kv_cache"]["decoder_scatter"].update(file="../x.onnx"), "kv_cache.decoder_scatter.file"),
    ("files entry", lambda m: m["files"].update({"/etc/hostname": {"sha256": "0" * 64, "bytes": 1}}), "files./etc/hostname"),
    ("graph key", lambda m: m["graphs"].update({"../../x": m["graphs"]["decoder"]}), "graphs names '../../x'"),
    ("build target", lambda m: m["builds"].update({"../t": m["builds"]["golden-sm00"]}), "builds names '../t'"),
    ("engine file", lambda m: m["builds"]["golden-sm00"]["engines"]["decoder"].update(file="/tmp/e.engine"),
     "builds.golden-sm00.engines.decoder.file"),
]


@pytest.mark.parametrize("case, change, key", OUTSIDE, ids=[c[0] for c in OUTSIDE])
def test_a_path_out_of_the_export_is_one_line(export, case, change, key):
    _edit(export, change)
    _refused(export, key, "outside the export folder")


def test_a_graph_file_not_covered_by_the_checksums_is_refused(export):
    (export / "other.graph").write_text("another graph\n")
    _edit(export, lambda m: m["graphs"]["decoder"].update(file="other.graph"))
    _refused(export, "graphs.decoder.file", "does not cover")


def test_a_symlink_out_of_the_export_is_refused(export, tmp_path):
    outside = tmp_path / "outside.graph"
    outside.write_bytes((export / "decoder.graph").read_bytes())
    (export / "decoder.graph").unlink()
    os.symlink(outside, export / "decoder.graph")          # same bytes, same checksum: only the link is wrong
    message = _refused(export, "decoder.graph", "outside the export folder", verify=True)
    assert "symlink" in message


def test_deep_nesting_is_one_line(export):
    text = (export / MANIFEST).read_text()
    deep = "[" * 100_000 + "]" * 100_000                   # json's parser raises RecursionError on it
    (export / MANIFEST).write_text(text.replace('"validation": {}', f'"validation": {deep}', 1))
    _refused(export, "nests deeper")
    (export / MANIFEST).write_text(text)
    shallow = {"a": 0}
    for _ in range(40):
        shallow = {"a": shallow}
    _edit(export, lambda m: m.update(validation=shallow))
    _refused(export, "nests deeper")


def test_read_manifest_gives_the_validated_json(export):
    assert read_manifest(export)["graphs"]["decoder"]["file"] == "decoder.graph"
    _edit(export, lambda m: m["layout"].update(fps=-2))
    with pytest.raises(UsageError, match="layout.fps"):
        read_manifest(export)


def test_profile_output_is_not_checksummed(export):
    """`profile` writes EXPORT/profile/; a later write_manifest (a build) must not checksum it, so the next
    profile run does not leave the export failing its checksums."""
    (export / "profile").mkdir()
    (export / "profile" / "profile.json").write_text("{}")
    write_manifest(export, load_manifest(export))            # as `build` does after profile
    assert not any(name.startswith("profile/") for name in read_manifest(export)["files"])
    (export / "profile" / "profile.json").write_text('{"again": true}')   # profile again
    assert load_manifest(export, verify=True).max_context == 1024


@pytest.mark.parametrize("command", ["lint", "run"])
def test_commands_refuse_a_path_out_of_the_export_with_exit_1(export, tmp_path, command):
    """`lint` used to hash/lint a graph outside the folder and say "no findings"; `run` opened it."""
    from click.testing import CliRunner

    from omnisift_edge.cli import main

    outside = tmp_path / "elsewhere.graph"
    outside.write_text("another export's graph\n")
    _edit(export, lambda m: m["graphs"]["decoder"].update(file=str(outside)))
    (tmp_path / "clip.mp4").write_bytes(b"")                # never opened: the export is refused first
    args = (["lint", str(export)] if command == "lint"
            else ["run", str(export), "--video", str(tmp_path / "clip.mp4"), "--question", "hi"])
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "graphs.decoder.file" in errors[0] and "outside the export folder" in errors[0]
    assert "Traceback" not in result.output + result.stderr
