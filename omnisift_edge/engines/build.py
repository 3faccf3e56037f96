"""`build_engines(BuildConfig) -> BuildArtifact`: TensorRT engines from an export folder.

Executes the plan of `plan.plan_build` with TensorRT's Python API through Polygraphy's loaders
(NetworkFromOnnxPath -> CreateConfig with the profiles -> EngineBytesFromNetwork), one timing
cache shared by every build for the same GPU and TensorRT version. Each engine is written
atomically (temporary file + os.replace) into a hidden staging folder that replaces
DIR/engines/<target>/ once every engine is built; then a build report is added to the manifest
under `builds.<target>` and manifest.json is rewritten (checksums of the engines included; the
export's files keep the checksums verified before the build: each file is hashed once).

One build, three steps: `resolve_env` looks up target, flavour, TensorRT version and device once
(a frozen `plan.BuildEnv`), `plan.plan_build` plans from it, `_execute` builds the plan; the report
is the plan's own record (`BuildPlan.record`, `EnginePlan.record`) plus what happened.

Both flavours (flavour.py) go through these loaders: full TensorRT builds on the target GPU;
TensorRT-RTX (`--target rtx`) builds ahead of time on any machine, GPU or not, for the target's
compute capabilities (Polygraphy's CreateConfigRTX). Each engine's header is checked with the
runtime's engine-validity call where the flavour has it (what can be checked without a GPU).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from contextlib import nullcontext
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omnisift_edge.engines.plan import (BuildConfig, BuildEnv, BuildPlan, EnginePlan, plan_build,
                                        with_compute_capabilities)
from omnisift_edge.engines.kv_form import kv_cache_updates, parse_static, shape_inputs
from omnisift_edge.engines.presets import Target, check_device, resolve_target
from omnisift_edge.engines.store import PLAN_FILE, atomic_write, engine_dir, publish, staging_dir, verify_sources
from omnisift_edge.errors import UsageError, require
from omnisift_edge.runtime import trt_flavour as flavours
from omnisift_edge.runtime.trt_env import detect_device, require_device, require_tensorrt


def _check_installed_compute_capabilities(trt, flavour, wanted) -> None:
    """The installed TensorRT-RTX must know every compute capability asked for (newer ones come with newer releases)."""
    known = flavours.installed_compute_capabilities(trt)
    missing = [c for c in wanted if c not in known]
    if missing:
        raise UsageError(f"{flavour.title} {trt.__version__} cannot compile for compute capability "
                         f"{', '.join(map(flavours.format_cc, missing))}; upgrade it (pip install -U tensorrt-rtx-cu12) "
                         "or drop it from --compute-capability")


@dataclass
class BuildArtifact:
    folder: Path
    target: Target
    plan: BuildPlan
    engines: dict[str, Path]
    report: dict                       # what went into the manifest's builds.<target>
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict, repr=False)


def _create_config(trt, polygraphy_trt, plan: BuildPlan, **kwargs):
    """Polygraphy's CreateConfig; for TensorRT-RTX, CreateConfigRTX with the compute capabilities.

    TensorRT-RTX has no precision flags (the plan never sets them there) and turns TF32 on by
    default; its config loader has no tf32 switch, so the flag is cleared afterwards: an fp32
    engine computes in fp32, as on full TensorRT.
    """
    if plan.target.compute_capabilities:
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        flags = [flag for flag in ("fp16", "bf16") if kwargs.pop(flag)]
        if flags:   # a bug, not the user's: precision_mode refuses these for strongly typed flavours
            raise ValueError(f"TensorRT-RTX has no {'/'.join(flags)} builder flag; its plans are strongly typed")
        tf32 = kwargs.pop("tf32")
        config = CreateConfigRTX(compute_capabilities=list(plan.target.compute_capabilities), **kwargs)
        if not tf32:
            config = polygraphy_trt.PostprocessConfig(
                config, lambda builder, network, cfg: cfg.clear_flag(trt.BuilderFlag.TF32))
        return config
    return polygraphy_trt.CreateConfig(**kwargs)


def trt_profiles(polygraphy_trt, ep: EnginePlan, shape_tensors=frozenset()) -> list:
    """The Polygraphy profiles the builder gets for `ep`, in order: each dynamic input's min/opt/max, and the
    value range of each input TensorRT made a shape tensor (`shape_tensors`)."""
    profiles = []
    for profile in ep.profiles:
        p = polygraphy_trt.Profile()
        for name, r in profile.dynamic_inputs.items():
            p.add(name, min=r.min, opt=r.opt, max=r.max)
        for name, (lo, opt, hi) in profile.values:   # a shape tensor's value range, where TensorRT made it one
            if name in shape_tensors:
                p.add(name, min=(lo,), opt=(opt,), max=(hi,))
        profiles.append(p)
    return profiles


def _build_one(trt, polygraphy_trt, ep: EnginePlan, plan: BuildPlan) -> tuple[bytes, dict]:
    """(serialized engine, facts about its network: the in-place form's KV_CACHE_UPDATE layers)."""
    network, shape_tensors, facts = None, set(), {}
    if ep.static:   # the in-place decoder: its cache axis fixed in memory before parsing (kv_form.py)
        network = parse_static(trt, polygraphy_trt, ep.onnx, ep.mode.strongly_typed, ep.static)
        shape_tensors = shape_inputs(network[1])
        facts = {"kv_cache_updates": kv_cache_updates(trt, network[1]), "shape_inputs": sorted(shape_tensors)}
    else:           # parsed lazily by Polygraphy's loader
        network = polygraphy_trt.NetworkFromOnnxPath(str(ep.onnx), strongly_typed=ep.mode.strongly_typed)
    profiles = trt_profiles(polygraphy_trt, ep, shape_tensors) if ep.dynamic else None
    config = _create_config(
        trt, polygraphy_trt, plan, fp16="FP16" in ep.mode.flags, bf16="BF16" in ep.mode.flags, tf32=False,
        profiles=profiles, memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan.workspace_mib << 20},
        load_timing_cache=plan.timing_cache and str(plan.timing_cache))
    loader = polygraphy_trt.EngineBytesFromNetwork(network, config=config,
                                                   save_timing_cache=plan.timing_cache and str(plan.timing_cache))
    return bytes(memoryview(loader())), facts   # IHostMemory (TensorRT 10) or bytes



def resolve_env(cfg: BuildConfig) -> BuildEnv:
    """Import the flavour, find the GPU and resolve the target, once per build (plan and execution read it).

    Full TensorRT builds on the target GPU itself (checked); TensorRT-RTX ahead of time for the target's
    compute capabilities, which the installed release must know."""
    flavour = flavours.get_flavour(cfg.flavour)
    trt = require_tensorrt(flavour.name)
    require("polygraphy", extra="rtx" if flavour.builds_without_gpu else "engines")
    if flavour.builds_without_gpu:   # ahead of time: a GPU is only described in the report when there is one
        device = detect_device()
        target = with_compute_capabilities(resolve_target(cfg.target), cfg)
        _check_installed_compute_capabilities(trt, flavour, target.compute_capabilities)
    else:
        device = require_device()
        target = resolve_target(cfg.target, device)
        check_device(target, device)
    return BuildEnv(target, flavour, str(trt.__version__), installed=True, device=device, module=trt)


def refuse_build_memory(cfg: BuildConfig, manifest) -> None:
    """A named unified-memory (Jetson) target whose build peak exceeds the board: one line naming the fix
    (engines/build_memory.py), before TensorRT is imported or any graph parsed. The board measured is this
    machine's when it is an Orin (a larger Orin may build a smaller one's engines), else the target's."""
    from omnisift_edge.engines.build_memory import check_build_memory
    from omnisift_edge.engines.presets import get_target

    if cfg.target == "auto" or not get_target(cfg.target).jetson:
        return
    plan = plan_build(cfg, manifest=manifest, env=BuildEnv.for_plan(cfg), write=False)
    check_build_memory(plan, detect_device())


def refuse_streams(cfg: BuildConfig, manifest) -> None:
    """--max-streams beyond what a named target holds (engines/streams.py): one line naming the fix, before
    TensorRT is imported or anything written (`auto` is checked once the GPU is known, still before any build)."""
    if cfg.max_streams == 1 or cfg.target == "auto":
        return
    problem = plan_build(cfg, manifest=manifest, env=BuildEnv.for_plan(cfg), write=False).streams_problem
    if problem:
        raise UsageError(problem)


def build_engines(cfg: BuildConfig, progress: Callable[[str], None] = lambda _: None) -> BuildArtifact:
    """Build every graph of the export for `cfg.target`: resolve the environment, plan (`plan.plan_build`
    says what, anywhere), execute the plan, record the plan plus what happened in the manifest."""
    from omnisift_edge.artifact.manifest import Build, load_manifest, write_manifest

    started = time.perf_counter()
    manifest = load_manifest(cfg.folder, verify=False)   # schema / corrupt JSON first: no machine fixes those
    refuse_build_memory(cfg, manifest)                   # a named Jetson target: before TensorRT is imported
    refuse_streams(cfg, manifest)                        # --max-streams beyond a named target: likewise
    env = resolve_env(cfg)
    # the plan first: a precision or workspace the build cannot honour is one line before hashing the export
    plan = plan_build(cfg, manifest=manifest, env=env, write=False)
    for problem in (plan.weights_problem, plan.memory_problem, plan.streams_problem):   # memory: `auto` on the board
        if problem:
            raise UsageError(problem)
    progress("verifying the export's checksums")
    checksums = verify_sources(cfg.folder, manifest)      # hashed once: write_manifest reuses them
    if plan.timing_cache is not None:
        plan.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    if env.without_gpu:
        progress(f"no GPU here: {env.flavour.title} builds ahead of time for compute capability "
                 f"{', '.join(map(flavours.format_cc, env.target.compute_capabilities))} (its CUDA-driver errors are muted)")
    entries = _execute(plan, env, progress)
    plan = dataclasses.replace(plan, path=engine_dir(cfg.folder, env.target.name) / PLAN_FILE)
    report = build_report(plan, env, entries)
    manifest = manifest.with_build(Build.from_dict(env.target.name, report, f"builds.{env.target.name}"))
    write_manifest(cfg.folder, manifest, known=checksums)
    progress(f"wrote {len(entries)} engines to {plan.engines[0].engine.parent}")
    engines = {ep.graph: ep.engine for ep in plan.engines}
    return BuildArtifact(cfg.folder, env.target, plan, engines, report, time.perf_counter() - started, manifest)


def _execute(plan: BuildPlan, env: BuildEnv, progress: Callable[[str], None]) -> dict[str, dict]:
    """Build every engine of `plan`; graph -> its report entry.

    Everything goes to a hidden staging folder, swapped in when complete: a failed or interrupted
    rebuild leaves the previous engines (and the manifest that describes them) as they were."""
    from polygraphy.backend import trt as polygraphy_trt

    final = engine_dir(plan.folder, env.target.name)
    staging = staging_dir(plan.folder, env.target.name)
    entries = {}
    try:
        for ep in plan.engines:
            progress(f"building {ep.graph} ({ep.mode.precision})")
            data, entries[ep.graph] = _build_engine(polygraphy_trt, ep, plan, env)
            atomic_write(staging / ep.engine.name, data)
        atomic_write(staging / PLAN_FILE, plan.json_bytes())
        publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return entries


def _build_engine(polygraphy_trt, ep: EnginePlan, plan: BuildPlan, env: BuildEnv) -> tuple[bytes, dict]:
    """(serialized engine, its report entry: the plan's record plus bytes, seconds, header validity, facts)."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    trt, flavour = env.module, env.flavour
    t0 = time.perf_counter()
    try:
        quiet = flavours.quiet_no_gpu_errors() if env.without_gpu else nullcontext()
        with G_LOGGER.verbosity(G_LOGGER.WARNING), quiet:   # TensorRT's warnings (int64 bindings...), errors
            data, facts = _build_one(trt, polygraphy_trt, ep, plan)
    except PolygraphyException as exc:   # raised after TensorRT logged the cause
        raise UsageError(f"TensorRT could not build {ep.graph} from {ep.onnx.name} ({exc}); the TensorRT log "
                         "above names the layer; `omnisift-edge lint` checks the graphs for TensorRT 10.3") from None
    seconds = time.perf_counter() - t0
    validity = flavours.engine_validity(trt, data)
    if validity.get("checked") and not validity["header_ok"]:
        raise UsageError(f"{flavour.title} built {ep.graph} but its runtime reports the engine as "
                         f"{', '.join(validity['diagnostics'])}; please report this with the command line")
    planned = ep.record(plan.folder)   # (the keys in manifest.json's order: file, bytes, build_seconds, onnx, ...)
    entry = {"file": planned.pop("file"), "bytes": len(data), "build_seconds": round(seconds, 2), **planned,
             "validity": validity}
    if ep.static:   # the in-place decoder: what the runtime binds (cache rows, shape inputs) and the proof
        entry.update(static_axes=dict(ep.static), **facts)
    return data, entry


def build_report(plan: BuildPlan, env: BuildEnv, engines: dict[str, dict]) -> dict:
    """manifest `builds.<target>`: the plan's record, where it was built, each engine's entry, when."""
    device, target = env.device, env.target
    if env.flavour.builds_without_gpu:   # built for a list of GPUs; the build machine's GPU (if any) is only noted
        where = {"device": "", "build_device": device.name if device else "none (ahead-of-time build on the CPU)",
                 "compute_capability": ",".join(map(flavours.format_cc, target.compute_capabilities)),
                 "device_memory_gb": None, "board": ""}
    else:
        where = {"device": device.name, "compute_capability": device.cc,
                 "device_memory_gb": round(device.memory_gb, 1), "board": device.board}
    planned = plan.record()
    first = {key: planned.pop(key) for key in ("target", "flavour", "tensorrt")}   # manifest.json's key order
    return {**first, **where, **planned, "engines": engines,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
