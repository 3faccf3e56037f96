"""Engines stage: export folder + target -> TensorRT engines, a build report, a check against ONNX Runtime.

Entry: `run(BuildConfig) -> BuildArtifact` (= `build_engines`). Importing this package is cheap:
TensorRT, Polygraphy, ONNX and torch are imported inside the functions that need them (the names
below load their module on first use). docs/engines.md.

    from omnisift_edge.engines import BuildConfig, VerifyConfig, build_engines, plan_build, verify_engines

    plan = plan_build(BuildConfig("artifacts/", target="orin-agx"))       # anywhere: no TensorRT needed
    print(plan.summary())                                                 # + artifacts/engines/orin-agx/build_plan.json

    # export machine: omnisift_edge.export.reference.record_reference("artifacts/") (ONNX Runtime outputs)
    art = build_engines(BuildConfig("artifacts/", target="auto", precision="fp16"))   # on the GPU itself
    report = verify_engines(VerifyConfig("artifacts/"))                   # engines vs recorded ORT outputs
    assert report.ok, report.summary()

    build_engines(BuildConfig("artifacts/", target="rtx"))               # TensorRT-RTX: any machine, no GPU needed

Two flavours (runtime/trt_flavour.py): full TensorRT for the GPU presets and `auto`, TensorRT-RTX for `rtx`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BuildConfig": "plan", "BuildPlan": "plan", "plan_build": "plan",
    "BuildArtifact": "build", "build_engines": "build", "run": "build",
    "VerifyConfig": "verify", "VerifyReport": "verify", "verify_engines": "verify",
    "Target": "presets", "PRESETS": "presets", "TARGETS": "presets", "PRECISIONS": "presets", "resolve_target": "presets",
    "engine_profiles": "profiles",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    value = getattr(module, "build_engines" if name == "run" else name)
    globals()[name] = value
    return value
