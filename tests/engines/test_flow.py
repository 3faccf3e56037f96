"""The build and verify flow on the CPU, with stand-ins for TensorRT and the GPU.

No engine is built here: `_build_one` returns placeholder bytes and the "engine" runs in ONNX
Runtime. What is tested is everything around TensorRT: plan execution, the Polygraphy loader
arguments, atomic engine files, the `builds` report, manifest checksums, device/version checks.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from omnisift_edge.engines import build as build_mod
from omnisift_edge.engines import verify as verify_mod
from omnisift_edge.runtime import trt_env
from omnisift_edge.engines.plan import BuildConfig, plan_build
from omnisift_edge.runtime.trt_env import DeviceInfo
from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.manifest import read_manifest
from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.artifact.tensors import is_batch_form

pytest.importorskip("polygraphy", reason="the engines extra (polygraphy) is not installed")

AGX = DeviceInfo("Orin", (8, 7), 61.4, "NVIDIA Jetson AGX Orin Developer Kit")
FAKE_TRT = SimpleNamespace(__version__="10.3.0.30", MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"))


@pytest.fixture
def stand_ins(monkeypatch):
    built = []

    def fake_build_one(trt, polygraphy_trt, ep, plan):
        built.append(ep)
        return f"engine {ep.graph} {ep.mode.precision}".encode(), {}

    for module in (build_mod, verify_mod):
        monkeypatch.setattr(module, "require_tensorrt", lambda *_: FAKE_TRT)
    monkeypatch.setattr(build_mod, "require_device", lambda: AGX)
    monkeypatch.setattr(trt_env, "require_device", lambda: AGX)
    monkeypatch.setattr(build_mod, "_build_one", fake_build_one)
    monkeypatch.setattr(build_mod.flavours, "engine_validity", lambda trt, data: {"checked": False})
    return built


def test_build_flow_writes_engines_report_and_checksums(recorded_export, tmp_path, stand_ins):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(recorded_export, folder)
    art = build_mod.build_engines(BuildConfig(folder, target="auto", timing_cache=tmp_path / "t.cache"))
    assert art.target.name == "orin-agx" and art.target.memory_gb == 61.4
    assert [ep.graph for ep in stand_ins] == [g for g in read_manifest(folder)["graphs"] if not is_batch_form(g)]
    manifest = read_manifest(folder, verify=True)
    report = manifest["builds"]["orin-agx"]
    assert (report["tensorrt"], report["compute_capability"], report["board"]) == ("10.3.0.30", "8.7", AGX.board)
    assert report["precision"] == "fp16" and report["max_context"] == manifest["max_context"]
    for graph, entry in report["engines"].items():
        path = folder / entry["file"]
        assert path.read_bytes().startswith(f"engine {graph}".encode()) and entry["bytes"] == path.stat().st_size
        assert entry["file"] in manifest["files"]
    assert report["engines"]["decoder"]["flags"] == ["FP16"] and not report["engines"]["decoder"]["strongly_typed"]
    assert report["engines"]["compressor_r0.25"]["strongly_typed"]
    assert "engines/orin-agx/build_plan.json" in manifest["files"]
    assert not list((folder / "engines").rglob(".*"))


def test_build_refuses_another_gpu_and_bf16_on_orin(export_copy, stand_ins):
    with pytest.raises(UsageError, match="--target h100 is compute capability 9.0 but this GPU .* is 8.7"):
        build_mod.build_engines(BuildConfig(export_copy, target="h100"))
    with pytest.raises(UsageError, match="no bf16 support"):
        build_mod.build_engines(BuildConfig(export_copy, target="auto", precision="bf16"))
    assert not stand_ins


def test_build_one_hands_the_plan_to_polygraphys_loaders(engine_export, tmp_path):
    calls = {}

    class Profile(dict):
        def add(self, name, min, opt, max):
            self[name] = (min, opt, max)
            return self

    stub = SimpleNamespace(
        NetworkFromOnnxPath=lambda path, strongly_typed: calls.setdefault("network", (path, strongly_typed)),
        Profile=Profile,
        CreateConfig=lambda **kw: calls.setdefault("config", kw),
        EngineBytesFromNetwork=lambda network, config, save_timing_cache: (
            calls.setdefault("engine", (network, config, save_timing_cache)) and (lambda: b"plan")))
    plan = plan_build(BuildConfig(engine_export, target="orin-agx", timing_cache=tmp_path / "t.cache"), write=False)
    assert build_mod._build_one(FAKE_TRT, stub, plan.engine("decoder"), plan) == (b"plan", {})
    assert calls["network"] == (str(engine_export / "decoder.onnx"), False)
    config = calls["config"]
    assert config["fp16"] and not config["bf16"] and config["tf32"] is False
    assert config["memory_pool_limits"] == {"WORKSPACE": 4 << 30}
    assert config["load_timing_cache"] == calls["engine"][2] == str(tmp_path / "t.cache")
    prefill, decode = config["profiles"]
    want = plan.engine("decoder").profiles
    assert prefill == {n: (r.min, r.opt, r.max) for n, r in want[0].dynamic_inputs.items()}
    assert decode["inputs_embeds"][2][1] == 1                        # decode: one token
    calls.clear()
    build_mod._build_one(FAKE_TRT, stub, plan.engine("compressor_r0.25"), plan)
    assert calls["network"][1] is True and calls["config"]["profiles"] is None and not calls["config"]["fp16"]


def test_verify_flow_with_onnx_runtime_standing_in_for_the_engines(recorded_export, tmp_path, stand_ins, monkeypatch):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(recorded_export, folder)
    build_mod.build_engines(BuildConfig(folder, target="orin-agx", timing_cache=tmp_path / "t.cache"))
    manifest = read_manifest(folder)
    engine_to_onnx = {folder / e["file"]: folder / manifest["graphs"][g]["file"]
                      for g, e in manifest["builds"]["orin-agx"]["engines"].items()}

    def fake_run_engine(path, cases, profiles):
        session = ort_session(engine_to_onnx[path])
        names = [o.name for o in session.get_outputs()]
        return [dict(zip(names, session.run(names, c.inputs))) for c in cases]

    monkeypatch.setattr(verify_mod, "_run_engine", fake_run_engine)
    report = verify_mod.verify_engines(verify_mod.VerifyConfig(folder))
    assert report.ok, report.summary()
    assert (report.target, report.tensorrt, report.device) == ("orin-agx", "10.3.0.30", "Orin")
    assert set(report.graphs) == set(manifest["builds"]["orin-agx"]["engines"]) and report.graphs["decoder"].precision == "fp16"
    assert not any(is_batch_form(g) for g in report.graphs)                      # one stream: no batched engines

    def drifting(path, cases, profiles):
        got = fake_run_engine(path, cases, profiles)
        if path.stem == "decoder":
            for g in got:
                g["logits"] = g["logits"] + np.float32(1.0) * np.abs(g["logits"]).max()
        return got

    monkeypatch.setattr(verify_mod, "_run_engine", drifting)
    report = verify_mod.verify_engines(verify_mod.VerifyConfig(folder))
    assert not report.ok and not report.graphs["decoder"].ok and report.graphs["vision_encoder"].ok
    assert "FAIL decoder" in report.summary()

    monkeypatch.setattr(trt_env, "require_device", lambda: DeviceInfo("NVIDIA H100", (9, 0), 79.1))
    with pytest.raises(UsageError, match=r"built with TensorRT 10.3.0.30 on Orin .*this machine has TensorRT 10.3.0.30 "
                                         r"on NVIDIA H100 \(9.0\): rebuild them here"):
        verify_mod.verify_engines(verify_mod.VerifyConfig(folder))


def test_a_failed_rebuild_keeps_the_previous_engines(recorded_export, tmp_path, stand_ins, monkeypatch):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(recorded_export, folder)
    build_mod.build_engines(BuildConfig(folder, target="orin-agx", timing_cache=tmp_path / "t.cache"))
    before = {p.name: p.read_bytes() for p in (folder / "engines" / "orin-agx").iterdir()}
    (folder / "engines" / ".orin-agx.partial-leftover").mkdir()            # an interrupted build's leftovers

    def failing(trt, polygraphy_trt, ep, plan):
        if ep.graph == "decoder":
            raise UsageError("TensorRT could not build decoder")
        return b"new " + ep.graph.encode(), {}

    monkeypatch.setattr(build_mod, "_build_one", failing)
    with pytest.raises(UsageError, match="could not build decoder"):
        build_mod.build_engines(BuildConfig(folder, target="orin-agx", precision="fp32", timing_cache=tmp_path / "t.cache"))
    assert {p.name: p.read_bytes() for p in (folder / "engines" / "orin-agx").iterdir()} == before
    assert not list((folder / "engines").glob(".*"))
    assert read_manifest(folder, verify=True)["builds"]["orin-agx"]["precision"] == "fp16"


def test_build_checks_its_sources_but_not_old_engines(recorded_export, tmp_path, stand_ins):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(recorded_export, folder)
    build_mod.build_engines(BuildConfig(folder, target="orin-agx", timing_cache=tmp_path / "t.cache"))
    (folder / "engines" / "orin-agx" / "decoder.engine").write_bytes(b"half-copied")    # stale engine: rebuilt
    build_mod.build_engines(BuildConfig(folder, target="orin-agx", timing_cache=tmp_path / "t.cache"))
    assert read_manifest(folder, verify=True)
    with open(folder / "decoder.onnx", "ab") as handle:                                # a source: refused
        handle.write(b"\0")
    with pytest.raises(UsageError, match="decoder.onnx does not match its checksum"):
        build_mod.build_engines(BuildConfig(folder, target="orin-agx", timing_cache=tmp_path / "t.cache"))
