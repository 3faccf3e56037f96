"""record_reference and the comparison, on the CPU (Polygraphy's OnnxrtRunner stands in for TrtRunner)."""

from __future__ import annotations

import numpy as np
import pytest

from omnisift_edge.artifact.manifest import read_manifest, write_manifest
from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.artifact.reference import load_reference
from omnisift_edge.engines.verify import VerifyConfig, compare, run_cases, verify_engines
from omnisift_edge.errors import UsageError
from omnisift_edge.export.reference import record_reference
from omnisift_edge.runtime.trt_env import TENSORRT_MISSING, DeviceInfo, check_compatible


def test_reference_files_are_recorded_with_checksums(recorded_export):
    manifest = read_manifest(recorded_export, verify=True)
    ref = manifest["reference"]
    assert set(ref["graphs"]) == set(manifest["graphs"])
    for graph, entry in ref["graphs"].items():
        assert entry["file"] == f"reference/{graph}.npz" and entry["file"] in manifest["files"]
        assert (recorded_export / entry["file"]).is_file()
    assert [c["name"] for c in ref["graphs"]["compressor_r0.25"]["cases"]] == [
        "seed0", "seed1", "ties_frames", "ties_silence", "ties_both", "short_chunk"]
    assert [(c["name"], c["profile"]) for c in ref["graphs"]["decoder"]["cases"]] == [
        ("prefill_empty_past", "prefill"), ("prefill", "prefill"), ("decode", "decode")]


def test_ort_reproduces_every_recorded_output(recorded_export):
    manifest = read_manifest(recorded_export)
    for graph, entry in manifest["graphs"].items():
        session = ort_session(recorded_export / entry["file"])
        names = [t["name"] for t in entry["outputs"]]
        for case in load_reference(recorded_export, manifest, graph):
            assert list(case.inputs) == [t["name"] for t in entry["inputs"]]
            for name, got in zip(names, session.run(names, case.inputs)):
                np.testing.assert_array_equal(got, case.outputs[name], err_msg=f"{graph}/{case.name}/{name}")


def test_reference_inputs_are_the_promised_cases(recorded_export):
    manifest = read_manifest(recorded_export)
    k = next(r["kept_per_chunk"]["total"] for r in manifest["ratios"] if r["ratio"] == 0.25)
    cases = {c.name: c for c in load_reference(recorded_export, manifest, "compressor_r0.25")}
    video = cases["ties_frames"].inputs["video_embeds"]
    assert (video == video[:, :1, :1]).all()                              # exact ties: identical tokens
    audio = cases["ties_silence"].inputs["audio_embeds"]
    assert (audio == audio[:, :1]).all()
    for case in cases.values():
        real = int(case.outputs["kept_count"][0])                         # a short last chunk: fewer real rows
        assert (real == k) == (case.name != "short_chunk") and 0 < real <= k
        index = case.outputs["kept_index"][0]
        assert index.shape == (k,) and (np.diff(index[:real]) > 0).all()   # kept in original order
    prefill0, prefill1, decode = load_reference(recorded_export, manifest, "decoder")
    assert prefill0.inputs["past_key_values.0.key"].shape[2] == 0 and prefill0.inputs["inputs_embeds"].shape[1] == k
    np.testing.assert_array_equal(prefill1.inputs["past_key_values.1.value"], prefill0.outputs["present.1.value"])
    np.testing.assert_array_equal(decode.inputs["past_key_values.0.key"], prefill1.outputs["present.0.key"])
    assert decode.inputs["attention_mask"].shape == (1, 2 * k + 1)


def test_recording_is_deterministic(recorded_export, export_copy):
    record_reference(export_copy)
    first, again = read_manifest(recorded_export), read_manifest(export_copy)
    for graph in first["graphs"]:
        for a, b in zip(load_reference(recorded_export, first, graph), load_reference(export_copy, again, graph)):
            for name in a.inputs:
                assert a.inputs[name].tobytes() == b.inputs[name].tobytes(), (graph, a.name, name)


def _ort_outputs(folder, manifest, graph, cases):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    session = SessionFromOnnx(str(folder / manifest["graphs"][graph]["file"]), providers=["cpu"])
    profiles = ["prefill", "decode"] if graph == "decoder" else ["static"]
    return run_cases(lambda index, profile: OnnxrtRunner(session, name=f"ort-{profile}"), cases, profiles)


@pytest.mark.parametrize("graph", ["vision_encoder", "audio_encoder", "compressor_r1", "compressor_r0.25", "decoder"])
def test_comparison_through_polygraphy_passes_for_the_same_graph(recorded_export, graph):
    pytest.importorskip("polygraphy")
    manifest = read_manifest(recorded_export)
    cases = load_reference(recorded_export, manifest, graph)
    check = compare(graph, "fp16", cases, _ort_outputs(recorded_export, manifest, graph, cases))
    assert check.ok and check.polygraphy_passed
    assert all(o.max_abs == 0 for o in check.outputs)
    assert check.tokens_equal is (True if graph == "decoder" else None)


def test_comparison_catches_a_changed_index_and_a_drift(recorded_export):
    pytest.importorskip("polygraphy")
    manifest = read_manifest(recorded_export)
    cases = load_reference(recorded_export, manifest, "compressor_r0.25")
    got = [{n: v.copy() for n, v in c.outputs.items()} for c in cases]
    got[2]["kept_index"][0, -1] -= 1                                          # one kept token differs
    check = compare("compressor_r0.25", "fp16", cases, got)
    assert not check.ok and not check.polygraphy_passed
    assert {o.name: o.ok for o in check.outputs} == {"kept_embeds": True, "kept_position_ids": True, "kept_index": False,
                                                   "kept_count": True}

    cases = load_reference(recorded_export, manifest, "audio_encoder")
    scale = max(float(np.abs(c.outputs["audio_embeds"]).max()) for c in cases)
    small = [{"audio_embeds": c.outputs["audio_embeds"] + np.float32(0.005 * scale)} for c in cases]
    assert compare("audio_encoder", "fp16", cases, small).ok                  # within fp16 tolerance
    assert not compare("audio_encoder", "fp32", cases, small).ok              # not within fp32's
    big = [{"audio_embeds": c.outputs["audio_embeds"] + np.float32(0.5 * scale)} for c in cases]
    check = compare("audio_encoder", "fp16", cases, big)
    assert not check.ok and not check.polygraphy_passed


def test_record_refuses_a_tampered_export(export_copy):
    with open(export_copy / "audio_encoder.onnx", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(UsageError, match="audio_encoder.onnx does not match its checksum"):
        record_reference(export_copy)


def test_verify_without_reference_or_engines(export_copy, recorded_export):
    with pytest.raises(UsageError, match="no ONNX Runtime reference outputs.*--record"):
        verify_engines(VerifyConfig(export_copy))
    with pytest.raises(UsageError, match="no engines built for this export; run omnisift-edge build"):
        verify_engines(VerifyConfig(recorded_export))


def test_verify_without_tensorrt(recorded_export, tmp_path, no_tensorrt):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(recorded_export, folder)
    manifest = read_manifest(folder)
    manifest["builds"] = {"orin-agx": {"target": "orin-agx", "tensorrt": "10.3.0.30", "compute_capability": "8.7",
                                       "device": "Orin", "engines": {}}}
    write_manifest(folder, manifest)
    with pytest.raises(UsageError) as info:
        verify_engines(VerifyConfig(folder))
    assert str(info.value) == TENSORRT_MISSING
    with pytest.raises(UsageError, match=r"no engines for h100 \(it has orin-agx\)"):
        verify_engines(VerifyConfig(folder, target="h100"))


def test_record_on_the_export_machine_returns_a_report(export_copy, no_tensorrt):
    record_reference(export_copy)                          # what `verify --record` does first (export stage)
    report = verify_engines(VerifyConfig(export_copy, record=True))
    assert report.reference == export_copy / "reference" and not report.ok and not report.graphs
    assert "no engines built" in report.summary()
    assert "reference" in read_manifest(export_copy, verify=True)


def test_engines_from_another_machine_are_one_clear_line(tmp_path):
    build = {"target": "orin-agx", "tensorrt": "10.3.0.30", "compute_capability": "8.7", "device": "Orin"}
    check_compatible(build, "10.3.0.30", DeviceInfo("Orin", (8, 7), 61.4), tmp_path)
    for version, device in (("10.7.0", DeviceInfo("Orin", (8, 7), 61.4)),
                            ("10.3.0.30", DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0), 79.1))):
        with pytest.raises(UsageError) as info:
            check_compatible(build, version, device, tmp_path)
        message = str(info.value)
        assert "\n" not in message and "rebuild them here" in message and "10.3.0.30" in message
