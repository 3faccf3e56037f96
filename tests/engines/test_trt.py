"""Real engines: built with TensorRT on this GPU and checked against the recorded ONNX Runtime outputs.

Marked `trt`: tests/conftest.py skips them with the reason where TensorRT or a CUDA GPU is missing.
"""

from __future__ import annotations

import shutil

import pytest

from omnisift_edge.engines.build import build_engines
from omnisift_edge.engines.plan import BuildConfig
from omnisift_edge.engines.presets import PRESETS
from omnisift_edge.runtime.trt_env import detect_device
from omnisift_edge.engines.verify import VerifyConfig, verify_engines
from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.manifest import read_manifest, write_manifest
from omnisift_edge.artifact.tensors import is_batch_form

pytestmark = pytest.mark.trt


def _copy(src, tmp_path_factory, name):
    target = tmp_path_factory.mktemp(name) / "export"
    shutil.copytree(src, target)
    return target


@pytest.fixture(scope="module")
def built(recorded_export, tmp_path_factory):
    folder = _copy(recorded_export, tmp_path_factory, "built")
    cache = folder.parent / "timing.cache"
    artifact = build_engines(BuildConfig(folder, target="auto", precision="fp32", timing_cache=cache))
    return folder, artifact, cache


def test_build_writes_engines_and_the_report(built):
    import tensorrt as trt

    folder, artifact, cache = built
    manifest = read_manifest(folder, verify=True)                        # engines checksummed too
    report = manifest["builds"][artifact.target.name]
    device = detect_device()
    assert report["tensorrt"] == trt.__version__ and report["compute_capability"] == device.cc
    assert report["device"] == device.name and report["precision"] == "fp32"
    form = artifact.plan.decoder_form[0]                                  # decoder_scatter on TensorRT >= 10.15
    assert set(report["engines"]) == {g for g in manifest["graphs"] if not is_batch_form(g)} - {"decoder"} | {form}
    for graph, entry in report["engines"].items():
        path = folder / entry["file"]
        assert path == folder / "engines" / artifact.target.name / f"{graph}.engine"
        assert path.stat().st_size == entry["bytes"] > 0 and entry["file"] in manifest["files"]
        assert entry["build_seconds"] >= 0 and entry["strongly_typed"]
    assert [p["name"] for p in report["engines"][form]["profiles"]] == (
        ["prefill", "decode"] if form == "decoder" else ["in_place"])
    assert cache.is_file() and cache.stat().st_size > 0
    assert not [p for p in (folder / "engines").rglob(".*")]             # no temporary files left


def test_engines_carry_the_planned_profiles(built):
    import tensorrt as trt

    folder, artifact, _ = built
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    form = artifact.plan.decoder_form[0]
    engine = runtime.deserialize_cuda_engine(artifact.engines[form].read_bytes())
    assert engine is not None and engine.num_optimization_profiles == len(artifact.plan.engine(form).profiles)
    if form == "decoder_scatter":                                          # in place: each present is its past
        presents = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                    if engine.get_tensor_name(i).startswith("present.")]
        assert presents and all(engine.get_aliased_input_tensor(p) == p.replace("present.", "past_key_values.")
                                for p in presents)
    for index, profile in enumerate(artifact.plan.engine(form).profiles):
        for name, r in profile.dynamic_inputs.items():
            got = [tuple(s) for s in engine.get_tensor_profile_shape(name, index)]
            assert got == [r.min, r.opt, r.max], (profile.name, name)


def test_fp32_engines_match_onnx_runtime(built):
    folder, artifact, _ = built
    report = verify_engines(VerifyConfig(folder))
    assert report.ok, report.summary()
    assert set(report.graphs) == set(artifact.engines) - {"decoder_scatter"}   # no reference: the stream tests it
    for graph in ("compressor_r1", "compressor_r0.25"):
        outputs = {o.name: o for o in report.graphs[graph].outputs}
        assert outputs["kept_index"].ok and outputs["kept_index"].max_abs == 0     # identical, ties included
        assert outputs["kept_position_ids"].ok
    assert "decoder" not in report.graphs or report.graphs["decoder"].tokens_equal


def test_fp16_engines_match_within_tolerance(recorded_export, tmp_path_factory):
    folder = _copy(recorded_export, tmp_path_factory, "fp16")
    artifact = build_engines(BuildConfig(folder, target="auto", precision="fp16",
                                         timing_cache=folder.parent / "timing.cache"))
    assert artifact.report["engines"][artifact.plan.decoder_form[0]]["flags"] == ["FP16"]
    assert artifact.report["engines"]["compressor_r0.25"]["precision"] == "fp32"
    report = verify_engines(VerifyConfig(folder))
    assert report.ok, report.summary()


def test_rebuild_reuses_the_timing_cache(built, tmp_path_factory):
    folder, artifact, cache = built
    folder = _copy(folder, tmp_path_factory, "rebuild")
    before = cache.stat().st_size
    again = build_engines(BuildConfig(folder, target=artifact.target.name, precision="fp32", timing_cache=cache))
    assert cache.stat().st_size >= before and set(again.engines) == set(artifact.engines)
    assert read_manifest(folder, verify=True)["builds"][artifact.target.name]["timing_cache"] == str(cache)


def test_a_target_this_gpu_is_not(recorded_export, tmp_path_factory):
    folder = _copy(recorded_export, tmp_path_factory, "wrong")
    device = detect_device()
    other = next(t for t in PRESETS.values() if t.compute_capability != device.compute_capability)
    with pytest.raises(UsageError) as info:
        build_engines(BuildConfig(folder, target=other.name, precision="fp16"))
    assert "compute capability" in str(info.value) and "\n" not in str(info.value)


def test_a_tampered_engine_is_a_checksum_error(built, tmp_path_factory):
    folder, artifact, _ = built
    folder = _copy(folder, tmp_path_factory, "tampered")
    engine = folder / artifact.report["engines"]["audio_encoder"]["file"]
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="audio_encoder.engine does not match its checksum"):
        verify_engines(VerifyConfig(folder))


def test_engines_of_another_tensorrt_version_are_refused(built, tmp_path_factory):
    folder, artifact, _ = built
    folder = _copy(folder, tmp_path_factory, "other-trt")
    manifest = read_manifest(folder)
    manifest["builds"][artifact.target.name]["tensorrt"] = "0.0.0"
    write_manifest(folder, manifest)
    with pytest.raises(UsageError, match="built with TensorRT 0.0.0.*rebuild them here"):
        verify_engines(VerifyConfig(folder))


def test_selftest_passes(tmp_path):
    from omnisift_edge.selftest import SelfTestConfig, selftest

    result = selftest(SelfTestConfig(workdir=tmp_path), progress=lambda _: None)
    assert result.ran and result.ok, result.summary()
