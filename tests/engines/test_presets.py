"""Target presets, `auto` resolution from a device description, precision and device checks."""

from __future__ import annotations

import pytest

from omnisift_edge.engines import presets
from omnisift_edge.engines.presets import PRESETS, DeviceInfo, check_device, get_target, resolve_target
from omnisift_edge.errors import UsageError


@pytest.mark.parametrize("name, cc, memory, bf16, workspace, trt", [
    ("orin-nano", (8, 7), 8, False, 1, ("10.3",)),
    ("orin-nx", (8, 7), 16, False, 2, ("10.3",)),
    ("orin-agx", (8, 7), 64, False, 4, ("10.3",)),
    ("a100", (8, 0), 80, True, 8, ("10.", "11.")),
    ("l4", (8, 9), 24, True, 4, ("10.", "11.")),
    ("h100", (9, 0), 80, True, 8, ("10.", "11.")),
])
def test_preset_values(name, cc, memory, bf16, workspace, trt):
    t = get_target(name)
    assert (t.compute_capability, t.memory_gb, t.bf16, t.workspace_gb, t.tensorrt) == (cc, memory, bf16, workspace, trt)
    assert t.jetson == name.startswith("orin")
    assert t.workspace_gb < t.memory_gb


def test_every_preset_and_auto_are_targets():
    assert set(presets.TARGETS) == {"orin-nano", "orin-nx", "orin-agx", "a100", "l4", "h100", "rtx", "auto"}
    assert len(presets.describe().splitlines()) == len(PRESETS)


@pytest.mark.parametrize("name", ["orin-nano", "orin-nx", "orin-agx"])
def test_bf16_on_orin_is_refused_with_the_fix(name):
    with pytest.raises(UsageError, match=r"no bf16 support.*use --precision fp16"):
        get_target(name).check_precision("bf16")
    get_target(name).check_precision("fp16")
    get_target(name).check_precision("fp32")


def test_bf16_on_datacenter_cards_is_fine_and_unknown_precision_is_not():
    for name in ("a100", "l4", "h100"):
        get_target(name).check_precision("bf16")
    with pytest.raises(UsageError, match="--precision must be one of fp16, bf16, fp32"):
        get_target("h100").check_precision("int8")


def test_unknown_target_names_every_choice():
    with pytest.raises(UsageError) as info:
        get_target("xavier")
    message = str(info.value)
    assert "unknown --target 'xavier'" in message
    assert all(name in message for name in presets.TARGETS)
    assert "\n" not in message


def test_tensorrt_version_families():
    assert get_target("orin-agx").expects_tensorrt("10.3.0.30")
    assert not get_target("orin-agx").expects_tensorrt("10.7.0")
    assert not get_target("orin-agx").expects_tensorrt("10.30.1")
    assert get_target("h100").expects_tensorrt("10.7.0") and get_target("h100").expects_tensorrt("11.1.0")
    assert not get_target("h100").expects_tensorrt("9.3.0")


@pytest.mark.parametrize("device, want", [
    (DeviceInfo("Orin", (8, 7), 7.4, "NVIDIA Jetson Orin Nano Developer Kit"), "orin-nano"),
    (DeviceInfo("Orin", (8, 7), 15.3, "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"), "orin-nx"),
    (DeviceInfo("Orin", (8, 7), 61.4, "NVIDIA Jetson AGX Orin Developer Kit"), "orin-agx"),
    (DeviceInfo("Orin", (8, 7), 7.4), "orin-nano"),        # no board string: by memory
    (DeviceInfo("Orin", (8, 7), 30.0), "orin-agx"),
    (DeviceInfo("NVIDIA A100-SXM4-80GB", (8, 0), 79.2), "a100"),
    (DeviceInfo("NVIDIA L4", (8, 9), 22.0), "l4"),
    (DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0), 79.1), "h100"),
    (DeviceInfo("NVIDIA H200", (9, 0), 139.8), "h100"),
    (DeviceInfo("NVIDIA GeForce RTX 4090", (8, 9), 23.6), "sm_89"),   # same sm as L4, not an L4
    (DeviceInfo("Tesla T4", (7, 5), 14.6), "sm_75"),
])
def test_auto_resolves_the_device(device, want):
    target = resolve_target("auto", device)
    assert target.name == want
    assert target.compute_capability == device.compute_capability
    assert target.memory_gb == round(device.memory_gb, 1)       # measured, not nominal
    assert target.bf16 == (device.compute_capability >= (8, 0) and device.compute_capability != (8, 7))


def test_auto_without_a_gpu_asks_for_a_name(monkeypatch):
    monkeypatch.setattr(presets, "detect_device", lambda index=0: None)
    with pytest.raises(UsageError, match="--target auto needs a CUDA GPU.*name the target"):
        resolve_target("auto")


def test_named_target_on_another_gpu_is_one_clear_line():
    with pytest.raises(UsageError) as info:
        check_device(get_target("orin-agx"), DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0), 79.1))
    message = str(info.value)
    assert "compute capability 8.7" in message and "is 9.0" in message and "\n" not in message
    check_device(get_target("h100"), DeviceInfo("NVIDIA H200", (9, 0), 139.8))


def test_detect_device_is_none_or_a_device():
    """Here (no GPU) it must not raise; on a GPU machine it reports a real compute capability."""
    device = presets.detect_device()
    assert device is None or (device.compute_capability[0] >= 5 and device.memory_gb > 0)
