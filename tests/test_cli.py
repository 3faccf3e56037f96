"""The command line as a user meets it: help without heavy stacks, the demo, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import run_cli as _run

COMMANDS = [[], ["doctor"], ["demo"], ["tiny-model"], ["export"], ["lint"], ["run"], ["profile"], ["build"], ["verify"], ["selftest"], ["train"], ["triton"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_help_works_without_torch(command):
    result = _run(*command, "--help", block_heavy=True)
    assert result.returncode == 0, result.stderr
    assert "Usage: omnisift-edge" in result.stdout


def test_import_does_not_pull_heavy_stacks():
    code = ("import sys, omnisift_edge, omnisift_edge.cli, omnisift_edge.model.spec\n"
            "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'tensorrt') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_doctor_reports_versions_and_needs():
    result = _run("doctor")
    assert result.returncode == 0, result.stderr
    assert "numpy" in result.stdout and "what each command needs" in result.stdout


def test_demo_runs_on_the_embedded_default():
    result = _run("demo", "--seconds", "4", "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert "chunk 1:" in result.stdout
    assert "kept" in result.stdout and "answer ids: [" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["demo", "--ratio", "0"], "--ratio must be in (0, 1]"),
    (["demo", "--ratio", "1.5"], "--ratio must be in (0, 1]"),
    (["demo", "--resolution", "100x100"], "try 112x112"),
    (["demo", "--resolution", "big"], "--resolution must look like"),
    (["demo", "--video", "/nonexistent/clip.mp4"], "clip.mp4"),
    (["demo", "--model", "/nonexistent/model"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_1(args, message):
    result = _run(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tiny_model_writes_a_loadable_folder_and_refuses_non_empty(tmp_path):
    target = tmp_path / "tiny"
    result = _run("tiny-model", str(target), "--kind", "thinker")
    assert result.returncode == 0, result.stderr
    assert (target / "config.json").is_file() and (target / "model.safetensors.index.json").is_file()
    again = _run("tiny-model", str(target))
    assert again.returncode == 1 and "not an empty folder" in again.stderr


def test_export_then_lint_from_the_shell(tmp_path):
    out = tmp_path / "art"
    result = _run("export", "--ratios", "1,0.25", "--resolution", "56x56", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "ratio 0.25:" in result.stdout and (out / "manifest.json").is_file()
    assert "TracerWarning" not in result.stderr                # tracing noise stays out of the user's way
    linted = _run("lint", str(out))
    assert linted.returncode == 0 and "no findings" in linted.stdout
    again = _run("export", "-o", str(out), "--resolution", "56x56")
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("args, message", [
    (["export", "-o", "x", "--ratio", "0"], "ratios must be in (0, 1]"),
    (["export", "-o", "x", "--ratios", "1,abc"], "--ratios must be numbers"),
    (["export", "-o", "x", "--resolution", "450x450"], "try 448x448"),
    (["export", "-o", "x", "--video-drop", "0.5"], "go together"),
    (["lint", "/nonexistent/folder"], "nonexistent"),
])
def test_export_and_lint_bad_input_is_one_line(args, message):
    result = _run(*args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
