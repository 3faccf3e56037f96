"""`selftest()`: export the embedded default small, record ONNX Runtime references, build, verify.

One command that says whether this machine can build and run correct engines. Where TensorRT, a
GPU or the export stack (torch, ONNX Runtime, Optimum) is missing it runs nothing and says why.
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


def missing_requirements() -> list[str]:
    """What this machine lacks for the self-test (empty when it can run)."""
    import importlib

    from omnisift_edge.engines.build import require_tensorrt
    from omnisift_edge.engines.presets import detect_device

    missing = []
    try:
        require_tensorrt()
    except UsageError as exc:
        missing.append(str(exc))
    for module, extra in (("polygraphy", "engines"), ("torch", "model"), ("onnxruntime", "export"),
                          ("optimum", "export"), ("onnx", "export")):
        try:
            importlib.import_module(module)
        except Exception:
            missing.append(f"{module} is not installed (pip install 'omnisift-edge[{extra}]')")
    if detect_device() is None:
        missing.append("no CUDA GPU found")
    return missing


def selftest(workdir: Path | None = None, *, precision: str = "fp16", keep: bool = False,
             progress: Callable[[str], None] = print) -> SelfTestResult:
    """Export (112x84, ratios 1 and 0.25) -> record_reference -> build_engines(auto) -> verify_engines."""
    missing = missing_requirements()
    if missing:
        return SelfTestResult(False, False, "; ".join(missing))   # the caller prints summary() once
    from omnisift_edge.engines.build import build_engines
    from omnisift_edge.engines.plan import BuildConfig
    from omnisift_edge.engines.verify import VerifyConfig, record_reference, verify_engines
    from omnisift_edge.export.stage import ExportConfig, export

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
        artifact = build_engines(BuildConfig(folder, target="auto", precision=precision,
                                             timing_cache=root / "timing.cache"), progress)
        result.steps["build"] = (f"{len(artifact.engines)} engines for {artifact.target.name} "
                                 f"(TensorRT {artifact.report['tensorrt']}, {artifact.report['device']})")
        report = verify_engines(VerifyConfig(folder), progress)
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
