"""`omnisift-edge doctor`: what this machine has, and which commands it can run.

Only version probes: nothing heavy is imported unless it is installed, and a missing or broken
library is reported, never raised.
"""

from __future__ import annotations

import importlib
import platform
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    name: str
    found: bool
    detail: str


# command -> the probes it needs (names as in `probe_all`)
NEEDS: dict[str, tuple[str, ...]] = {
    "demo": ("torch", "transformers", "tokenizers", "safetensors"),
    "demo --video FILE": ("torch", "transformers", "av", "PIL"),
    "export": ("torch", "transformers", "safetensors", "onnx", "onnxruntime", "optimum"),
    "lint": ("onnx",),
    "run": ("onnxruntime", "tokenizers", "transformers", "av", "PIL"),
    "run --backend torch": ("torch", "transformers", "tokenizers", "safetensors", "av", "PIL"),
    "profile": ("onnxruntime", "tokenizers", "transformers", "tqdm", "matplotlib"),
    "build / verify": ("tensorrt", "polygraphy"),
    "build --target rtx": ("tensorrt_rtx", "polygraphy"),
    "tiny-model": ("torch", "transformers", "safetensors"),
    "train": ("torch", "transformers", "safetensors", "av", "PIL"),
    "train --llm lora": ("torch", "transformers", "av", "peft"),
}


def _version(module_name: str) -> Probe:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a broken install must not break doctor
        reason = "not installed" if isinstance(exc, ModuleNotFoundError) else f"broken: {exc}"
        return Probe(module_name, False, reason)
    return Probe(module_name, True, str(getattr(module, "__version__", "installed")))


def _torch_cuda() -> Probe:
    try:
        import torch
    except Exception:
        return Probe("cuda (torch)", False, "torch not installed")
    if not torch.cuda.is_available():
        return Probe("cuda (torch)", False, f"no CUDA device (torch {torch.__version__}, "
                                            f"built for CUDA {torch.version.cuda})")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Probe("cuda (torch)", True, f"{names}; CUDA {torch.version.cuda}")


def _ort_providers() -> Probe:
    try:
        import onnxruntime
    except Exception:
        return Probe("onnxruntime providers", False, "onnxruntime not installed")
    return Probe("onnxruntime providers", True, ", ".join(onnxruntime.get_available_providers()))


def probe_all() -> list[Probe]:
    probes = [Probe("python", True, f"{platform.python_version()} ({platform.machine()}, {sys.platform})")]
    for name in ("numpy", "click", "torch", "transformers", "tokenizers", "safetensors", "av", "PIL", "tqdm",
                 "onnx", "onnxruntime", "optimum", "matplotlib", "polygraphy", "tensorrt", "tensorrt_rtx", "peft"):
        probes.append(_version(name))
    probes.append(_torch_cuda())
    probes.append(_ort_providers())
    return probes


def targets() -> list[str]:
    """One line per build target: its flavour and the version installed (package metadata, nothing imported)."""
    from omnisift_edge.runtime.trt_flavour import get_flavour, installed_version
    from omnisift_edge.engines.presets import PRESETS

    lines = []
    for flavour in dict.fromkeys(t.flavour for t in PRESETS.values()):
        version = installed_version(flavour)
        names = ", ".join(n for n, t in PRESETS.items() if t.flavour == flavour) + (", auto" if flavour == "tensorrt" else "")
        fl = get_flavour(flavour)
        where = (f"; builds without a GPU, engines run on compute capability "
                 f"{', '.join(f'{a}.{b}' for a, b in fl.default_compute_capabilities)} by default"
                 if fl.builds_without_gpu else "; builds on the target GPU")
        lines.append(f"  {'ok ' if version else '-- '}{names}: {flavour} "
                     f"{version or '(not installed: ' + fl.missing.split(': ', 1)[-1] + ')'}{where}")
    return lines


# modules no extra installs (they come with the platform), and how to get them
OUTSIDE_EXTRAS = {"tensorrt": "no extra installs TensorRT: on Jetson sudo apt install python3-libnvinfer (JetPack), "
                               "elsewhere pip install tensorrt"}


def _install_hint(missing: list[str], extra: str) -> str:
    """How to install what `missing` lists: the extra for what it holds, the platform's way for the rest."""
    hints = [OUTSIDE_EXTRAS[m] for m in missing if m in OUTSIDE_EXTRAS]
    if any(m not in OUTSIDE_EXTRAS for m in missing):
        hints.append(f"pip install 'omnisift-edge[{extra}]'")
    return "; ".join(hints)


def report() -> str:
    probes = probe_all()
    found = {p.name for p in probes if p.found}
    width = max(len(p.name) for p in probes)
    lines = ["what this machine has:"]
    lines += [f"  {'ok ' if p.found else '-- '}{p.name:<{width}}  {p.detail}" for p in probes]
    lines.append("build targets (flavour, version):")
    lines += targets()
    lines.append("what each command needs:")
    for command, needs in NEEDS.items():
        missing = [n for n in needs if n not in found]
        extra = {"export": "export", "lint": "export", "run": "export", "profile": "profile",
                 "build / verify": "engines", "build --target rtx": "rtx",
                 "train --llm lora": "train"}.get(command, "model")
        status = "ready" if not missing else "missing " + ", ".join(missing) + f" ({_install_hint(missing, extra)})"
        lines.append(f"  omnisift-edge {command:<20} {status}")
    return "\n".join(lines)
