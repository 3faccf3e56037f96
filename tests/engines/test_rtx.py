"""Real TensorRT-RTX engines, built on this machine's CPU (ahead of time; no GPU needed).

Marked `rtx`: tests/conftest.py skips them with the reason where `import tensorrt_rtx` fails. Every
graph of the embedded default is built for real: an fp32 export (ratios 1 and 0.25, the session's
`recorded_export`) and an fp16 export (ratios 1 and 0.5), the decoder as `decoder_scatter` (its KV
cache updated in place, one profile). What cannot run here (the engines themselves) is checked as far as the API allows
without a GPU: the engine header through the runtime's validity check, the builder configuration
(profiles, compute capabilities, TF32) on the real builder, and the one line that says a GPU is missing.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from omnisift_edge.runtime import trt_flavour as flavours
from omnisift_edge.engines.build import build_engines
from omnisift_edge.engines.plan import BuildConfig, plan_build
from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.manifest import read_manifest
from omnisift_edge.artifact.tensors import batch_form_key

pytestmark = pytest.mark.rtx

FP16_RATIOS = (1.0, 0.5)   # at 112x84 an fp16 compressor_r0.25 disagrees with PyTorch at export (export's check)


def _copy(src, tmp_path_factory, name):
    target = tmp_path_factory.mktemp(name) / "export"
    shutil.copytree(src, target)
    return target


@pytest.fixture(scope="module")
def fp16_export(small_export):
    from tests.engines.conftest import RESOLUTION

    return small_export(ratios=FP16_RATIOS, resolution=RESOLUTION, dtype="fp16")


@pytest.fixture(scope="module")
def built32(recorded_export, tmp_path_factory):
    folder = _copy(recorded_export, tmp_path_factory, "rtx32")
    steps = []
    return folder, build_engines(BuildConfig(folder, target="rtx"), steps.append), steps


@pytest.fixture(scope="module")
def built16(fp16_export, tmp_path_factory):
    folder = _copy(fp16_export, tmp_path_factory, "rtx16b")
    return folder, build_engines(BuildConfig(folder, target="rtx")), []


@pytest.mark.parametrize("which, dtype, ratios", [("built32", "fp32", ("1", "0.25")), ("built16", "fp16", ("1", "0.5"))])
def test_every_graph_builds_a_real_engine_with_the_report(which, dtype, ratios, request):
    import tensorrt_rtx

    from omnisift_edge.export.lint import format_findings, has_errors, lint_folder

    folder, artifact, _ = request.getfixturevalue(which)
    findings = lint_folder(folder)                                          # what the lint passes, the parser built
    assert not has_errors(findings), format_findings(findings)
    manifest = read_manifest(folder, verify=True)                          # engines and plan checksummed too
    report = manifest["builds"]["rtx"]
    assert manifest["dtype"] == dtype and report["precision"] == dtype     # strongly typed: the export's dtype
    assert (report["flavour"], report["tensorrt"]) == ("tensorrt_rtx", tensorrt_rtx.__version__)
    assert report["compute_capability"] == "8.6,8.9,12.0" and report["timing_cache"] is None
    one_chunk = {"vision_encoder", "audio_encoder", "decoder", *(f"compressor_r{r}" for r in ratios)}
    assert set(manifest["graphs"]) == one_chunk | {batch_form_key(g) for g in one_chunk if g != "decoder"}
    # TensorRT-RTX has KVCacheUpdate: the in-place decoder replaces the past/present one (never both); the batched
    # forms are built for --max-streams > 1 only (tests/engines/test_batch_engines.py)
    assert set(report["engines"]) == one_chunk - {"decoder"} | {"decoder_scatter"}
    assert report["decoder_form"]["graph"] == "decoder_scatter"
    for graph, entry in report["engines"].items():
        path = folder / entry["file"]
        assert path == folder / "engines" / "rtx" / f"{graph}.engine" and entry["file"] in manifest["files"]
        assert path.stat().st_size == entry["bytes"] > 10_000
        assert entry["strongly_typed"] and entry["flags"] == [] and entry["precision"] == dtype
        assert entry["validity"]["checked"] and entry["validity"]["header_ok"], entry["validity"]
    profiles = report["engines"]["decoder_scatter"]["profiles"]
    assert [p["name"] for p in profiles] == ["in_place"]
    assert profiles[0]["axes"]["logits_length"] == [0, 1, 1]                  # a chunk prefill asks for no logits
    assert profiles[0]["axes"]["cache_length"] == [manifest["max_context"]] * 3   # the static cache
    # the parser read the decoder's weights from the export's one shared copy (parse_from_file: relative location)
    assert "decoder_scatter.onnx" in manifest["shared_weights"]["graphs"] and "shared_weights.data" in manifest["files"]
    assert "engines/rtx/build_plan.json" in manifest["files"]
    assert not list((folder / "engines").rglob(".*"))                     # no staging or temporary files left
    assert artifact.engines == {g: folder / e["file"] for g, e in report["engines"].items()}


def test_fp16_decoder_engine_is_about_half_the_fp32_one(built32, built16):
    b32 = built32[1].report["engines"]["decoder_scatter"]["bytes"]
    b16 = built16[1].report["engines"]["decoder_scatter"]["bytes"]
    assert 0.35 < b16 / b32 < 0.65, (b16, b32)


def test_the_runtime_reads_the_header_and_rejects_a_damaged_one(built32):
    import tensorrt_rtx as trt

    folder, artifact, _ = built32
    data = artifact.engines["decoder_scatter"].read_bytes()
    good = flavours.engine_validity(trt, data)
    assert good["checked"] and good["header_ok"] and "MALFORMED_ENGINE" not in good["diagnostics"]
    damaged = bytearray(data)
    damaged[0] ^= 0xFF                                                      # the magic bytes
    bad = flavours.engine_validity(trt, bytes(damaged))
    assert not bad["header_ok"] and "MALFORMED_ENGINE" in bad["diagnostics"] and bad["validity"] == "INVALID"


def test_the_builder_config_has_both_profiles_the_compute_capabilities_and_no_tf32(recorded_export):
    """The real TensorRT-RTX builder and parser, with the config our build hands to Polygraphy (for the
    past/present decoder, which an rtx build no longer holds, but whose profiles the plan still derives)."""
    from polygraphy.backend import trt as polygraphy_trt

    from omnisift_edge.engines.build import _create_config, require_tensorrt

    trt = require_tensorrt("tensorrt_rtx")
    plan = plan_build(BuildConfig(recorded_export, target="rtx", compute_capabilities="8.9,12.0"), write=False)
    from omnisift_edge.engines.plan import EnginePlan, precision_mode
    from omnisift_edge.engines.profiles import graph_profiles

    manifest = read_manifest(recorded_export, verify=False)
    ep = EnginePlan("decoder", recorded_export / "decoder.onnx", recorded_export / "x.engine", "fp32",
                    precision_mode("decoder", "fp32", "fp32", 10, True), graph_profiles(manifest, "decoder"), 0)
    builder, network, parser = polygraphy_trt.NetworkFromOnnxPath(str(ep.onnx), strongly_typed=True)()
    profiles = []
    for profile in ep.profiles:
        p = polygraphy_trt.Profile()
        for name, r in profile.dynamic_inputs.items():
            p.add(name, min=r.min, opt=r.opt, max=r.max)
        profiles.append(p)
    config = _create_config(trt, polygraphy_trt, plan, fp16=False, bf16=False, tf32=False, profiles=profiles,
                            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan.workspace_mib << 20},
                            load_timing_cache=None)(builder, network)
    assert network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    kinds = {"float32": trt.float32, "float16": trt.float16, "int64": trt.int64}
    for graph in ("decoder", "compressor_r0.25"):                           # int64 I/O stays int64 (no int32 cast)
        entry = manifest["graphs"][graph]
        net = network if graph == "decoder" else polygraphy_trt.NetworkFromOnnxPath(
            str(recorded_export / entry["file"]), strongly_typed=True)()[1]
        got = {**{net.get_input(i).name: net.get_input(i).dtype for i in range(net.num_inputs)},
               **{net.get_output(i).name: net.get_output(i).dtype for i in range(net.num_outputs)}}
        assert got == {t["name"]: kinds[t["dtype"]] for t in entry["inputs"] + entry["outputs"]}
    assert config.num_optimization_profiles == 2 and not config.get_flag(trt.BuilderFlag.TF32)
    assert [config.get_compute_capability(i) for i in range(config.num_compute_capabilities)] == [
        trt.ComputeCapability.SM89, trt.ComputeCapability.SM120]
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == plan.workspace_mib << 20


def test_cli_build_for_one_compute_capability(fp16_export, tmp_path):
    from omnisift_edge.cli import main

    folder = tmp_path / "export"
    shutil.copytree(fp16_export, folder)
    result = CliRunner().invoke(main, ["build", str(folder), "--target", "rtx", "--compute-capability", "8.9"])
    assert result.exit_code == 0, result.output
    assert "built 5 engines for rtx (tensorrt_rtx" in result.output and "compute capability 8.9)" in result.output
    report = read_manifest(folder, verify=True)["builds"]["rtx"]
    assert report["compute_capability"] == "8.9" and report["precision"] == "fp16"


@pytest.mark.parametrize("args, needle", [
    (["--precision", "fp16"], "TensorRT-RTX builds strongly typed networks only .*export with --dtype fp16"),
    (["--precision", "bf16"], "strongly typed networks only"),
    (["--compute-capability", "9.0"], "cannot compile for compute capability 9.0 \\(Hopper: use --target h100"),
    (["--compute-capability", "8.7"], "8.7 \\(Jetson Orin"),
    (["--compute-capability", "eight"], "major.minor numbers"),
])
def test_bad_input_is_one_line_exit_1_and_no_engines(export_copy, args, needle):
    import re

    from omnisift_edge.cli import main

    before = (export_copy / "manifest.json").read_bytes()
    result = CliRunner().invoke(main, ["build", str(export_copy), "--target", "rtx", *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and re.search(needle, lines[0]), result.output
    assert not (export_copy / "engines").exists() or not list((export_copy / "engines").iterdir())
    assert (export_copy / "manifest.json").read_bytes() == before


def test_compute_capability_is_refused_for_full_tensorrt_targets(engine_export):
    with pytest.raises(UsageError, match="applies to TensorRT-RTX targets .*--target rtx"):
        BuildConfig(engine_export, target="orin-agx", compute_capabilities="8.7")


def test_flavour_not_installed_is_the_install_line(export_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)                 # `import tensorrt_rtx` raises ImportError
    with pytest.raises(UsageError) as info:
        build_engines(BuildConfig(export_copy, target="rtx"))
    assert str(info.value) == flavours.TENSORRT_RTX.missing and "omnisift-edge[rtx]" in str(info.value)
    assert not (export_copy / "engines").exists()


def test_an_interrupted_build_leaves_no_complete_looking_set(built32, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(built32[0], folder)
    before = read_manifest(folder, verify=True)
    old_engines = {p.name: p.read_bytes() for p in (folder / "engines" / "rtx").iterdir()}

    def interrupt(step):
        if step.startswith("building decoder"):                             # after four real engines were built
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_engines(BuildConfig(folder, target="rtx", compute_capabilities="12.0"), interrupt)
    after = read_manifest(folder, verify=True)                              # previous set: intact and true
    assert after["builds"] == before["builds"]
    assert {p.name: p.read_bytes() for p in (folder / "engines" / "rtx").iterdir()} == old_engines
    assert sorted(p.name for p in (folder / "engines").iterdir()) == ["rtx"]   # no staging folder left

    fresh = tmp_path / "fresh"
    shutil.copytree(built32[0], fresh, ignore=shutil.ignore_patterns("engines"))
    manifest = json.loads((fresh / "manifest.json").read_text())
    manifest.pop("builds")
    from omnisift_edge.artifact.manifest import write_manifest

    write_manifest(fresh, manifest)
    with pytest.raises(KeyboardInterrupt):
        build_engines(BuildConfig(fresh, target="rtx"), interrupt)
    assert not (fresh / "engines" / "rtx").exists() and not list((fresh / "engines").iterdir())
    assert "builds" not in read_manifest(fresh, verify=True)


def test_plan_and_doctor_name_flavour_and_version(engine_export):
    import tensorrt_rtx

    from omnisift_edge.doctor import targets

    plan = plan_build(BuildConfig(engine_export, target="rtx"), write=False)
    summary = plan.summary()
    assert f"flavour tensorrt_rtx: TensorRT-RTX {tensorrt_rtx.__version__} (installed)" in summary
    assert "--compute-capabilities 8.6 8.9 12.0" in summary and "trtexec" not in summary
    assert plan.to_dict()["flavour"] == "tensorrt_rtx" and plan.to_dict()["timing_cache"] is None
    assert any(line.strip().startswith(f"ok rtx: tensorrt_rtx {tensorrt_rtx.__version__}") for line in targets())


def test_switching_flavours_repoints_polygraphy(built32):
    """One process may load both flavours in turn: Polygraphy's lazy `trt` follows the last one loaded."""
    import polygraphy.backend.trt.loader as loader
    import polygraphy.config
    import tensorrt_rtx

    flavours.load("tensorrt_rtx")
    assert polygraphy.config.USE_TENSORRT_RTX and loader.trt.__version__ == tensorrt_rtx.__version__
    try:
        import tensorrt  # noqa: F401
        has_tensorrt = True
    except Exception:
        has_tensorrt = False
    if not has_tensorrt:
        with pytest.raises(UsageError, match="TensorRT is not installed"):
            flavours.load("tensorrt")
        assert not polygraphy.config.USE_TENSORRT_RTX
    flavours.load("tensorrt_rtx")
    assert polygraphy.config.USE_TENSORRT_RTX and loader.trt.__version__ == tensorrt_rtx.__version__


def test_running_the_engines_without_a_gpu_is_one_line(built32, tmp_path):
    from omnisift_edge.runtime.trt_env import detect_device
    from omnisift_edge.engines.verify import VerifyConfig, verify_engines
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    if detect_device() is not None:
        pytest.skip("a CUDA GPU is present: this checks the message where there is none")
    folder = built32[0]
    for run in (lambda: verify_engines(VerifyConfig(folder)),
                lambda: OmniSession(RuntimeConfig(folder, backend="tensorrt", ratio=0.25))):
        with pytest.raises(UsageError) as info:
            run()
        message = str(info.value)
        assert "\n" not in message and message.startswith("no CUDA GPU found: the rtx engines (TensorRT-RTX)")
        assert "compute capability 8.6,8.9,12.0" in message
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    report = verify_engines(VerifyConfig(copy, record=True))            # the export machine: record, then say why not
    assert report.reference == copy / "reference" and not report.graphs and not report.ok
    assert report.notes == [f"{message}; the reference is recorded"]


def test_selftest_for_rtx_says_what_is_missing_without_a_gpu():
    from omnisift_edge.runtime.trt_env import detect_device
    from omnisift_edge.selftest import SelfTestConfig, selftest

    if detect_device() is not None:
        pytest.skip("a CUDA GPU is present: this checks the message where there is none")
    lines = []
    result = selftest(SelfTestConfig(target="rtx"), progress=lines.append)
    assert not result.ran and lines == []            # the caller (the CLI) prints the summary, once
    assert result.summary().startswith("selftest cannot run here: no CUDA GPU found")
    assert result.reason == ("no CUDA GPU found (TensorRT-RTX builds without one; running the engines needs an "
                             "RTX-class GPU: try omnisift-edge build DIR --target rtx)")


def test_the_in_place_decoder_engine_updates_its_cache_in_place(built32):
    """The rtx build's decoder is the in-place form for real: TensorRT-RTX's parser made every cache update
    a KV_CACHE_UPDATE layer whose input is a past and whose output is that layer's present (the alias
    `engine.get_aliased_input_tensor` reports; reading it needs a GPU: the `trt` test in
    tests/runtime/test_trt_pipeline.py does), and write_index is a shape tensor (host memory): at batch 1 (the
    default --max-streams 1) the valid length the attention slices to, max(write_index) + S, is a shape."""
    from polygraphy.backend import trt as polygraphy_trt

    from omnisift_edge.engines.build import require_tensorrt
    from omnisift_edge.engines.kv_form import kv_cache_updates, parse_static, shape_inputs

    folder, artifact, _ = built32
    manifest = read_manifest(folder, verify=False)
    layers = manifest["dims"]["num_layers"]
    pairs = sorted((f"past_key_values.{i}.{k}", f"present.{i}.{k}") for i in range(layers) for k in ("key", "value"))
    report = artifact.report["engines"]["decoder_scatter"]
    assert sorted((u["cache"], u["output"]) for u in report["kv_cache_updates"]) == pairs
    assert report["shape_inputs"] == ["write_index"] and report["static_axes"]["cache_length"] == manifest["max_context"]
    trt = require_tensorrt("tensorrt_rtx")                              # the same, read from the network again
    ep = artifact.plan.engine("decoder_scatter")
    _, network, _ = parse_static(trt, polygraphy_trt, ep.onnx, True, ep.static)
    updates = kv_cache_updates(trt, network)
    assert sorted((u["cache"], u["output"]) for u in updates) == pairs
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    assert {u["output"] for u in updates} <= outputs and shape_inputs(network) == {"write_index"}
    past = next(network.get_input(i) for i in range(network.num_inputs) if network.get_input(i).name == pairs[0][0])
    assert tuple(past.shape) == (1, manifest["dims"]["kv_heads"], manifest["max_context"], manifest["dims"]["head_dim"])


def test_a_dynamic_cache_axis_is_what_tensorrt_refuses(built32):
    """Why the build fixes cache_length before parsing: the graph as exported (dynamic cache axis) does not parse."""
    from polygraphy.backend import trt as polygraphy_trt
    from polygraphy.exception import PolygraphyException

    ep = built32[1].plan.engine("decoder_scatter")
    with pytest.raises(PolygraphyException):
        polygraphy_trt.NetworkFromOnnxPath(str(ep.onnx), strongly_typed=True)()
