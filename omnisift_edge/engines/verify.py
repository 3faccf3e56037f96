"""Engines against ONNX Runtime, across two machines.

On the export machine (torch + ONNX Runtime), `record_reference(folder)` runs every graph in ONNX
Runtime's CPU provider on deterministic generated inputs (the export validators' generators: seeded
random patches and log-mel, the compressor's random and exact-tie cases, decoder prefill/decode on
gapped positions) and saves inputs and outputs as `reference/<graph>.npz`, recorded in the
manifest with checksums. On the engine machine (TensorRT, no torch, no ONNX Runtime),
`verify_engines(VerifyConfig)` feeds the recorded inputs to each engine through Polygraphy's
TrtRunner + Comparator and compares with the recorded outputs: kept indices and positions must be
identical, floats within the tolerances below.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from omnisift_edge.engines.store import REFERENCE_DIR, atomic_write
from omnisift_edge.errors import UsageError, require

# (atol as a fraction of max |reference| of that output, rtol) per engine precision; integer
# outputs (kept_index, kept_position_ids) must be identical; compressor kept_embeds are a gather of
# the inputs, so they must match to 1e-6. Stated, not yet measured on a GPU (docs/engines.md).
TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (2e-2, 5e-2), "bf16": (5e-2, 1e-1)}
GATHER_ATOL = 1e-6
REFERENCE_RUNNER = "onnxrt-recorded"


@dataclass(frozen=True)
class Case:
    name: str
    profile: str                      # static | prefill | decode
    inputs: dict
    outputs: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------- recording

def _inputs(manifest: dict, graph: str, session, ratio_k: int) -> list[Case]:
    """The generated inputs of one graph (decoder cases are chained: each feeds the last presents back)."""
    torch = require("torch")
    from omnisift_edge.export.tensors import Dims

    dims = Dims(**manifest["dims"])
    fp16 = manifest["dtype"] == "fp16"
    tdt, ndt = (torch.float16, np.float16) if fp16 else (torch.float32, np.float32)
    entry = manifest["graphs"][graph]
    names = [t["name"] for t in entry["inputs"]]
    if graph == "vision_encoder":
        from omnisift_edge.export.encoders import example_pixels

        return [Case(f"seed{s}", "static", {names[0]: example_pixels(dims, tdt, seed=s).numpy()}) for s in (0, 1)]
    if graph == "audio_encoder":
        from omnisift_edge.export.encoders import example_features

        return [Case(f"seed{s}", "static", {names[0]: example_features(dims, tdt, seed=s).numpy()}) for s in (0, 1)]
    if graph.startswith("compressor"):
        from omnisift_edge.export.compressor import example_inputs

        cases = []
        for label, seed, ties in (("seed0", 0, None), ("seed1", 1, None), ("ties_frames", 0, "frames"),
                                  ("ties_silence", 0, "silence"), ("ties_both", 0, "both")):
            tensors = example_inputs(dims, tdt, seed, ties=ties)
            cases.append(Case(label, "static", {n: t.numpy() for n, t in zip(names, tensors)}))
        return cases
    if graph == "decoder":
        from omnisift_edge.export.decoder_config import gapped_positions

        rng = np.random.Generator(np.random.PCG64(0))
        past = {n: np.zeros((1, dims.kv_heads, 0, dims.head_dim), ndt) for n in names[3:]}   # [1, kv, 0, hd]
        outputs = [t["name"] for t in entry["outputs"]]
        cases, position, total = [], 3, 0
        for label, profile, n in (("prefill_empty_past", "prefill", ratio_k), ("prefill", "prefill", ratio_k),
                                  ("decode", "decode", 1)):
            embeds = (rng.standard_normal((1, n, dims.hidden)) * 0.5).astype(ndt)               # [1, n, D]
            positions = gapped_positions(1, n, start=position, rng=rng)                          # [3, 1, n]
            total += n
            feeds = {names[0]: embeds, names[1]: positions, names[2]: np.ones((1, total), np.int64), **past}
            result = dict(zip(outputs, session.run(outputs, feeds)))
            cases.append(Case(label, profile, feeds, result))
            past = {p: result[o] for p, o in zip(names[3:], outputs[1:])}                        # presents -> past
            position = int(positions.max()) + 1
        return cases
    raise UsageError(f"no reference inputs for graph {graph!r}; this omnisift-edge does not know it")


def record_reference(folder: Path, progress: Callable[[str], None] = lambda _: None) -> Path:
    """Run every graph of the export in ONNX Runtime (CPU) on generated inputs; save `reference/<graph>.npz`.

    Returns the reference folder. The manifest gets a `reference` section and fresh checksums.
    """
    from omnisift_edge.engines.profiles import decoder_limits
    from omnisift_edge.export.manifest import read_manifest, write_manifest
    from omnisift_edge.export.onnx_io import ort_session

    folder = Path(folder)
    manifest = read_manifest(folder, verify=True)
    ort = require("onnxruntime", extra="export")
    require("torch")
    k = decoder_limits(manifest).opt_sequence
    graphs = {}
    for graph, entry in manifest["graphs"].items():
        progress(f"reference outputs of {graph} in ONNX Runtime")
        session = ort_session(folder / entry["file"])
        outputs = [t["name"] for t in entry["outputs"]]
        cases = _inputs(manifest, graph, session, k)
        arrays = {}
        for case in cases:
            result = case.outputs or dict(zip(outputs, session.run(outputs, case.inputs)))
            arrays.update({f"{case.name}/in/{n}": a for n, a in case.inputs.items()})
            arrays.update({f"{case.name}/out/{n}": np.asarray(a) for n, a in result.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        relative = f"{REFERENCE_DIR}/{graph}.npz"
        atomic_write(folder / relative, buffer.getvalue())
        graphs[graph] = {"file": relative, "cases": [{"name": c.name, "profile": c.profile} for c in cases]}
    manifest["reference"] = {"runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)", "seeded": True,
                             "decoder_tokens": k, "graphs": graphs,
                             "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_manifest(folder, manifest)
    return folder / REFERENCE_DIR


def load_reference(folder: Path, manifest: dict, graph: str) -> list[Case]:
    """The recorded cases of `graph`, inputs and ONNX Runtime outputs, in recording order."""
    entry = manifest.get("reference", {}).get("graphs", {}).get(graph)
    if entry is None:
        raise UsageError(f"{folder} has no reference outputs for {graph}; record them on the export machine: "
                         "omnisift-edge verify DIR --record")
    with np.load(Path(folder) / entry["file"], allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    cases = []
    for meta in entry["cases"]:
        pick = lambda kind: {k.split("/", 2)[2]: v for k, v in arrays.items()  # noqa: E731
                             if k.startswith(f"{meta['name']}/{kind}/")}
        cases.append(Case(meta["name"], meta["profile"], pick("in"), pick("out")))
    return cases


# ------------------------------------------------------------------------------------- verifying

@dataclass(frozen=True)
class VerifyConfig:
    folder: Path
    target: str | None = None       # which build in the manifest; default: the only one
    record: bool = False            # record the ONNX Runtime reference first (export machine)

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
    from omnisift_edge.engines.build import require_device_for, require_tensorrt
    from omnisift_edge.engines.flavour import get_flavour
    from omnisift_edge.export.manifest import read_manifest

    report = VerifyReport(cfg.folder)
    if cfg.record:
        report.reference = record_reference(cfg.folder, progress)
    manifest = read_manifest(cfg.folder, verify=False)
    builds = manifest.get("builds", {})
    if cfg.record and not builds:
        report.notes.append("no engines built in this folder yet; copy it to the engine machine, "
                            "run omnisift-edge build DIR there, then omnisift-edge verify DIR")
        return report
    if "reference" not in manifest:
        raise UsageError(f"{cfg.folder} has no ONNX Runtime reference outputs; on the export machine run "
                         "omnisift-edge verify DIR --record, then copy the folder here")
    if not builds:
        raise UsageError(f"{cfg.folder} has no engines; build them first: omnisift-edge build DIR --target auto")
    if cfg.target is None and len(builds) > 1:
        raise UsageError(f"{cfg.folder} has engines for {', '.join(builds)}; pass --target to pick one")
    target = cfg.target or next(iter(builds))
    if target not in builds:
        raise UsageError(f"{cfg.folder} has no engines for {target} (it has {', '.join(builds)}); "
                         f"build them: omnisift-edge build DIR --target {target}")
    build = builds[target]
    flavour = get_flavour(build.get("flavour", "tensorrt"))
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
    if device.name != build.get("device") and build.get("device"):
        report.notes.append(f"built on {build.get('device')}, running on {device.name} (same compute capability)")
    manifest = read_manifest(cfg.folder, verify=True)   # engines and reference files intact
    report.target, report.tensorrt, report.device = target, str(trt.__version__), device.name
    for graph, engine in build["engines"].items():
        progress(f"verifying {graph}")
        cases = load_reference(cfg.folder, manifest, graph)
        profiles = [p["name"] for p in engine["profiles"]]
        got = _run_engine(cfg.folder / engine["file"], cases, profiles)
        report.graphs[graph] = compare(graph, engine["precision"], cases, got)
    return report
