"""`selftest(SelfTestConfig) -> SelfTestResult`: export the embedded default small, record ONNX
Runtime references, build engines, verify them.

One command that says whether this machine can build and run correct engines. Where TensorRT, a
GPU or the export stack (torch, ONNX Runtime, Optimum) is missing it runs nothing and says why.
It composes three stages (export, engines' build and verify), so it sits above them, beside the CLI.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omnisift_edge.errors import UsageError

RESOLUTION = (112, 84)          # 8 x 6 patches per frame: a few seconds per engine
RATIOS = (1.0, 0.25)
MAX_CONTEXT = 1024


@dataclass(frozen=True)
class SelfTestConfig:
    workdir: Path | None = None      # where the temporary export goes (default: the system's temp folder)
    precision: str | None = None     # None: fp16 for auto, the export's dtype for rtx
    keep: bool = False               # keep the export and engines (SelfTestResult.folder)
    target: str = "auto"             # auto (full TensorRT on this GPU) | rtx (TensorRT-RTX)

    def __post_init__(self):
        if self.precision not in (None, "fp16", "bf16", "fp32"):
            raise UsageError(f"--precision must be fp16, bf16 or fp32 (got {self.precision!r})")
        if self.target not in ("auto", "rtx"):
            raise UsageError(f"selftest --target must be auto or rtx (got {self.target!r})")


@dataclass
class SelfTestResult:
    ran: bool
    ok: bool
    reason: str = ""                       # why it did not run, or what failed
    folder: Path | None = None             # kept only with keep=True
    seconds: float = 0.0
    steps: dict = field(default_factory=dict)
    report: object = None                  # the VerifyReport

    def summary(self) -> str:
        if not self.ran:
            return f"selftest cannot run here: {self.reason}"
        lines = [f"selftest {'passed' if self.ok else 'FAILED'} in {self.seconds:.0f} s"
                 + (f": {self.reason}" if self.reason else "")]
        lines += [f"  {step}: {value}" for step, value in self.steps.items()]
        if self.report is not None:
            lines.append(self.report.summary())
        return "\n".join(lines)


def missing_requirements(target: str = "auto") -> list[str]:
    """What this machine lacks for the self-test of `target`'s flavour (empty when it can run)."""
    import importlib

    from omnisift_edge.engines.plan import target_flavour
    from omnisift_edge.runtime.trt_env import detect_device, require_tensorrt

    missing = []
    try:
        require_tensorrt(target_flavour(target))
    except UsageError as exc:
        missing.append(str(exc))
    for module, extra in (("polygraphy", "engines"), ("torch", "model"), ("onnxruntime", "export"),
                          ("optimum", "export"), ("onnx", "export")):
        try:
            importlib.import_module(module)
        except Exception:
            missing.append(f"{module} is not installed (pip install 'omnisift-edge[{extra}]')")
    if detect_device() is None:
        missing.append("no CUDA GPU found" + (" (TensorRT-RTX builds without one; running the engines needs an RTX-class "
                                              "GPU: try omnisift-edge build DIR --target rtx)"
                                              if target_flavour(target) == "tensorrt_rtx" else ""))
    return missing


def selftest(cfg: SelfTestConfig = SelfTestConfig(),
             progress: Callable[[str], None] = print) -> SelfTestResult:
    """Export (112x84, ratios 1 and 0.25) -> record_reference -> build_engines(target) -> verify_engines.

    Target auto builds with full TensorRT on this GPU (fp16 by default); rtx with TensorRT-RTX
    (strongly typed: the fp32 export at fp32)."""
    target = cfg.target
    missing = missing_requirements(target)
    if missing:
        return SelfTestResult(False, False, "; ".join(missing))   # the caller prints summary() once
    from omnisift_edge.engines.build import build_engines
    from omnisift_edge.engines.plan import BuildConfig
    from omnisift_edge.engines.verify import VerifyConfig, verify_engines
    from omnisift_edge.export.reference import record_reference
    from omnisift_edge.export.stage import ExportConfig, export

    workdir, precision, keep = cfg.workdir, cfg.precision, cfg.keep
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="omnisift-selftest-", dir=workdir))
    folder = root / "export"
    result = SelfTestResult(True, False, folder=folder if keep else None)
    try:
        progress(f"exporting the embedded default at {RESOLUTION[0]}x{RESOLUTION[1]} to {folder}")
        export(ExportConfig(out=folder, ratios=RATIOS, resolution=RESOLUTION, max_context=MAX_CONTEXT))
        result.steps["export"] = "ok"
        record_reference(folder, progress)
        result.steps["reference"] = "recorded in ONNX Runtime (CPU)"
        if precision is None and target == "auto":
            precision = "fp16"
        artifact = build_engines(BuildConfig(folder, target=target, precision=precision,
                                             timing_cache=root / "timing.cache"), progress)
        result.steps["build"] = (f"{len(artifact.engines)} engines for {artifact.target.name} "
                                 f"(TensorRT {artifact.report['tensorrt']}, {artifact.report['device']})")
        report = verify_engines(VerifyConfig(folder, target=artifact.target.name), progress)
        result.report, result.ok = report, report.ok
        if not report.ok:
            result.reason = "engines disagree with ONNX Runtime: " + ", ".join(
                g for g, c in report.graphs.items() if not c.ok)
    except UsageError as exc:
        result.reason = str(exc)
    finally:
        result.seconds = time.perf_counter() - started
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return result
