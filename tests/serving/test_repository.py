"""The Triton model repository: derived from the manifest, written whole, refused with one line."""

from __future__ import annotations

import json
import re

import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.serving.protocol import INPUTS, OUTPUTS
from omnisift_edge.serving.repository import TritonConfig, triton


def test_config_pbtxt_comes_from_the_manifest_and_protocol(serving_export, tmp_path):
    repo = triton(TritonConfig(export=serving_export, out=tmp_path / "repo", max_streams=5, idle_timeout=2.5,
                               instances=2))
    text = repo.config_path.read_text()
    h, w = json.loads((serving_export / "manifest.json").read_text())["resolution"]
    assert f'name: "FRAMES" data_type: TYPE_UINT8 dims: [ -1, {h}, {w}, 3 ] optional: true' in text
    assert re.findall(r'name: "(\w+)" data_type', text) == [t.name for t in (*INPUTS, *OUTPUTS)]
    assert "max_sequence_idle_microseconds: 2500000" in text and "max_candidate_sequences: 5" in text
    assert "decoupled: true" in text and "count: 2 kind: KIND_CPU" in text
    assert f'string_value: "{serving_export.resolve()}"' in text and repo.ratio == 0.25
    model_py = (repo.folder / "omnisift" / "1" / "model.py").read_text()
    assert "from omnisift_edge.serving.model import TritonPythonModel" in model_py
    assert sorted(p.name for p in repo.folder.iterdir()) == ["omnisift"]      # no staging left behind


def test_existing_output_needs_overwrite_and_is_replaced_whole(serving_export, tmp_path):
    out = tmp_path / "repo"
    triton(TritonConfig(export=serving_export, out=out, max_streams=3))
    with pytest.raises(UsageError, match="--overwrite"):
        triton(TritonConfig(export=serving_export, out=out, max_streams=4))
    triton(TritonConfig(export=serving_export, out=out, max_streams=4, overwrite=True))
    assert "max_candidate_sequences: 4" in (out / "omnisift" / "config.pbtxt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.5}, "no compressor for ratio 0.5"),
    ({"backend": "torch"}, "--backend must be one of onnxruntime, tensorrt"),
    ({"max_streams": 0}, "--max-streams must be at least 1"),
    ({"idle_timeout": 0}, "--idle-timeout must be a positive"),
])
def test_bad_options_are_one_line_errors(serving_export, tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        triton(TritonConfig(export=serving_export, out=tmp_path / "repo", **kwargs))
    assert not (tmp_path / "repo").exists()


def test_not_an_export_folder(tmp_path):
    with pytest.raises(UsageError, match="not an export folder"):
        triton(TritonConfig(export=tmp_path, out=tmp_path / "repo"))


def test_cli_writes_the_repository_and_refuses_in_one_line(serving_export, tmp_path):
    from click.testing import CliRunner

    from omnisift_edge.cli import main

    ok = CliRunner().invoke(main, ["triton", str(serving_export), "-o", str(tmp_path / "repo"), "--max-streams", "3"])
    assert ok.exit_code == 0 and "wrote model 'omnisift' (56x56 frames, ratio 0.25)" in ok.output
    bad = CliRunner().invoke(main, ["triton", str(tmp_path), "-o", str(tmp_path / "other")])
    assert bad.exit_code == 1 and "not an export folder" in bad.output and "Traceback" not in bad.output


def test_tensorrt_backend_is_a_parameter_of_the_same_model(serving_export, tmp_path):
    onnx = triton(TritonConfig(export=serving_export, out=tmp_path / "ort")).config_path.read_text()
    trt = triton(TritonConfig(export=serving_export, out=tmp_path / "trt", backend="tensorrt")).config_path.read_text()
    assert 'key: "backend" value { string_value: "onnxruntime" }' in onnx
    assert trt == onnx.replace('string_value: "onnxruntime"', 'string_value: "tensorrt"')
