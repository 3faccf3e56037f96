"""`plan_build(BuildConfig) -> BuildPlan`: what `build` will do, computed anywhere (no TensorRT).

Per engine: its optimization profiles (from the manifest, see profiles.py), the precision mode,
the workspace, the timing cache, and the equivalent `trtexec` and `polygraphy convert` command
lines. Written to `DIR/engines/<target>/build_plan.json`; `build_engines` executes the same plan.

Precision modes (TensorRT >= 10):
- an fp16 ONNX graph is built *strongly typed*: every tensor keeps the type the graph declares,
  which is what ONNX Runtime validated at export (and the exporter's fp32 islands, such as
  rotary tables, stay fp32); no FP16 flag is needed, and TensorRT 11, which removed the
  precision flags, builds it the same way.
- an fp32 graph at fp32 is built strongly typed too (fp32 everywhere, TF32 off).
- an fp32 graph at fp16/bf16 uses TensorRT 10's FP16/BF16 builder flag (weak typing, deprecated
  since 10.12): TensorRT picks reduced-precision kernels per layer, I/O stays fp32. TensorRT 11 has
  no such flag: export with --dtype fp16 instead.
- compressor graphs are always built at the graph's own precision, strongly typed: the kept set
  must equal ONNX Runtime's, and lower-precision scores would reorder near ties. They are tiny.
- TensorRT-RTX (flavour `tensorrt_rtx`) has strongly typed networks only: the engines compute in
  the export's dtype (the default precision there), and another precision is a UsageError that
  says which export to make.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from omnisift_edge.runtime import trt_flavour as flavours
from omnisift_edge.engines.kv_form import build_graphs, decoder_form, static_sizes, trt10_form_applies
from omnisift_edge.engines.presets import PRECISIONS, PRESETS, TARGETS, Target, get_target, resolve_target
from omnisift_edge.engines.profiles import (DEFAULT_MAX_PROMPT, SCATTER, Profile, check_max_streams, check_prefill_chunks,
                                            decoder_limits, graph_profiles)
from omnisift_edge.engines.store import PLAN_FILE, engine_dir, engine_path, write_side_file
from omnisift_edge.artifact.limits import check_max_context
from omnisift_edge.errors import UsageError


@dataclass(frozen=True)
class BuildConfig:
    folder: Path
    target: str = "auto"                 # a preset name (presets.PRESETS) or auto
    precision: str | None = None         # fp16 | bf16 | fp32; default fp16, on TensorRT-RTX the export's dtype
    max_context: int | None = None       # longest KV cache; default the manifest's
    workspace_gb: float | None = None    # builder workspace; default the target's
    ratio: float | None = None           # ratio whose K the prefill profile is tuned for; default the smallest
    max_prompt: int = DEFAULT_MAX_PROMPT # longest text prefill the decoder profile covers
    timing_cache: Path | None = None     # default ~/.cache/omnisift-edge/tensorrt/<target>-trt<version>.timing
    compute_capabilities: tuple | str | None = None   # TensorRT-RTX: "8.6,8.9,12.0" or ((8, 6), ...); default the target's
    prefill_chunks: int = 1              # chunks' kept tokens one decoder prefill call takes (grouped file prefill)
    max_streams: int = 1                 # decode rows one decoder call takes: a stream pool's streams (profiles.py)

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        if not self.folder.is_dir():
            raise UsageError(f"{self.folder} is not a folder; pass an export folder (omnisift-edge export -o DIR)")
        if self.target not in TARGETS:
            raise UsageError(f"unknown --target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.target != "auto" and self.precision is not None:
            get_target(self.target).check_precision(self.precision)
        if self.compute_capabilities is not None:
            object.__setattr__(self, "compute_capabilities", flavours.parse_compute_capabilities(
                self.compute_capabilities, flavours.get_flavour(self.flavour)))
        if self.max_context is not None:
            check_max_context(self.max_context)
        if self.workspace_gb is not None and not 0 < float(self.workspace_gb) <= 1024:
            raise UsageError(f"--workspace must be a positive number of GB (got {self.workspace_gb})")
        if self.max_prompt < 1:
            raise UsageError(f"--max-prompt must be at least 1 token (got {self.max_prompt})")
        check_prefill_chunks(self.prefill_chunks)
        object.__setattr__(self, "max_streams", check_max_streams(self.max_streams))

    @property
    def flavour(self) -> str:
        """The flavour --target builds with, known without a GPU (`auto` detects a GPU for full TensorRT)."""
        return target_flavour(self.target)


@dataclass(frozen=True)
class BuildEnv:
    """What a build runs with, looked up once: the target (compute capabilities of the config merged),
    its flavour, the TensorRT version plans assume, and the GPU. `BuildEnv.for_plan` needs nothing
    installed; `build.resolve_env` imports TensorRT and finds the GPU. Plans and builds read it, never
    look these up again."""

    target: Target
    flavour: flavours.Flavour
    tensorrt: str                  # the flavour's version (the installed one when known, else the target's)
    installed: bool = False        # `tensorrt` is the installed version (else assumed from the target)
    device: object = None          # runtime.trt_env.DeviceInfo of the build machine's GPU, None when there is none
    module: object = field(default=None, compare=False, repr=False)   # the imported TensorRT (a build)

    @property
    def without_gpu(self) -> bool:
        """An ahead-of-time build on a machine with no GPU (its CUDA-driver errors are muted)."""
        return self.flavour.builds_without_gpu and self.device is None

    @classmethod
    def for_plan(cls, cfg: "BuildConfig", tensorrt: str | None = None) -> "BuildEnv":
        """Anywhere: the preset (`auto` detects the GPU), the installed version or the one the target expects."""
        target = with_compute_capabilities(resolve_target(cfg.target), cfg)
        flavour = flavours.get_flavour(target.flavour)
        found = tensorrt or flavours.installed_version(flavour.name)   # package metadata, no import
        return cls(target, flavour, found or target.tensorrt[0].rstrip("."), installed=found is not None)


def with_compute_capabilities(target: Target, cfg: "BuildConfig") -> Target:
    """`target` compiled for the config's --compute-capability list (TensorRT-RTX), when it names one."""
    if cfg.compute_capabilities is None:
        return target
    return dataclasses.replace(target, compute_capabilities=cfg.compute_capabilities,
                               compute_capability=cfg.compute_capabilities[0])


@dataclass(frozen=True)
class PrecisionMode:
    precision: str                 # what the engine computes in (fp16 | bf16 | fp32)
    strongly_typed: bool
    flags: tuple[str, ...]         # BuilderFlag names set (FP16 / BF16), empty when strongly typed
    why: str


def target_flavour(target: str) -> str:
    """The flavour a --target name builds with, without a GPU (`auto` detects a GPU for full TensorRT)."""
    return PRESETS[target].flavour if target in PRESETS else flavours.TENSORRT.name


def default_precision(flavour: flavours.Flavour, graph_dtype: str) -> str:
    """fp16 for full TensorRT (as before); the export's own dtype for a strongly typed flavour."""
    return graph_dtype if flavour.strongly_typed_only else "fp16"


def precision_mode(graph: str, graph_dtype: str, precision: str, tensorrt_major: int,
                   strongly_typed_only: bool = False) -> PrecisionMode:
    """How to build one graph at `precision` on TensorRT `tensorrt_major` (see the module docstring);
    `strongly_typed_only` for TensorRT-RTX, which has no precision flags."""
    if graph.startswith("compressor"):
        return PrecisionMode(graph_dtype, True, (), "compressor: built at the graph's own precision, strongly typed, so "
                                                    "the kept set equals ONNX Runtime's (reduced-precision scores reorder near ties)")
    if graph_dtype == "fp16":
        if precision != "fp16":
            raise UsageError(f"the graphs are fp16 ONNX; {precision} engines need an fp32 export "
                             "(omnisift-edge export --dtype fp32), or build with --precision fp16")
        return PrecisionMode("fp16", True, (), "fp16 ONNX graph: strongly typed, every tensor keeps the type ONNX Runtime "
                                               "validated; no FP16 flag (TensorRT 11 builds it the same way)")
    if precision == "fp32":
        return PrecisionMode("fp32", True, (), "fp32 ONNX graph at fp32: strongly typed, fp32 everywhere (TF32 off)")
    if strongly_typed_only:
        raise UsageError(f"TensorRT-RTX builds strongly typed networks only (no {precision.upper()} flag), so {precision} "
                         f"engines need {precision} graphs: export with --dtype fp16 and build with --precision fp16, "
                         "or build this fp32 export with --precision fp32")
    if tensorrt_major >= 11:
        raise UsageError(f"TensorRT {tensorrt_major} removed the FP16/BF16 builder flags, so an fp32 graph cannot be "
                         f"built at {precision}; export with --dtype fp16 and build with --precision fp16")
    flag = precision.upper()
    return PrecisionMode(precision, False, (flag,), f"fp32 ONNX graph with BuilderFlag.{flag} (weak typing, deprecated "
                                                    "since TensorRT 10.12): TensorRT picks reduced-precision kernels per layer, "
                                                    "I/O stays fp32; export --dtype fp16 for a strongly typed build")


@dataclass(frozen=True)
class EnginePlan:
    graph: str
    onnx: Path
    engine: Path
    graph_dtype: str
    mode: PrecisionMode
    profiles: tuple[Profile, ...]
    weight_bytes: int              # ONNX file + its weights' data file(s): the weights TensorRT will hold
    static: dict = field(default_factory=dict)   # axes fixed before parsing (kv_form.static_sizes): the static cache
    onnx_bytes: int = 0            # ONNX file + its weights' data as stored (what the parser holds; build_memory.py)

    @property
    def dynamic(self) -> bool:
        return any(p.dynamic_inputs for p in self.profiles)

    def record(self, folder: Path) -> dict:
        """The plan's part of this engine's build report entry (the build adds bytes, seconds, validity)."""
        return {"file": str(self.engine.relative_to(folder)), "onnx": self.onnx.name, "precision": self.mode.precision,
                "strongly_typed": self.mode.strongly_typed, "flags": list(self.mode.flags),
                "profiles": [p.to_dict() for p in self.profiles]}

    def trtexec(self, workspace_mib: int, timing_cache: Path) -> list[str]:
        cmd = ["trtexec", f"--onnx={self.onnx}", f"--saveEngine={self.engine}"]
        cmd += ["--stronglyTyped"] if self.mode.strongly_typed else [f"--{f.lower()}" for f in self.mode.flags]
        cmd += ["--noTF32", f"--memPoolSize=workspace:{workspace_mib}", f"--timingCacheFile={timing_cache}"]
        if self.dynamic:   # trtexec refuses shapes for static models; --profile=N starts profile N
            for index, profile in enumerate(self.profiles):
                cmd += [f"--profile={index}"] if len(self.profiles) > 1 else []
                for flag, attr in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
                    cmd.append(f"{flag}=" + ",".join(f"{name}:{'x'.join(map(str, getattr(r, attr)))}"
                                                     for name, r in profile.dynamic_inputs.items()))
        return cmd + ["--skipInference"]

    def polygraphy(self, workspace_mib: int, timing_cache: Path | None, compute_capabilities: tuple = ()) -> list[str]:
        """The `polygraphy convert` line; with `compute_capabilities` (TensorRT-RTX) under POLYGRAPHY_USE_TENSORRT_RTX=1."""
        cmd = ["polygraphy", "convert", str(self.onnx), "--convert-to", "trt", "-o", str(self.engine)]
        if compute_capabilities:
            cmd = ["env", f"{flavours.POLYGRAPHY_RTX_ENV}=1", *cmd,
                   "--compute-capabilities", *(f"{a}.{b}" for a, b in compute_capabilities)]
        cmd += ["--strongly-typed"] if self.mode.strongly_typed else [f"--{f.lower()}" for f in self.mode.flags]
        cmd += ["--pool-limit", f"workspace:{workspace_mib}M"]
        if timing_cache is not None:
            cmd += ["--load-timing-cache", str(timing_cache), "--save-timing-cache", str(timing_cache)]
        if self.dynamic:   # each --trt-*-shapes group is one profile, in order
            for profile in self.profiles:
                for flag, attr in (("--trt-min-shapes", "min"), ("--trt-opt-shapes", "opt"), ("--trt-max-shapes", "max")):
                    cmd += [flag, *(f"{name}:[{','.join(map(str, getattr(r, attr)))}]"
                                    for name, r in profile.dynamic_inputs.items())]
        return cmd


@dataclass(frozen=True)
class BuildPlan:
    folder: Path
    env: BuildEnv                  # target, flavour, TensorRT version, device: resolved once
    precision: str
    max_context: int
    max_sequence: int
    main_ratio: float
    workspace_gb: float
    timing_cache: Path | None      # None for TensorRT-RTX: it has no timing cache (see plan_build)
    engines: tuple[EnginePlan, ...]
    warnings: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)
    decoder_form: tuple[str, str] = ("decoder", "")   # (graph, why): kv_form.decoder_form
    memory: object = field(default=None, compare=False)   # engines.memory.MemoryPlan (None: export predates it)
    weights_problem: str | None = None   # why this TensorRT cannot build the decoder's weights (build refuses)
    memory_problem: str | None = None    # why the build cannot fit the target's unified memory (build refuses)
    prefill_chunks: int = 1              # chunks per prefill call the decoder profiles take (max_sequence counts them)
    max_streams: int = 1                 # decode rows per call the decoder profiles take (a stream pool)
    streams_problem: str | None = None   # why the target cannot hold max_streams streams (build refuses; streams.py)

    @property
    def target(self) -> Target:
        return self.env.target

    @property
    def tensorrt(self) -> str:
        """The flavour's version the plan assumes (the installed one when known)."""
        return self.env.tensorrt

    @property
    def installed(self) -> bool:
        return self.env.installed

    @property
    def flavour(self) -> str:
        return self.env.flavour.name

    def record(self) -> dict:
        """The plan's part of the build report (manifest `builds.<target>`); the build adds what happened."""
        return {"target": self.target.name, "flavour": self.flavour, "tensorrt": self.tensorrt,
                "precision": self.precision, "max_context": self.max_context, "max_prefill_tokens": self.max_sequence,
                "prefill_chunks": self.prefill_chunks, "max_streams": self.max_streams, "main_ratio": self.main_ratio,
                "workspace_gb": self.workspace_gb, "decoder_form": {"graph": self.decoder_form[0], "why": self.decoder_form[1]},
                "timing_cache": self.timing_cache and str(self.timing_cache), "warnings": list(self.warnings)}

    @property
    def workspace_mib(self) -> int:
        return int(round(self.workspace_gb * 1024))

    @property
    def relative_path(self) -> str:
        """Where the plan is written, relative to the export folder."""
        return str((engine_dir(self.folder, self.target.name) / PLAN_FILE).relative_to(self.folder))

    def json_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode()

    def engine(self, graph: str) -> EnginePlan:
        return next(e for e in self.engines if e.graph == graph)

    def to_dict(self) -> dict:
        t = self.target
        return {
            "folder": str(self.folder), "target": {"name": t.name, "description": t.description, "sm": t.sm,
                                                   "memory_gb": t.memory_gb, "bf16": t.bf16, "tensorrt": list(t.tensorrt),
                                                   "flavour": t.flavour,
                                                   "compute_capabilities": [f"{a}.{b}" for a, b in t.runs_on]},
            "precision": self.precision, "flavour": self.flavour, "tensorrt_assumed": self.tensorrt,
            "max_context": self.max_context,
            "max_prefill_tokens": self.max_sequence, "prefill_chunks": self.prefill_chunks, "max_streams": self.max_streams,
            "main_ratio": self.main_ratio, "workspace_gb": self.workspace_gb,
            "timing_cache": self.timing_cache and str(self.timing_cache), "warnings": list(self.warnings),
            "decoder_form": {"graph": self.decoder_form[0], "why": self.decoder_form[1]},
            "memory": self.memory.to_dict() if self.memory is not None else None,
            "build_peak": self.build_peak_record(),
            "engines": [{"graph": e.graph, "onnx": str(e.onnx), "engine": str(e.engine), "graph_dtype": e.graph_dtype,
                         "precision": e.mode.precision, "strongly_typed": e.mode.strongly_typed,
                         "flags": list(e.mode.flags), "why": e.mode.why, "weight_bytes": e.weight_bytes,
                         "profiles": [p.to_dict() for p in e.profiles], "static_axes": dict(e.static),
                         "trtexec": self.trtexec(e),
                         "polygraphy": self.polygraphy(e)} for e in self.engines],
        }

    def build_peak_record(self) -> dict:
        """The largest engine build's memory, term by term (engines/build_memory.py)."""
        from omnisift_edge.engines.build_memory import plan_peak

        peak = plan_peak(self)
        return {"graph": peak.graph, "parser_bytes": peak.parser, "builder_bytes": peak.builder,
                "workspace_bytes": peak.workspace, "engine_bytes": peak.engine, "total_bytes": peak.total,
                "unified_memory": self.target.jetson, "refused": self.memory_problem}

    def trtexec(self, e: EnginePlan) -> list[str]:
        """The trtexec line; none for TensorRT-RTX (its SDK's `tensorrt_rtx` tool is not in the wheel; use the polygraphy line)."""
        return [] if self.target.compute_capabilities else e.trtexec(self.workspace_mib, self.timing_cache)

    def polygraphy(self, e: EnginePlan) -> list[str]:
        return e.polygraphy(self.workspace_mib, self.timing_cache, self.target.compute_capabilities)

    def summary(self) -> str:
        t, flavour = self.target, self.env.flavour
        lines = [f"build plan for {t.name} ({t.description}, {t.sm}), {self.precision}",
                 f"  flavour {t.flavour}: {flavour.title} {self.tensorrt} "
                 f"({'installed' if self.installed else 'assumed, not installed'})"
                 + (", built ahead of time (no GPU needed)" if flavour.builds_without_gpu else ""),
                 f"  workspace {self.workspace_gb:g} GB, timing cache {self.timing_cache or NO_TIMING_CACHE}",
                 f"  decoder: max context {self.max_context}, prefill up to {self.max_sequence} tokens "
                 f"({self.prefill_chunks} chunk{'s' if self.prefill_chunks > 1 else ''} per call; "
                 f"tuned for K of ratio {self.main_ratio:g}), decode of up to {self.max_streams} stream"
                 f"{'s' if self.max_streams > 1 else ''} per call" + (f"; REFUSED: {self.streams_problem}"
                                                                     if self.streams_problem else ""),
                 f"  decoder form: {self.decoder_form[0]}, {self.decoder_form[1]}"]
        for e in self.engines:
            kind = "strongly typed" if e.mode.strongly_typed else "+".join(e.mode.flags) + " flag"
            lines.append(f"  {e.graph}: {e.mode.precision}, {kind} -> {e.engine.relative_to(self.folder)}")
            for p in e.profiles:
                if p.dynamic_inputs:
                    lines.append(f"    profile {p.name}: " + ", ".join(f"{a} {lo}/{opt}/{hi}" for a, (lo, opt, hi) in p.axes)
                                 + "".join(f", {n} values {lo}/{opt}/{hi}" for n, (lo, opt, hi) in p.values))
            if e.static:   # the command lines parse the file as is: fix the cache axis in a copy first
                lines.append(f"    parsed with {', '.join(f'{a}={v}' for a, v in e.static.items())} fixed (build does it "
                             "in memory; for the lines below make a fixed copy: polygraphy surgeon sanitize "
                             "--override-input-shapes)")
            if self.trtexec(e):
                lines.append("    " + shlex.join(self.trtexec(e)))
            lines.append("    " + shlex.join(self.polygraphy(e)))
        if self.memory is not None:
            lines += ["  " + line for line in self.memory.summary().splitlines()]
        lines.append(self._build_memory_line())
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.path is not None:
            lines.append(f"  written to {self.path}")
        return "\n".join(lines)

    def _build_memory_line(self) -> str:
        from omnisift_edge.engines.build_memory import GB, plan_peak

        peak = plan_peak(self)
        where = (f"in {self.target.name}'s {self.target.memory_gb:g} GB shared by CPU and GPU" if self.target.jetson
                 else "host RAM (builder, parser, engine) and GPU (workspace); not checked")
        verdict = f"REFUSED: {self.memory_problem}" if self.memory_problem else "fits" if self.target.jetson else ""
        return (f"  build memory: peak about {peak.total / GB:.1f} GB building {peak.graph} ({peak.terms()}), "
                f"{where}" + (f"; {verdict}" if verdict else ""))


NO_TIMING_CACHE = ("none: TensorRT-RTX writes an empty timing cache and will not read it back (checked 1.7); "
                   "it compiles kernels at run time, into its runtime cache, on the GPU")


def default_timing_cache(target: str, tensorrt: str) -> Path:
    """Timing caches are per GPU and TensorRT version; reused by every build (of any export) for them."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omnisift-edge" / "tensorrt"
    return root / f"{target}-trt{tensorrt}.timing"


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 10


def plan_build(cfg: BuildConfig, *, manifest=None, env: BuildEnv | None = None,
               tensorrt: str | None = None, write: bool = True) -> BuildPlan:
    """The build plan for `cfg` in `env` (default `BuildEnv.for_plan(cfg, tensorrt)`: nothing installed needed);
    written to DIR/engines/<target>/build_plan.json when `write`.

    Reads the manifest without re-hashing the graphs (the build verifies every checksum).
    """
    from omnisift_edge.artifact.manifest import as_manifest, load_manifest
    from omnisift_edge.engines.memory import plan_export
    from omnisift_edge.engines.streams import streams_problem

    manifest = as_manifest(manifest) if manifest is not None else load_manifest(cfg.folder, verify=False)
    env = env or BuildEnv.for_plan(cfg, tensorrt)
    target, flavour = env.target, env.flavour
    graph_dtype = manifest.dtype
    precision = cfg.precision or default_precision(flavour, graph_dtype)
    if cfg.target == "auto":   # a named target's precision was checked by BuildConfig; auto's target is known now
        target.check_precision(precision)
    workspace = float(cfg.workspace_gb) if cfg.workspace_gb is not None else target.workspace_gb
    if workspace > target.memory_gb:
        raise UsageError(f"--workspace {workspace:g} GB is more than {target.name}'s {target.memory_gb:g} GB; "
                         f"try {target.workspace_gb:g}")
    limits = decoder_limits(manifest, max_context=cfg.max_context, ratio=cfg.ratio, max_prompt=cfg.max_prompt,
                            prefill_chunks=cfg.prefill_chunks, max_streams=cfg.max_streams)
    form = decoder_form(manifest, flavour.name, env.tensorrt)
    engines = _engine_plans(cfg.folder, manifest, env, form[0], graph_dtype, precision, limits)
    problem = weights_form_problem(manifest, env.tensorrt, flavour.name)   # build refuses it; the plan warns
    timing_cache = None if flavour.builds_without_gpu else cfg.timing_cache or default_timing_cache(target.name,
                                                                                                   env.tensorrt)
    memory = plan_export(cfg.folder, manifest, precision=precision, max_context=limits.max_context,
                         prefill=limits.max_sequence, kv_in_place=form[0] == SCATTER,
                         prefill_chunks=limits.prefill_chunks, streams=limits.max_streams)
    plan = BuildPlan(cfg.folder, env, precision, limits.max_context, limits.max_sequence, limits.main_ratio,
                     workspace, timing_cache, engines, _warnings(cfg, env, engines, problem), memory=memory,
                     decoder_form=form, weights_problem=problem, prefill_chunks=limits.prefill_chunks,
                     max_streams=limits.max_streams)
    plan = dataclasses.replace(plan, memory_problem=memory_problem(plan, env.device), streams_problem=streams_problem(plan))
    if write:
        path = write_side_file(cfg.folder, plan.relative_path, plan.json_bytes(), manifest)
        plan = dataclasses.replace(plan, path=path)
    return plan


def _engine_plans(folder: Path, manifest, env: BuildEnv, decoder: str, graph_dtype: str, precision: str,
                  limits) -> tuple[EnginePlan, ...]:
    """One EnginePlan per graph the build turns into an engine (`decoder`: the decoder form's graph)."""
    from omnisift_edge.artifact.manifest import graph_file_bytes

    engines = []
    for graph, entry in build_graphs(manifest, decoder, limits.max_streams).items():
        size = graph_file_bytes(folder, manifest, entry.file)   # weights maybe in shared_weights.data
        mode = precision_mode(graph, graph_dtype, precision, _major(env.tensorrt), env.flavour.strongly_typed_only)
        engines.append(EnginePlan(graph, folder / entry.file, engine_path(folder, env.target.name, graph),
                                  graph_dtype, mode, graph_profiles(manifest, graph, limits),
                                  size // 2 if graph_dtype == "fp32" and mode.precision != "fp32" else size,
                                  static_sizes(graph, limits.max_context, limits.max_streams), size))
    return tuple(engines)


def _warnings(cfg: BuildConfig, env: BuildEnv, engines, weights_problem: str | None) -> tuple[str, ...]:
    """What the plan says before a build: memory, an unexpected TensorRT, an ignored timing cache, the weights."""
    target, warnings = env.target, []
    weights_gb = sum(e.weight_bytes for e in engines) / 2**30
    if weights_gb > 0.7 * target.memory_gb:
        warnings.append(f"the engines hold about {weights_gb:.1f} GB of weights, over 70% of {target.name}'s "
                        f"{target.memory_gb:g} GB{' (shared with the CPU)' if target.jetson else ''}; "
                        "the build or the runtime may run out of memory")
    if not target.expects_tensorrt(env.tensorrt):
        warnings.append(f"{target.name} expects {env.flavour.title} "
                        f"{' or '.join(p.rstrip('.') for p in target.tensorrt)}, this plan assumes {env.tensorrt}")
    if env.flavour.builds_without_gpu and cfg.timing_cache is not None:
        warnings.append(f"timing_cache {cfg.timing_cache} ignored: {NO_TIMING_CACHE}")
    return tuple(warnings + ([weights_problem] if weights_problem else []))


def memory_problem(plan: BuildPlan, device=None) -> str | None:
    """Why `plan`'s build cannot fit its Jetson's unified memory (one line naming the fix), or None."""
    from omnisift_edge.engines.build_memory import check_build_memory

    try:
        check_build_memory(plan, device)
    except UsageError as exc:
        return str(exc)
    return None


# the first TensorRT whose ONNX parser takes opset 21 (weight-only Q/DQ decoders); export/trt_ops.py has the why
QDQ_TENSORRT_MIN = (10, 6)


def weights_form_problem(manifest, tensorrt: str, flavour: str = "tensorrt") -> str | None:
    """Why TensorRT `tensorrt` cannot build this export's decoder weights, or None.

    A weight-only int8/int4 decoder (opset 21 Q/DQ) needs a TensorRT whose parser takes opset 21
    (TensorRT-RTX 1.7 builds it: checked on the CPU, docs/quantization.md).
    """
    from omnisift_edge.artifact.manifest import as_manifest

    manifest = as_manifest(manifest)
    weights = manifest.weights
    if weights is None or weights.form != "qdq" or flavour == "tensorrt_rtx" or trt10_form_applies(manifest, tensorrt):
        return None
    try:
        version = tuple(int(p) for p in tensorrt.split(".")[:2])
    except ValueError:
        return None
    if version >= QDQ_TENSORRT_MIN:
        return None
    need = ".".join(map(str, QDQ_TENSORRT_MIN))
    older = "this export has no decoder_trt10 form (export again for TensorRT 10.0-10.5); " \
        if version >= (10, 0) else f"TensorRT {tensorrt} has no INT4 importer either (needs >= 10.0); "
    return (f"the decoder has {weights.mode} weight-only Q/DQ (opset 21), which TensorRT {tensorrt} "
            f"cannot parse (needs >= {need} or TensorRT-RTX); {older}build on a newer TensorRT, or export "
            "--weights fp16 for this target")
