"""TensorRT flavours: full TensorRT (10.x/11.x) and TensorRT-RTX, one loader for both.

Every target names its flavour (presets.py). The two share the builder API and the ONNX parser
and are driven through the same Polygraphy loaders; they differ in what they are and where they run:

| flavour | module | builds on | engines run on | precision |
|---|---|---|---|---|
| `tensorrt` | `tensorrt` (JetPack's python3-libnvinfer, NVIDIA's wheels) | the target GPU itself | that GPU model | strongly typed, or FP16/BF16 flags (10.x) |
| `tensorrt_rtx` | `tensorrt_rtx` (`pip install tensorrt-rtx-cu12`) | any x86-64 machine, GPU or not (ahead of time) | the compute capabilities named at build time | strongly typed only |

`load(name)` imports the flavour's module and points Polygraphy at it. Polygraphy picks its
TensorRT module from `polygraphy.config.USE_TENSORRT_RTX` (read from the environment variable
`POLYGRAPHY_USE_TENSORRT_RTX` when `polygraphy.config` is first imported), and each of its
modules that talks to TensorRT binds a lazy `trt` module when it is imported. So `load` sets the
variable (for Polygraphy's own subprocesses too), sets the config attribute, and rebinds the lazy
`trt` of every Polygraphy module already imported: one process may build for both flavours in turn
(the tests do), but an engine object of one flavour cannot be used after switching to the other.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass

from omnisift_edge.errors import UsageError

CC = tuple[int, int]
POLYGRAPHY_RTX_ENV = "POLYGRAPHY_USE_TENSORRT_RTX"


@dataclass(frozen=True)
class Flavour:
    name: str                               # "tensorrt" | "tensorrt_rtx"
    title: str                              # for messages: "TensorRT", "TensorRT-RTX"
    module: str                             # the Python module it imports as
    distributions: tuple[str, ...]          # pip distributions that install it (version without importing)
    missing: str                            # one line: how to install it
    min_major: int                          # oldest major version omnisift-edge builds with
    strongly_typed_only: bool               # no FP16/BF16 builder flags: an fp16 engine needs an fp16 graph
    builds_without_gpu: bool                # ahead-of-time build: no GPU needed to build
    compute_capabilities: tuple[CC, ...]    # what it can compile for when named (empty: the build GPU only)
    default_compute_capabilities: tuple[CC, ...] = ()

    def supports(self, cc: CC) -> bool:
        return cc in self.compute_capabilities


TENSORRT = Flavour(
    "tensorrt", "TensorRT", "tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"),
    "TensorRT is not installed: on Jetson install JetPack's python3-libnvinfer "
    "(sudo apt install python3-libnvinfer), elsewhere pip install tensorrt (NVIDIA's wheels)",
    min_major=10, strongly_typed_only=False, builds_without_gpu=False, compute_capabilities=())

# TensorRT-RTX 1.7's ComputeCapability enum also has SM75 (Turing), but its builder refuses fp32
# GEMMs for Turing ("FP32 GEMM is not supported", checked 2026-12-02), so 7.5 is not offered.
TENSORRT_RTX = Flavour(
    "tensorrt_rtx", "TensorRT-RTX", "tensorrt_rtx", ("tensorrt-rtx-cu12", "tensorrt-rtx-cu13", "tensorrt-rtx"),
    "TensorRT-RTX is not installed: pip install 'omnisift-edge[rtx]' (or pip install tensorrt-rtx-cu12)",
    min_major=1, strongly_typed_only=True, builds_without_gpu=True,
    compute_capabilities=((8, 0), (8, 6), (8, 9), (12, 0), (12, 1)),
    default_compute_capabilities=((8, 6), (8, 9), (12, 0)))

FLAVOURS: dict[str, Flavour] = {f.name: f for f in (TENSORRT, TENSORRT_RTX)}


def get_flavour(name: str) -> Flavour:
    if name not in FLAVOURS:
        raise UsageError(f"unknown TensorRT flavour {name!r}; one of {', '.join(FLAVOURS)}")
    return FLAVOURS[name]


def format_cc(cc: CC) -> str:
    return f"{cc[0]}.{cc[1]}"


def parse_compute_capabilities(value, flavour: Flavour) -> tuple[CC, ...]:
    """'8.6,8.9,12.0' (or a sequence of '8.6' / (8, 6)) -> ((8, 6), ...), checked against what `flavour` compiles for."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    offered = ", ".join(map(format_cc, flavour.compute_capabilities))
    if not flavour.compute_capabilities:
        raise UsageError(f"--compute-capability applies to TensorRT-RTX targets (--target rtx) only; a {flavour.title} "
                         "engine runs on the GPU model it is built on: build on that GPU")
    ccs = []
    for item in items:
        try:
            cc = tuple(int(x) for x in (item.split(".") if isinstance(item, str) else item))
        except (TypeError, ValueError):
            cc = ()
        if len(cc) != 2:
            raise UsageError(f"--compute-capability takes major.minor numbers such as 8.6,8.9,12.0 (got {item!r})")
        if not flavour.supports(cc):
            hint = (" (Hopper: use --target h100, full TensorRT)" if cc == (9, 0) else
                    " (Jetson Orin: use --target orin-nano/orin-nx/orin-agx, full TensorRT)" if cc == (8, 7) else "")
            raise UsageError(f"{flavour.title} cannot compile for compute capability {format_cc(cc)}{hint}; "
                             f"choose from {offered}")
        if cc not in ccs:
            ccs.append(cc)
    if not ccs:
        raise UsageError(f"--compute-capability needs at least one of {offered}")
    return tuple(ccs)


def installed_version(name: str) -> str | None:
    """The flavour's installed version from package metadata, without importing it (cheap; for plans and doctor)."""
    from importlib import metadata

    for dist in get_flavour(name).distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def configure_polygraphy(name: str) -> None:
    """Point Polygraphy's TensorRT backend at flavour `name` (see the module docstring for why all three steps)."""
    rtx = name == TENSORRT_RTX.name
    os.environ[POLYGRAPHY_RTX_ENV] = "1" if rtx else "0"
    config = sys.modules.get("polygraphy.config")
    if config is None or bool(config.USE_TENSORRT_RTX) == rtx:
        return   # not imported yet (it reads the variable on import), or already this flavour
    config.USE_TENSORRT_RTX = rtx
    from polygraphy.mod.trt_importer import lazy_import_trt

    for module_name, module in list(sys.modules.items()):
        lazy = getattr(module, "trt", None) if module_name.startswith("polygraphy.") else None
        if lazy is not None and type(lazy).__name__ == "LazyModule":
            module.trt = lazy_import_trt()


def load(name: str = "tensorrt"):
    """Import flavour `name`'s module and configure Polygraphy for it; a UsageError says what to install."""
    flavour = get_flavour(name)
    configure_polygraphy(name)
    try:
        module = importlib.import_module(flavour.module)
    except ImportError:
        raise UsageError(flavour.missing) from None
    except Exception as exc:   # a wheel that imports but cannot load its libraries (the PyPI stubs)
        raise UsageError(f"{flavour.missing} (import {flavour.module} failed: {exc})") from None
    version = str(getattr(module, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < flavour.min_major:
        raise UsageError(f"{flavour.title} {version} is too old: omnisift-edge needs {flavour.title} "
                         f"{flavour.min_major} or newer" + (" (JetPack 6 ships 10.3)" if flavour is TENSORRT else ""))
    return module


def installed_compute_capabilities(module) -> tuple[CC, ...]:
    """What the imported TensorRT-RTX module's ComputeCapability enum names (SM86 -> (8, 6))."""
    found = []
    for member in getattr(getattr(module, "ComputeCapability", None), "__members__", {}):
        digits = member[2:] if member.startswith("SM") else ""
        if digits.isdigit() and len(digits) >= 2:
            found.append((int(digits[:-1]), int(digits[-1])))
    return tuple(found)


def engine_validity(module, data: bytes) -> dict:
    """What the runtime can say about a serialized engine without running it.

    TensorRT-RTX (and TensorRT >= 10.x builds that have it) offers `IRuntime.getEngineValidity`: it
    reads the engine header and checks it against this machine. Without a GPU it answers INVALID
    with no diagnostics (it cannot read the GPU's properties), but a damaged header still reports
    MALFORMED_ENGINE (checked on TensorRT-RTX 1.7, 2026-12-02: flipping the magic bytes does; flipping
    other header bytes does not, so a version mismatch is only seen with a GPU). `header_ok` is
    what a CPU-only build can check; the verdict is kept for the report.
    """
    from polygraphy.logger import G_LOGGER

    class Quiet(module.ILogger):   # without a GPU the check logs CUDA errors: expected here, not the user's problem
        def __init__(self):
            module.ILogger.__init__(self)

        def log(self, severity, msg):
            pass

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):   # TensorRT logs through the first logger registered: Polygraphy's
        runtime = module.Runtime(Quiet())
        if not hasattr(runtime, "get_engine_validity"):
            return {"checked": False, "why": f"the {getattr(module, '__version__', '')} runtime has no get_engine_validity"}
        validity, diagnostics = runtime.get_engine_validity(data)
    flags = module.EngineInvalidityDiagnostics
    named = [n for n, member in flags.__members__.items() if int(diagnostics) & int(member)]
    return {"checked": True, "validity": validity.name, "diagnostics": named,
            "header_ok": not {"MALFORMED_ENGINE", "VERSION_MISMATCH"} & set(named)}


# what TensorRT-RTX logs, as errors, when it builds on a machine with no usable CUDA driver
NO_GPU_NOISE = ("CUDA driver version is insufficient", "Error reading CUDA GPU properties")


@contextlib.contextmanager
def quiet_no_gpu_errors():
    """Drop the CUDA-driver errors TensorRT-RTX logs while building without a GPU; every other message stays.

    Polygraphy's TensorRT logger looks `G_LOGGER.error` up on each message, so a filtering wrapper
    on the instance, removed afterwards, sees exactly the builder's messages. Use only where no
    GPU was found: with a GPU the same words mean a real driver problem.
    """
    from polygraphy.logger import G_LOGGER

    original = G_LOGGER.error

    def error(message, *args, **kwargs):
        if not any(noise in str(message) for noise in NO_GPU_NOISE):
            original(message, *args, **kwargs)

    G_LOGGER.error = error
    try:
        yield
    finally:
        del G_LOGGER.error   # the instance attribute; the class's method is back
