"""Where TensorRT runs: the TensorRT module, the CUDA device, and whether built engines fit them.

Shared by the engines stage (which builds) and the runtime's TensorRT backend (which runs), so the
runtime never reaches into the engines stage. Device detection uses the CUDA runtime through
Polygraphy's ctypes wrapper (no torch, no cuda-python); nothing heavy is imported at module import.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.trt_flavour import TENSORRT, get_flavour, load


@dataclass(frozen=True)
class DeviceInfo:
    """What the CUDA runtime says about device 0 (and, on a Jetson, the board's model string)."""

    name: str
    compute_capability: tuple[int, int]
    memory_gb: float
    board: str = ""               # /proc/device-tree/model on Jetson, else ""

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


# ------------------------------------------------------------------------------------------ detection

_CC_MAJOR, _CC_MINOR = 75, 76          # cudaDevAttrComputeCapabilityMajor / Minor (stable since CUDA 5)
_CUDART_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


def _cudart():
    """The CUDA runtime library via ctypes: Polygraphy's wrapper (it searches CUDA and pip paths) or the loader's."""
    try:
        from polygraphy import cuda
        from polygraphy.logger import G_LOGGER

        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
            return cuda.wrapper().handle
    except Exception:   # polygraphy missing, or no libcudart where it looked
        pass
    for name in _CUDART_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def detect_device(index: int = 0) -> DeviceInfo | None:
    """Device `index` as the CUDA runtime reports it, or None without a CUDA runtime or GPU."""
    lib = _cudart()
    if lib is None:
        return None
    count = ctypes.c_int(0)
    if lib.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value <= index:
        return None
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cudaDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, index)
    lib.cudaDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, index)
    props = ctypes.create_string_buffer(8192)   # cudaDeviceProp: `char name[256]` first in every CUDA version
    name = "CUDA device"
    get_props = getattr(lib, "cudaGetDeviceProperties_v2", None) or getattr(lib, "cudaGetDeviceProperties", None)
    if get_props is not None and get_props(props, index) == 0:
        name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace") or name
    lib.cudaSetDevice(index)
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    memory_gb = total.value / 2**30 if lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0 else 0.0
    return DeviceInfo(name, (major.value, minor.value), memory_gb, _jetson_board())


def _jetson_board() -> str:
    path = Path("/proc/device-tree/model")
    try:
        return path.read_bytes().rstrip(b"\0").decode(errors="replace") if path.exists() else ""
    except OSError:
        return ""


TENSORRT_MISSING = TENSORRT.missing


def require_tensorrt(flavour: str = "tensorrt"):
    """The flavour's module (`tensorrt` >= 10, `tensorrt_rtx` >= 1) with Polygraphy pointed at it, or the
    UsageError that says how to install it."""
    return load(flavour)


def require_device() -> DeviceInfo:
    device = detect_device()
    if device is None:
        raise UsageError("no CUDA GPU found (the CUDA runtime reports none); TensorRT engines are built and run "
                         "on the GPU they are for")
    return device


def require_device_for(build: dict) -> DeviceInfo:
    """The GPU that runs a build's engines (the manifest's `builds.<target>`, artifact.records.Build), or one line saying what is missing."""
    flavour = get_flavour(build.get("flavour", TENSORRT.name))
    if not flavour.builds_without_gpu:
        return require_device()
    device = detect_device()
    if device is None:
        raise UsageError(f"no CUDA GPU found: the {build.get('target')} engines ({flavour.title}) were built ahead of "
                         f"time and run on an RTX-class GPU of compute capability {build.get('compute_capability')}; "
                         "run this on such a machine (building needed no GPU, running does)")
    return device


def check_compatible(build: dict, tensorrt: str, device, folder: Path) -> None:
    """Engines run only on the TensorRT version and GPU model they were built with: one line if not.

    A TensorRT-RTX build lists the compute capabilities it was compiled for ("8.6,8.9,12.0")."""
    if build.get("flavour") == "tensorrt_rtx":
        ccs = str(build.get("compute_capability", "")).split(",")
        if build.get("tensorrt") != tensorrt or device.cc not in ccs:
            raise UsageError(f"the {build.get('target')} engines in {folder} were built with TensorRT-RTX "
                             f"{build.get('tensorrt')} for compute capability {', '.join(ccs)}; this machine has "
                             f"TensorRT-RTX {tensorrt} on {device.name} ({device.cc}): rebuild them with omnisift-edge "
                             f"build {folder} --target {build.get('target')} --compute-capability {device.cc} "
                             "(TensorRT-RTX runs on RTX-class GPUs, not Hopper or Jetson)")
        return
    if build.get("tensorrt") != tensorrt or build.get("compute_capability") != device.cc:
        raise UsageError(f"the {build.get('target')} engines in {folder} were built with TensorRT {build.get('tensorrt')} "
                         f"on {build.get('device')} (compute capability {build.get('compute_capability')}); this machine "
                         f"has TensorRT {tensorrt} on {device.name} ({device.cc}): rebuild them here with "
                         f"omnisift-edge build {folder} --target auto")
