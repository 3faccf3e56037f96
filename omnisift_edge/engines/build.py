"""`build_engines(BuildConfig) -> BuildArtifact`: TensorRT engines from an export folder.

Executes the plan of `plan.plan_build` with TensorRT's Python API through Polygraphy's loaders
(NetworkFromOnnxPath -> CreateConfig with the profiles -> EngineBytesFromNetwork), one timing
cache shared by every build for the same GPU and TensorRT version. Each engine is written
atomically (temporary file + os.replace) into a hidden staging folder that replaces
DIR/engines/<target>/ once every engine is built; then a build report is added to the manifest
under `builds.<target>` and manifest.json is rewritten (checksums of the engines included).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omnisift_edge.engines.plan import BuildConfig, BuildPlan, EnginePlan, plan_build
from omnisift_edge.engines.presets import Target, check_device, resolve_target
from omnisift_edge.engines.store import PLAN_FILE, atomic_write, engine_dir, publish, staging_dir, verify_sources
from omnisift_edge.errors import UsageError, require
from omnisift_edge.runtime.trt_env import DeviceInfo, detect_device, require_device, require_tensorrt

@dataclass
class BuildArtifact:
    folder: Path
    target: Target
    plan: BuildPlan
    engines: dict[str, Path]
    report: dict                       # what went into manifest["builds"][target]
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict, repr=False)


def _build_one(trt, polygraphy_trt, ep: EnginePlan, plan: BuildPlan) -> bytes:
    network = polygraphy_trt.NetworkFromOnnxPath(str(ep.onnx), strongly_typed=ep.mode.strongly_typed)
    profiles = None
    if ep.dynamic:
        profiles = []
        for profile in ep.profiles:
            p = polygraphy_trt.Profile()
            for name, r in profile.dynamic_inputs.items():
                p.add(name, min=r.min, opt=r.opt, max=r.max)
            profiles.append(p)
    config = polygraphy_trt.CreateConfig(
        fp16="FP16" in ep.mode.flags, bf16="BF16" in ep.mode.flags, tf32=False, profiles=profiles,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan.workspace_mib << 20},
        load_timing_cache=str(plan.timing_cache))
    loader = polygraphy_trt.EngineBytesFromNetwork(network, config=config, save_timing_cache=str(plan.timing_cache))
    return bytes(memoryview(loader()))   # IHostMemory (TensorRT 10) or bytes


def build_engines(cfg: BuildConfig, progress: Callable[[str], None] = lambda _: None) -> BuildArtifact:
    """Build every graph of the export for `cfg.target` (`plan.plan_build` says what, anywhere)."""
    from omnisift_edge.artifact.manifest import read_manifest, write_manifest

    started = time.perf_counter()
    manifest = read_manifest(cfg.folder, verify=False)   # schema / corrupt JSON first: no machine fixes those
    trt = require_tensorrt()
    require("polygraphy", extra="engines")
    from polygraphy.backend import trt as polygraphy_trt
    from polygraphy.exception import PolygraphyException

    device = require_device()
    target = resolve_target(cfg.target, device)
    check_device(target, device)
    target.check_precision(cfg.precision)
    progress("verifying the export's checksums")
    verify_sources(cfg.folder, manifest)
    plan = plan_build(cfg, manifest=manifest, target=target, tensorrt=str(trt.__version__), write=False)
    plan.timing_cache.parent.mkdir(parents=True, exist_ok=True)

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
                data = _build_one(trt, polygraphy_trt, ep, plan)
            except PolygraphyException as exc:   # raised after TensorRT logged the cause
                raise UsageError(f"TensorRT could not build {ep.graph} from {ep.onnx.name} ({exc}); the TensorRT log "
                                 "above names the layer; `omnisift-edge lint` checks the graphs for TensorRT 10.3") from None
            seconds = time.perf_counter() - t0
            atomic_write(staging / ep.engine.name, data)
            engines[ep.graph] = ep.engine
            report_engines[ep.graph] = {
                "file": str(ep.engine.relative_to(cfg.folder)), "bytes": len(data), "build_seconds": round(seconds, 2),
                "onnx": ep.onnx.name, "precision": ep.mode.precision, "strongly_typed": ep.mode.strongly_typed,
                "flags": list(ep.mode.flags), "profiles": [p.to_dict() for p in ep.profiles]}
        atomic_write(staging / PLAN_FILE, plan.json_bytes())
        publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    plan = dataclasses.replace(plan, path=final / PLAN_FILE)

    report = {
        "target": target.name, "tensorrt": str(trt.__version__), "device": device.name,
        "compute_capability": device.cc, "device_memory_gb": round(device.memory_gb, 1), "board": device.board,
        "precision": cfg.precision, "max_context": plan.max_context, "max_prefill_tokens": plan.max_sequence,
        "main_ratio": plan.main_ratio, "workspace_gb": plan.workspace_gb, "timing_cache": str(plan.timing_cache),
        "warnings": list(plan.warnings), "engines": report_engines,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest = dict(manifest, builds={**manifest.get("builds", {}), target.name: report})
    write_manifest(cfg.folder, manifest)
    progress(f"wrote {len(engines)} engines to {plan.engines[0].engine.parent}")
    return BuildArtifact(cfg.folder, target, plan, engines, report, time.perf_counter() - started, manifest)
