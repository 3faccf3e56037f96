"""Engines against ONNX Runtime, across two machines.

On the export machine (torch + ONNX Runtime), the export stage's `record_reference(folder)`
(omnisift_edge.export.reference) runs every graph in ONNX Runtime on generated inputs and saves
inputs and outputs as `reference/<graph>.npz`, recorded in the manifest with checksums. On the
engine machine (TensorRT, no torch, no ONNX Runtime; numpy and Polygraphy only),
`verify_engines(VerifyConfig)` feeds the recorded inputs to each engine through Polygraphy's
TrtRunner + Comparator and compares with the recorded outputs: kept indices and positions must be
identical, floats within the tolerances below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from omnisift_edge.artifact.folder import choose_build
from omnisift_edge.artifact.manifest import REFERENCE_DIR
from omnisift_edge.artifact.reference import Case, load_reference
from omnisift_edge.errors import UsageError, require
from omnisift_edge.runtime.trt_env import check_compatible, require_device_for, require_tensorrt
from omnisift_edge.runtime.trt_flavour import get_flavour

# (atol as a fraction of max |reference| of that output, rtol) per engine precision; integer
# outputs (kept_index, kept_position_ids) must be identical; compressor kept_embeds are a gather of
# the inputs, so they must match to 1e-6. Stated, not yet measured on a GPU (docs/engines.md).
TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (2e-2, 5e-2), "bf16": (5e-2, 1e-1)}
GATHER_ATOL = 1e-6
REFERENCE_RUNNER = "onnxrt-recorded"


# ------------------------------------------------------------------------------------- verifying

@dataclass(frozen=True)
class VerifyConfig:
    folder: Path
    target: str | None = None       # which build in the manifest; default: the only one
    record: bool = False            # the reference was just recorded here (export.reference.record_reference):
                                    # no engines or no TensorRT yet are notes, not errors (export machine)

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))
        if not self.folder.is_dir():
            raise UsageError(f"{self.folder} is not a folder; pass an export folder with engines")


@dataclass(frozen=True)
class OutputCheck:
    name: str
    exact: bool          # integer outputs (and gathers) must be identical
    max_abs: float
    atol: float          # absolute (already scaled by the reference's magnitude)
    rtol: float
    ok: bool


@dataclass(frozen=True)
class GraphCheck:
    graph: str
    precision: str
    cases: tuple[str, ...]
    outputs: tuple[OutputCheck, ...]
    polygraphy_passed: bool          # Comparator.compare_accuracy with the same per-output tolerances
    tokens_equal: bool | None = None # decoder: greedy argmax of every case identical (information)

    @property
    def ok(self) -> bool:
        return self.polygraphy_passed and all(o.ok for o in self.outputs)


@dataclass
class VerifyReport:
    folder: Path
    target: str | None = None
    tensorrt: str | None = None
    device: str | None = None
    reference: Path | None = None
    graphs: dict[str, GraphCheck] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.graphs) and all(g.ok for g in self.graphs.values())

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "target": self.target, "tensorrt": self.tensorrt, "device": self.device,
                "reference": str(self.reference) if self.reference else None, "ok": self.ok, "notes": self.notes,
                "graphs": {g: asdict(c) | {"ok": c.ok} for g, c in self.graphs.items()}}

    def summary(self) -> str:
        lines = []
        if self.reference:
            lines.append(f"recorded ONNX Runtime reference in {self.reference}")
        if self.graphs:
            lines.append(f"{self.target} engines (TensorRT {self.tensorrt}, {self.device}) vs ONNX Runtime:")
        for g, c in self.graphs.items():
            worst = ", ".join(f"{o.name} {'==' if o.exact else f'{o.max_abs:.2e}/{o.atol:.1e}'}{'' if o.ok else ' FAIL'}"
                              for o in c.outputs[:4]) + (" ..." if len(c.outputs) > 4 else "")
            lines.append(f"  {'ok  ' if c.ok else 'FAIL'} {g} ({c.precision}, {len(c.cases)} cases): {worst}")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _tolerance(graph: str, ref: np.ndarray, precision: str) -> tuple[bool, float, float]:
    """(exact, absolute atol, rtol) for one output."""
    if not np.issubdtype(ref.dtype, np.floating):
        return True, 0.0, 0.0
    if graph.startswith("compressor"):
        return False, GATHER_ATOL, 0.0
    frac, rtol = TOLERANCES[precision]
    return False, frac * float(np.abs(ref.astype(np.float32)).max(initial=0.0)), rtol


def _check_outputs(graph: str, precision: str, cases: list[Case], got: list[dict]) -> list[OutputCheck]:
    checks = []
    for name in cases[0].outputs:
        refs = [c.outputs[name] for c in cases]
        outs = [np.asarray(g[name]) for g in got]
        exact, atol, rtol = _tolerance(graph, np.concatenate([r.reshape(-1) for r in refs]), precision)
        if any(o.shape != r.shape for o, r in zip(outs, refs)):
            checks.append(OutputCheck(name, exact, float("inf"), atol, rtol, False))
            continue
        if exact and not np.issubdtype(refs[0].dtype, np.floating):
            same = all(np.array_equal(o, r) for o, r in zip(outs, refs))
            diff = max(float(np.abs(o.astype(np.int64) - r.astype(np.int64)).max(initial=0)) for o, r in zip(outs, refs))
            checks.append(OutputCheck(name, True, diff, 0.0, 0.0, same))
            continue
        diffs = [np.abs(o.astype(np.float32) - r.astype(np.float32)) for o, r in zip(outs, refs)]
        finite = all(np.isfinite(d).all() for d in diffs)
        ok = finite and all(bool((d <= atol + rtol * np.abs(r.astype(np.float32))).all()) for d, r in zip(diffs, refs))
        checks.append(OutputCheck(name, exact, max(float(d.max(initial=0.0)) for d in diffs) if finite else float("inf"),
                                  atol, rtol, ok))
    return checks


def run_cases(make_runner: Callable, cases: list[Case], profiles: list[str]) -> list[dict]:
    """Each case's outputs through Polygraphy's Comparator, one runner per optimization profile.

    make_runner(profile_index or None, profile_name) returns a Polygraphy runner (a TrtRunner here;
    the tests pass an OnnxrtRunner).
    """
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    got: list[dict | None] = [None] * len(cases)
    for profile in dict.fromkeys(c.profile for c in cases):
        index = profiles.index(profile) if profile in profiles and len(profiles) > 1 else None
        picked = [i for i, c in enumerate(cases) if c.profile == profile]
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            results = Comparator.run([make_runner(index, profile)], data_loader=[cases[i].inputs for i in picked])
        (_, iterations), = list(results.items())
        for i, iteration in zip(picked, iterations):
            got[i] = {name: np.array(value) for name, value in iteration.items()}
    return got


def _run_engine(path: Path, cases: list[Case], profiles: list[str]) -> list[dict]:
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    engine = EngineFromBytes(BytesFromPath(str(path)))()
    return run_cases(lambda index, profile: TrtRunner(engine, name=f"trt-{path.stem}-{profile}",
                                                      optimization_profile=index), cases, profiles)


def compare(graph: str, precision: str, cases: list[Case], got: list[dict]) -> GraphCheck:
    """`got` (one output dict per case) against the recorded outputs of `cases`."""
    checks = _check_outputs(graph, precision, cases, got)
    tokens = None
    if "logits" in cases[0].outputs and all("logits" in g for g in got):
        tokens = all(np.array_equal(g["logits"].argmax(-1), c.outputs["logits"].argmax(-1)) for g, c in zip(got, cases))
    return GraphCheck(graph, precision, tuple(c.name for c in cases), tuple(checks),
                      _polygraphy_compare(cases, got, checks), tokens)


def _polygraphy_compare(cases: list[Case], got: list[dict], checks: list[OutputCheck]) -> bool:
    from polygraphy import comparator
    from polygraphy.comparator import Comparator, IterationResult, RunResults
    from polygraphy.logger import G_LOGGER

    atol = {c.name: c.atol for c in checks}
    rtol = {c.name: c.rtol for c in checks}
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple   # < 0.53: only the latter
    func = simple(atol={**atol, "": 0.0}, rtol={**rtol, "": 0.0}, check_error_stat="elemwise")
    results = RunResults()
    results.append(("trt", [IterationResult(outputs=g, runner_name="trt") for g in got]))
    results.append((REFERENCE_RUNNER, [IterationResult(outputs=c.outputs, runner_name=REFERENCE_RUNNER) for c in cases]))
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        return bool(Comparator.compare_accuracy(results, compare_func=func))


def verify_engines(cfg: VerifyConfig, progress: Callable[[str], None] = lambda _: None) -> VerifyReport:
    """Compare the engines of one build in the manifest with the recorded ONNX Runtime outputs."""
    from omnisift_edge.artifact.manifest import load_manifest

    report = VerifyReport(cfg.folder)
    if cfg.record:
        report.reference = cfg.folder / REFERENCE_DIR
    manifest = load_manifest(cfg.folder, verify=False)
    builds = manifest.builds
    if cfg.record and not builds:
        report.notes.append("no engines built in this folder yet; copy it to the engine machine, "
                            "run omnisift-edge build DIR there, then omnisift-edge verify DIR")
        return report
    if manifest.section("reference") is None:
        raise UsageError(f"{cfg.folder} has no ONNX Runtime reference outputs; on the export machine run "
                         "omnisift-edge verify DIR --record, then copy the folder here")
    target, build = choose_build(builds, cfg.target, cfg.folder)
    flavour = get_flavour(build.flavour)
    try:
        trt = require_tensorrt(flavour.name)
    except UsageError:
        if cfg.record:   # the export machine: recording was the job
            report.notes.append(f"{flavour.missing}; the reference is recorded: verify on the engine machine")
            return report
        raise
    require("polygraphy", extra="engines")
    try:
        device = require_device_for(build)
    except UsageError as exc:
        if cfg.record:   # e.g. rtx engines built here without a GPU: the reference is what this machine can do
            report.notes.append(f"{exc}; the reference is recorded")
            return report
        raise
    check_compatible(build, str(trt.__version__), device, cfg.folder)
    if device.name != build.device and build.device:
        report.notes.append(f"built on {build.device}, running on {device.name} (same compute capability)")
    manifest = load_manifest(cfg.folder, verify=True)   # engines and reference files intact
    report.target, report.tensorrt, report.device = target, str(trt.__version__), device.name
    for graph, engine in build.engines.items():
        if graph not in manifest.graphs:   # decoder_scatter: its static cache is the build's, not the reference's
            report.notes.append(f"{graph} has no recorded reference (its cache length is the build's max_context); "
                                "compare a stream with ONNX Runtime: omnisift-edge run --backend tensorrt")
            continue
        progress(f"verifying {graph}")
        cases = load_reference(cfg.folder, manifest, graph)
        profiles = [p["name"] for p in engine.profiles]
        got = _run_engine(cfg.folder / engine.file, cases, profiles)
        report.graphs[graph] = compare(graph, engine.precision, cases, got)
    return report
