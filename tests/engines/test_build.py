"""build_engines where TensorRT is missing: the plan still works, the build says how to install it."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from omnisift_edge.engines.build import build_engines
from omnisift_edge.engines.plan import BuildConfig, BuildPlan, plan_build
from omnisift_edge.runtime.trt_env import TENSORRT_MISSING, require_tensorrt
from omnisift_edge.errors import UsageError


def test_import_of_the_package_is_light():
    code = ("import sys, omnisift_edge.engines as e; e.BuildConfig; e.VerifyConfig; "
            "print(sorted(m for m in ('tensorrt', 'polygraphy', 'onnx', 'onnxruntime', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_tensorrt_is_the_install_message(export_copy, no_tensorrt):
    with pytest.raises(UsageError) as info:
        require_tensorrt()
    assert str(info.value) == TENSORRT_MISSING
    assert "sudo apt install python3-libnvinfer" in TENSORRT_MISSING and "pip install tensorrt" in TENSORRT_MISSING
    with pytest.raises(UsageError, match=r"^TensorRT is not installed: on Jetson install JetPack's python3-libnvinfer"):
        build_engines(BuildConfig(export_copy, target="orin-agx"))
    assert not (export_copy / "engines" / "orin-agx" / "decoder.engine").exists()


def test_plan_only_needs_no_tensorrt(export_copy, no_tensorrt):
    plan = plan_build(BuildConfig(export_copy, target="orin-agx"))
    assert isinstance(plan, BuildPlan) and plan.path.is_file()


@pytest.mark.parametrize("damage, message", [
    (lambda m: "{not json", "is corrupt"),
    (lambda m: json.dumps({**json.loads(m), "schema_version": 2}), "has schema version 2, this omnisift-edge reads 1"),
])
def test_a_damaged_manifest_is_the_read_manifest_error(export_copy, no_tensorrt, damage, message):
    path = export_copy / "manifest.json"
    path.write_text(damage(path.read_text()))
    with pytest.raises(UsageError, match=message):     # before the TensorRT check: no machine fixes this
        build_engines(BuildConfig(export_copy, target="orin-agx"))
    with pytest.raises(UsageError, match=message):
        plan_build(BuildConfig(export_copy, target="orin-agx"))


def test_a_folder_without_manifest(tmp_path):
    with pytest.raises(UsageError, match="has no manifest.json"):
        plan_build(BuildConfig(tmp_path, target="l4"))


def test_the_cli_exit_path_is_one_line_and_exit_1(export_copy, no_tensorrt):
    """What the lead's `omnisift-edge build` does with our UsageError: click's one-line error, exit 1."""
    from omnisift_edge.cli import _user_errors

    @click.command()
    @click.argument("folder")
    @_user_errors
    def build(folder):
        build_engines(BuildConfig(folder, target="orin-agx"))

    result = CliRunner().invoke(build, [str(export_copy)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {TENSORRT_MISSING}"


def test_the_wired_build_command_if_present(export_copy, no_tensorrt):
    from omnisift_edge.cli import main

    if "build" not in main.commands:
        pytest.skip("omnisift-edge build is not wired into cli.py yet (the lead adds it)")
    result = CliRunner().invoke(main, ["build", str(export_copy), "--target", "orin-agx"])
    assert result.exit_code == 1 and "TensorRT is not installed" in result.output


def test_the_plan_reads_one_resolved_environment(export_copy):
    import dataclasses

    plan = plan_build(BuildConfig(export_copy, target="rtx", compute_capabilities="12.0"), write=False)
    env = plan.env
    assert plan.target is env.target and env.target.compute_capabilities == ((12, 0),)   # cfg's list merged once
    assert (plan.flavour, plan.tensorrt, env.flavour.title) == ("tensorrt_rtx", env.tensorrt, "TensorRT-RTX")
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.tensorrt = "0"
    record = plan.record()                       # the plan's part of the build report
    assert (record["target"], record["flavour"], record["precision"]) == ("rtx", "tensorrt_rtx", plan.precision)
    assert record["decoder_form"] == {"graph": plan.decoder_form[0], "why": plan.decoder_form[1]}
    ep = plan.engines[0]
    assert ep.record(export_copy)["file"] == str(ep.engine.relative_to(export_copy))


def test_a_build_hashes_each_export_file_once(export_copy):
    """verify_sources' digests are what write_manifest records for files unchanged since; a changed file is hashed."""
    import os

    from omnisift_edge.artifact.manifest import read_manifest, write_manifest
    from omnisift_edge.engines.store import verify_sources

    manifest = read_manifest(export_copy, verify=False)
    known = verify_sources(export_copy, manifest)
    name = next(iter(known))
    stale = {**known, name: {**known[name], "sha256": "0" * 64}}      # a digest only the reuse can write
    write_manifest(export_copy, manifest, known=stale)
    assert read_manifest(export_copy, verify=False)["files"][name]["sha256"] == "0" * 64
    stat = os.stat(export_copy / name)
    os.utime(export_copy / name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))   # touched since: hashed again
    write_manifest(export_copy, manifest, known=stale)
    assert read_manifest(export_copy, verify=False)["files"][name]["sha256"] == manifest["files"][name]["sha256"]


def test_a_jetson_build_that_cannot_fit_is_refused_before_tensorrt(export_copy, no_tensorrt):
    """The tiny export with a 15 GB workspace on a 16 GB NX: the build peak exceeds the board; refused
    with the memory line, not TensorRT's install message (the check runs before TensorRT is imported)."""
    with pytest.raises(UsageError) as info:
        build_engines(BuildConfig(export_copy, target="orin-nx", workspace_gb=15))
    message = str(info.value)
    assert message.startswith("building the ") and "shared by CPU and GPU" in message and "\n" not in message
    assert "Jetson AGX Orin 32 GB" in message and "copy" in message
    assert not (export_copy / "engines" / "orin-nx").exists()
    plan = plan_build(BuildConfig(export_copy, target="orin-nx", workspace_gb=15), write=False)
    assert plan.memory_problem == message
    assert f"REFUSED: {message}" in plan.summary()
    assert plan.to_dict()["build_peak"]["refused"] == message


def test_the_build_memory_rule_leaves_fitting_and_discrete_gpu_builds_alone(export_copy, no_tensorrt):
    plan = plan_build(BuildConfig(export_copy, target="orin-nx"), write=False)
    assert plan.memory_problem is None and "build memory: peak about" in plan.summary()
    peak = plan.to_dict()["build_peak"]
    assert peak["total_bytes"] == peak["parser_bytes"] + peak["builder_bytes"] + peak["workspace_bytes"] \
        + peak["engine_bytes"] and peak["unified_memory"]
    big = plan_build(BuildConfig(export_copy, target="a100", workspace_gb=79.5), write=False)
    assert big.memory_problem is None and "not checked" in big.summary()
    with pytest.raises(UsageError, match="^TensorRT is not installed"):    # the memory rule let it through
        build_engines(BuildConfig(export_copy, target="a100", workspace_gb=79.5))


def test_the_cli_refuses_the_jetson_build_in_one_line(export_copy, no_tensorrt):
    from omnisift_edge.cli import main

    result = CliRunner().invoke(main, ["build", str(export_copy), "--target", "orin-nx", "--workspace", "15"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "shared by CPU and GPU" in result.output
    result = CliRunner().invoke(main, ["build", str(export_copy), "--target", "orin-nx", "--workspace", "15", "--plan"])
    assert result.exit_code == 0 and "build memory: peak about" in result.output and "REFUSED" in result.output
