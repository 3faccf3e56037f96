"""The two flavours without either installed: compute capabilities, the rtx preset, plans, device and
version checks, the loader's messages and how it points Polygraphy (real Polygraphy, no TensorRT)."""

from __future__ import annotations

import os
import sys

import pytest

from omnisift_edge.runtime import trt_flavour as flavours
from omnisift_edge.engines.plan import BuildConfig, plan_build
from omnisift_edge.engines.presets import check_device, get_target
from omnisift_edge.runtime.trt_env import DeviceInfo, check_compatible
from omnisift_edge.errors import UsageError

RTX = flavours.TENSORRT_RTX


@pytest.mark.parametrize("value, want", [
    ("8.6,8.9,12.0", ((8, 6), (8, 9), (12, 0))),
    (" 12.0 , 8.6 ", ((12, 0), (8, 6))),
    ("8.9,8.9", ((8, 9),)),
    (["8.0", (12, 1)], ((8, 0), (12, 1))),
])
def test_compute_capabilities_parse(value, want):
    assert flavours.parse_compute_capabilities(value, RTX) == want


@pytest.mark.parametrize("value, needle", [
    ("9.0", r"cannot compile for compute capability 9.0 \(Hopper: use --target h100"),
    ("8.7", r"8.7 \(Jetson Orin: use --target orin-nano/orin-nx/orin-agx"),
    ("7.5", r"cannot compile for compute capability 7.5; choose from 8.0, 8.6, 8.9, 12.0, 12.1"),
    ("8", "major.minor numbers"),
    ("8.x", "major.minor numbers"),
    ("", "major.minor numbers"),
])
def test_compute_capabilities_refused_with_the_fix(value, needle):
    with pytest.raises(UsageError, match=needle):
        flavours.parse_compute_capabilities(value, RTX)
    with pytest.raises(UsageError, match="applies to TensorRT-RTX targets"):
        flavours.parse_compute_capabilities("8.6", flavours.TENSORRT)


def test_the_rtx_preset():
    t = get_target("rtx")
    assert (t.flavour, t.compute_capabilities, t.runs_on) == ("tensorrt_rtx", RTX.default_compute_capabilities,
                                                              ((8, 6), (8, 9), (12, 0)))
    assert t.sm == "sm_86,sm_89,sm_120" and t.expects_tensorrt("1.7.1.116") and not t.expects_tensorrt("10.3")
    assert {get_target(n).flavour for n in ("orin-nano", "orin-nx", "orin-agx", "a100", "l4", "h100")} == {"tensorrt"}
    check_device(t, DeviceInfo("NVIDIA GeForce RTX 4090", (8, 9), 24.0))
    with pytest.raises(UsageError, match=r"compiled for compute capability 8.6, 8.9, 12.0 but this GPU \(NVIDIA H100\) "
                                         r"is 9.0; rebuild with --compute-capability 9.0"):
        check_device(t, DeviceInfo("NVIDIA H100", (9, 0), 80.0))


def test_rtx_plan_defaults_to_the_exports_dtype_and_refuses_other_precisions(engine_export):
    plan = plan_build(BuildConfig(engine_export, target="rtx"), write=False)
    assert plan.precision == "fp32" and plan.flavour == "tensorrt_rtx" and plan.timing_cache is None
    assert all(e.mode.strongly_typed and not e.mode.flags for e in plan.engines)
    assert all(plan.trtexec(e) == [] for e in plan.engines)
    line = plan.polygraphy(plan.engine("decoder_scatter"))
    assert line[:2] == ["env", "POLYGRAPHY_USE_TENSORRT_RTX=1"] and "--load-timing-cache" not in line
    assert line[line.index("--compute-capabilities") + 1:][:3] == ["8.6", "8.9", "12.0"]
    one = plan_build(BuildConfig(engine_export, target="rtx", compute_capabilities="12.0"), write=False)
    assert one.target.compute_capabilities == ((12, 0),) and one.to_dict()["target"]["compute_capabilities"] == ["12.0"]
    for precision in ("fp16", "bf16"):
        with pytest.raises(UsageError, match=f"strongly typed networks only .*{precision} engines need {precision} graphs"):
            plan_build(BuildConfig(engine_export, target="rtx", precision=precision), write=False)
    assert plan_build(BuildConfig(engine_export, target="l4"), write=False).precision == "fp16"   # unchanged default


def test_plan_says_assumed_when_the_flavour_is_not_installed(engine_export, monkeypatch):
    monkeypatch.setattr(flavours, "installed_version", lambda name: None)
    plan = plan_build(BuildConfig(engine_export, target="rtx"), write=False)
    assert plan.tensorrt == "1" and "TensorRT-RTX 1 (assumed, not installed)" in plan.summary()


def test_rtx_builds_are_checked_against_the_compiled_list():
    build = {"target": "rtx", "flavour": "tensorrt_rtx", "tensorrt": "1.7.1.116", "compute_capability": "8.6,8.9,12.0"}
    check_compatible(build, "1.7.1.116", DeviceInfo("RTX 3090", (8, 6), 24.0), "DIR")
    with pytest.raises(UsageError, match=r"for compute capability 8.6, 8.9, 12.0; this machine has TensorRT-RTX "
                                         r"1.7.1.116 on NVIDIA H200 \(9.0\): rebuild them .*--compute-capability 9.0"):
        check_compatible(build, "1.7.1.116", DeviceInfo("NVIDIA H200", (9, 0), 141.0), "DIR")
    with pytest.raises(UsageError, match="built with TensorRT-RTX 1.7.1.116"):
        check_compatible(build, "1.8.0", DeviceInfo("RTX 3090", (8, 6), 24.0), "DIR")


def test_missing_flavours_are_the_install_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    for flavour in (RTX, flavours.TENSORRT):
        with pytest.raises(UsageError) as info:
            flavours.load(flavour.name)
        assert str(info.value) == flavour.missing
    with pytest.raises(UsageError, match="unknown TensorRT flavour 'tensorrt_llm'"):
        flavours.load("tensorrt_llm")


def test_too_old_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))
    sys.modules["tensorrt"].__version__ = "8.6.1"
    with pytest.raises(UsageError, match=r"TensorRT 8.6.1 is too old: omnisift-edge needs TensorRT 10 or newer \(JetPack"):
        flavours.load("tensorrt")


def test_loading_points_polygraphy_at_the_flavour(monkeypatch):
    """Real Polygraphy: the variable, the config attribute and the lazy `trt` of imported modules follow."""
    pytest.importorskip("polygraphy")
    import polygraphy.backend.trt.loader as loader
    import polygraphy.config

    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setenv(flavours.POLYGRAPHY_RTX_ENV, os.environ.get(flavours.POLYGRAPHY_RTX_ENV, "0"))
    original = "tensorrt_rtx" if polygraphy.config.USE_TENSORRT_RTX else "tensorrt"
    other = "tensorrt" if original == "tensorrt_rtx" else "tensorrt_rtx"
    try:
        for name in (other, original, other):
            before = loader.trt
            with pytest.raises(UsageError):
                flavours.load(name)                                  # not importable here: configured anyway
            rtx = name == "tensorrt_rtx"
            assert os.environ[flavours.POLYGRAPHY_RTX_ENV] == ("1" if rtx else "0")
            assert polygraphy.config.USE_TENSORRT_RTX is rtx and loader.trt is not before
        before = loader.trt
        flavours.configure_polygraphy(other)                         # already this flavour: nothing re-bound
        assert loader.trt is before
    finally:
        flavours.configure_polygraphy(original)                      # leave Polygraphy as the session had it


def test_no_gpu_noise_is_muted_and_nothing_else(capsys):
    pytest.importorskip("polygraphy")
    from polygraphy.logger import G_LOGGER

    method = G_LOGGER.error
    with flavours.quiet_no_gpu_errors():
        G_LOGGER.error("Error Code 1: Cuda Runtime (cudaError 35: CUDA driver version is insufficient for CUDA runtime)")
        G_LOGGER.error("Error Code 4: parser could not import node /v_proj")
    G_LOGGER.error("after: CUDA driver version is insufficient")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "parser could not import node" in text and "after: CUDA driver" in text
    assert "cudaError 35" not in text and G_LOGGER.error == method
