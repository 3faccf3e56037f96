"""Target presets: the GPUs engines are built for, and `auto` (the GPU this process sees).

A TensorRT engine runs only on the GPU model (compute capability) and TensorRT version it was
built with, so a preset names what the build machine must be, not a cross-compile target. The
numbers are nominal (the largest common configuration); `auto` measures the real device.
Detection uses the CUDA runtime through Polygraphy's ctypes wrapper (no torch, no cuda-python).

Each target names its flavour (flavour.py): the Jetson and datacenter presets are full TensorRT;
`rtx` is TensorRT-RTX, built ahead of time on any machine for a list of compute capabilities
(default 8.6, 8.9, 12.0: RTX 30/40/50 series and RTX PRO cards).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from omnisift_edge.runtime.trt_flavour import CC, TENSORRT_RTX, format_cc, get_flavour
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.trt_env import DeviceInfo, detect_device

PRECISIONS = ("fp16", "bf16", "fp32")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    compute_capability: tuple[int, int]
    memory_gb: float              # device memory (unified with the CPU on Jetson)
    bf16: bool                    # TensorRT bf16 kernels on this GPU
    workspace_gb: float           # default builder workspace (IBuilderConfig memory pool limit)
    tensorrt: tuple[str, ...]     # TensorRT version prefixes expected here ("10.3" = JetPack 6)
    jetson: bool = False
    flavour: str = "tensorrt"     # flavour.FLAVOURS: tensorrt | tensorrt_rtx
    compute_capabilities: tuple[CC, ...] = ()   # tensorrt_rtx: what the engines are compiled for

    @property
    def figures(self):
        """Bandwidth, math rates and their source (engines/hardware.py), or None for a detected GPU without a preset."""
        from omnisift_edge.engines.hardware import FIGURES

        return FIGURES.get(self.name)

    @property
    def sm(self) -> str:
        return ",".join(f"sm_{a}{b}" for a, b in self.runs_on)

    @property
    def runs_on(self) -> tuple[CC, ...]:
        """The compute capabilities this target's engines run on."""
        return self.compute_capabilities or (self.compute_capability,)

    def expects_tensorrt(self, version: str) -> bool:
        return any(version == p or version.startswith(p if p.endswith(".") else p + ".") for p in self.tensorrt)

    def check_precision(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
        if precision == "bf16" and not self.bf16:
            raise UsageError(f"{self.name} ({self.sm}) has no bf16 support in TensorRT; "
                             "use --precision fp16 (or fp32)")


_ORIN = dict(compute_capability=(8, 7), bf16=False, tensorrt=("10.3",), jetson=True)
_DATACENTER = dict(bf16=True, tensorrt=("10.", "11."))

PRESETS: dict[str, Target] = {t.name: t for t in (
    Target("orin-nano", "Jetson Orin Nano 8 GB (JetPack 6)", memory_gb=8, workspace_gb=1, **_ORIN),
    Target("orin-nx", "Jetson Orin NX 16 GB (JetPack 6)", memory_gb=16, workspace_gb=2, **_ORIN),
    Target("orin-agx", "Jetson AGX Orin 64 GB (JetPack 6)", memory_gb=64, workspace_gb=4, **_ORIN),
    Target("a100", "NVIDIA A100 80 GB", compute_capability=(8, 0), memory_gb=80, workspace_gb=8, **_DATACENTER),
    Target("l4", "NVIDIA L4 24 GB", compute_capability=(8, 9), memory_gb=24, workspace_gb=4, **_DATACENTER),
    Target("h100", "NVIDIA H100 80 GB (also H200, same sm_90)", compute_capability=(9, 0), memory_gb=80,
           workspace_gb=8, **_DATACENTER),
    # nominal memory: the smallest common RTX card; the build needs no GPU (ahead of time, on the CPU)
    Target("rtx", "RTX GPUs through TensorRT-RTX (RTX 30/40/50, RTX PRO; built ahead of time, any machine)",
           compute_capability=TENSORRT_RTX.default_compute_capabilities[0], memory_gb=8, bf16=True, workspace_gb=2,
           tensorrt=("1.",), flavour=TENSORRT_RTX.name, compute_capabilities=TENSORRT_RTX.default_compute_capabilities),
)}
TARGETS = (*PRESETS, "auto")


def get_target(name: str) -> Target:
    """A named preset (not `auto`)."""
    if name not in PRESETS:
        raise UsageError(f"unknown --target {name!r}; choose one of {', '.join(TARGETS)}")
    return PRESETS[name]


def resolve_target(name: str, device: DeviceInfo | None = None) -> Target:
    """The preset `name`, or for `auto` the preset matching `device` (a generic `sm_XY` target when none does)."""
    if name != "auto":
        return get_target(name)
    if device is None:
        device = detect_device()
    if device is None:
        raise UsageError("--target auto needs a CUDA GPU to detect and none was found; "
                         f"name the target instead (one of {', '.join(PRESETS)})")
    return target_for_device(device)


def target_for_device(device: DeviceInfo) -> Target:
    cc = device.compute_capability
    if cc == (8, 7):   # Orin: tell the modules apart by the board string, else by memory
        board = device.board.lower()
        name = ("orin-nano" if "nano" in board else "orin-nx" if "nx" in board else "orin-agx" if "agx" in board
                else "orin-nano" if device.memory_gb <= 8.5 else "orin-nx" if device.memory_gb <= 16.5 else "orin-agx")
        return replace(PRESETS[name], memory_gb=round(device.memory_gb, 1))
    for preset in PRESETS.values():
        if not preset.jetson and preset.compute_capability == cc and _same_family(preset.name, device.name):
            return replace(preset, memory_gb=round(device.memory_gb, 1))
    generic = Target(f"sm_{cc[0]}{cc[1]}", f"{device.name} (no preset; detected)", cc, round(device.memory_gb, 1),
                     bf16=cc >= (8, 0), workspace_gb=max(1.0, min(8.0, round(device.memory_gb / 8))),
                     tensorrt=("10.", "11."))
    return generic


def _same_family(preset: str, device_name: str) -> bool:
    name = device_name.upper()
    return {"a100": "A100" in name or "A800" in name, "l4": bool(re.search(r"\bL4\b", name)),
            "h100": any(k in name for k in ("H100", "H200", "H800", "GH200"))}.get(preset, False)


def check_device(target: Target, device: DeviceInfo) -> None:
    """Refuse building or running `target`'s engines on a GPU of another compute capability."""
    if target.compute_capabilities:   # TensorRT-RTX: compiled for a list, built anywhere
        if device.compute_capability not in target.compute_capabilities:
            raise UsageError(f"the {target.name} engines are compiled for compute capability "
                             f"{', '.join(map(format_cc, target.compute_capabilities))} but this GPU ({device.name}) is "
                             f"{device.cc}; rebuild with --compute-capability {device.cc} (TensorRT-RTX compiles for "
                             f"{', '.join(map(format_cc, get_flavour(target.flavour).compute_capabilities))})")
        return
    if device.compute_capability != target.compute_capability:
        want = f"{target.compute_capability[0]}.{target.compute_capability[1]}"
        raise UsageError(f"--target {target.name} is compute capability {want} but this GPU ({device.name}) is "
                         f"{device.cc}; TensorRT engines only run on the GPU model they were built on: build on the "
                         "target itself, or use --target auto")


def describe() -> str:
    """One line per preset, for --help texts and docs."""
    return "\n".join(f"{t.name:10} {t.sm}  {t.memory_gb:g} GB  bf16 {'yes' if t.bf16 else 'no '}  "
                     f"workspace {t.workspace_gb:g} GB  {get_flavour(t.flavour).title} "
                     f"{'/'.join(p.rstrip('.') + ('.x' if p.endswith('.') else '') for p in t.tensorrt)}"
                     f"  {t.description}" for t in PRESETS.values())
