"""`build_engines(BuildConfig) -> BuildArtifact`: TensorRT engines from an export folder.

Executes the plan of `plan.plan_build` with TensorRT's Python API through Polygraphy's loaders
(NetworkFromOnnxPath -> CreateConfig with the profiles -> EngineBytesFromNetwork), one timing
cache shared by every build for the same GPU and TensorRT version. Each engine is written
atomically (temporary file + os.replace) into a hidden staging folder that replaces
DIR/engines/<target>/ once every engine is built; then a build report is added to the manifest
under `builds.<target>` and manifest.json is rewritten (checksums of the engines included).

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

from omnisift_edge.engines.plan import (BuildConfig, BuildPlan, EnginePlan, plan_build, target_flavour,
                                        weights_form_problem)
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


def _build_one(trt, polygraphy_trt, ep: EnginePlan, plan: BuildPlan) -> tuple[bytes, dict]:
    """(serialized engine, facts about its network: the in-place form's KV_CACHE_UPDATE layers)."""
    network, shape_tensors, facts = None, set(), {}
    if ep.static:   # the in-place decoder: its cache axis fixed in memory before parsing (kv_form.py)
        network = parse_static(trt, polygraphy_trt, ep.onnx, ep.mode.strongly_typed, ep.static)
        shape_tensors = shape_inputs(network[1])
        facts = {"kv_cache_updates": kv_cache_updates(trt, network[1]), "shape_inputs": sorted(shape_tensors)}
    else:           # parsed lazily by Polygraphy's loader
        network = polygraphy_trt.NetworkFromOnnxPath(str(ep.onnx), strongly_typed=ep.mode.strongly_typed)
    profiles = None
    if ep.dynamic:
        profiles = []
        for profile in ep.profiles:
            p = polygraphy_trt.Profile()
            for name, r in profile.dynamic_inputs.items():
                p.add(name, min=r.min, opt=r.opt, max=r.max)
            for name, (lo, opt, hi) in profile.values:   # a shape tensor's value range, where TensorRT made it one
                if name in shape_tensors:
                    p.add(name, min=(lo,), opt=(opt,), max=(hi,))
            profiles.append(p)
    config = _create_config(
        trt, polygraphy_trt, plan, fp16="FP16" in ep.mode.flags, bf16="BF16" in ep.mode.flags, tf32=False,
        profiles=profiles, memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan.workspace_mib << 20},
        load_timing_cache=plan.timing_cache and str(plan.timing_cache))
    loader = polygraphy_trt.EngineBytesFromNetwork(network, config=config,
                                                   save_timing_cache=plan.timing_cache and str(plan.timing_cache))
    return bytes(memoryview(loader())), facts   # IHostMemory (TensorRT 10) or bytes


def build_engines(cfg: BuildConfig, progress: Callable[[str], None] = lambda _: None) -> BuildArtifact:
    """Build every graph of the export for `cfg.target` (`plan.plan_build` says what, anywhere)."""
    from omnisift_edge.artifact.manifest import Build, load_manifest, write_manifest

    started = time.perf_counter()
    manifest = load_manifest(cfg.folder, verify=False)   # schema / corrupt JSON first: no machine fixes those
    flavour = flavours.get_flavour(target_flavour(cfg.target))
    trt = require_tensorrt(flavour.name)
    require("polygraphy", extra="rtx" if flavour.builds_without_gpu else "engines")
    from polygraphy.backend import trt as polygraphy_trt
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    if flavour.builds_without_gpu:   # ahead of time: a GPU is only described in the report when there is one
        device = detect_device()
        target = resolve_target(cfg.target)
        _check_installed_compute_capabilities(trt, flavour, cfg.compute_capabilities or target.compute_capabilities)
    else:
        device = require_device()
        target = resolve_target(cfg.target, device)
        check_device(target, device)
    # the plan first: a precision or workspace the build cannot honour is one line before hashing the export
    plan = plan_build(cfg, manifest=manifest, target=target, tensorrt=str(trt.__version__), write=False)
    problem = weights_form_problem(manifest, str(trt.__version__), flavour.name)
    if problem:
        raise UsageError(problem)
    target = plan.target   # with the compute capabilities of cfg
    progress("verifying the export's checksums")
    verify_sources(cfg.folder, manifest)
    if plan.timing_cache is not None:
        plan.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    if flavour.builds_without_gpu and device is None:
        progress(f"no GPU here: {flavour.title} builds ahead of time for compute capability "
                 f"{', '.join(map(flavours.format_cc, target.compute_capabilities))} (its CUDA-driver errors are muted)")

    # everything goes to a hidden staging folder, swapped in when complete: a failed or interrupted
    # rebuild leaves the previous engines (and the manifest that describes them) as they were
    final = engine_dir(cfg.folder, target.name)
    staging = staging_dir(cfg.folder, target.name)
    engines, report_engines = {}, {}
    try:
        for ep in plan.engines:
            progress(f"building {ep.graph} ({ep.mode.precision})")
            t0 = time.perf_counter()
            try:
                quiet = flavours.quiet_no_gpu_errors() if flavour.builds_without_gpu and device is None else nullcontext()
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
            atomic_write(staging / ep.engine.name, data)
            engines[ep.graph] = ep.engine
            report_engines[ep.graph] = {
                "file": str(ep.engine.relative_to(cfg.folder)), "bytes": len(data), "build_seconds": round(seconds, 2),
                "onnx": ep.onnx.name, "precision": ep.mode.precision, "strongly_typed": ep.mode.strongly_typed,
                "flags": list(ep.mode.flags), "profiles": [p.to_dict() for p in ep.profiles], "validity": validity}
            if ep.static:   # the in-place decoder: what the runtime binds (cache rows, shape inputs) and the proof
                report_engines[ep.graph].update(static_axes=dict(ep.static), **facts)
        atomic_write(staging / PLAN_FILE, plan.json_bytes())
        publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    plan = dataclasses.replace(plan, path=final / PLAN_FILE)

    if flavour.builds_without_gpu:   # built for a list of GPUs; the build machine's GPU (if any) is only noted
        where = {"device": "", "build_device": device.name if device else "none (ahead-of-time build on the CPU)",
                 "compute_capability": ",".join(map(flavours.format_cc, target.compute_capabilities)),
                 "device_memory_gb": None, "board": ""}
    else:
        where = {"device": device.name, "compute_capability": device.cc,
                 "device_memory_gb": round(device.memory_gb, 1), "board": device.board}
    report = {
        "target": target.name, "flavour": flavour.name, "tensorrt": str(trt.__version__), **where,
        "precision": plan.precision, "max_context": plan.max_context, "max_prefill_tokens": plan.max_sequence,
        "main_ratio": plan.main_ratio, "workspace_gb": plan.workspace_gb,
        "decoder_form": {"graph": plan.decoder_form[0], "why": plan.decoder_form[1]}, "timing_cache": plan.timing_cache and str(plan.timing_cache),
        "warnings": list(plan.warnings), "engines": report_engines,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest = manifest.with_build(Build.from_dict(target.name, report, f"builds.{target.name}"))
    write_manifest(cfg.folder, manifest)
    progress(f"wrote {len(engines)} engines to {plan.engines[0].engine.parent}")
    return BuildArtifact(cfg.folder, target, plan, engines, report, time.perf_counter() - started, manifest)
