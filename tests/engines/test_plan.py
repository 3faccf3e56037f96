"""plan_build: JSON written, command lines that parse back to the profiles, works without TensorRT."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from omnisift_edge.engines.plan import BuildConfig, plan_build, precision_mode
from omnisift_edge.engines.profiles import engine_profiles
from omnisift_edge.artifact.tensors import is_batch_form
from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.manifest import read_manifest, write_manifest


def _shapes(spec: str, sep: str = "x") -> dict[str, tuple[int, ...]]:
    """trtexec's 'name:1x2x3,name2:4' -> {name: (1, 2, 3), ...}."""
    out = {}
    for item in spec.split(","):
        name, _, dims = item.rpartition(":")
        out[name] = tuple(int(d) for d in dims.split(sep))
    return out


def _trtexec_profiles(cmd: list[str]) -> list[dict[str, dict]]:
    profiles, current = [], None
    for arg in cmd:
        if arg.startswith("--profile="):
            assert int(arg.split("=")[1]) == len(profiles)
            current = {}
            profiles.append(current)
        for flag, key in (("--minShapes=", "min"), ("--optShapes=", "opt"), ("--maxShapes=", "max")):
            if arg.startswith(flag):
                if current is None:
                    current = {}
                    profiles.append(current)
                current[key] = _shapes(arg[len(flag):])
    return profiles


def _polygraphy_profiles(cmd: list[str]) -> list[dict[str, dict]]:
    """Parsed with Polygraphy's own parser, where it is installed."""
    try:
        from polygraphy.tools.args.util.util import parse_meta
    except ImportError:
        parse_meta = None
    groups, flag, values = [], None, []
    keys = {"--trt-min-shapes": "min", "--trt-opt-shapes": "opt", "--trt-max-shapes": "max"}
    for arg in [*cmd, "--end"]:
        if arg.startswith("--"):
            if flag in keys:
                groups.append((keys[flag], values))
            flag, values = arg, []
        else:
            values.append(arg)
    profiles = []
    for i in range(0, len(groups), 3):
        profile = {}
        for key, args in groups[i:i + 3]:
            if parse_meta is not None:
                meta = parse_meta(args, includes_dtype=False)
                profile[key] = {name: tuple(m.shape) for name, m in meta.items()}
            else:
                profile[key] = {a.rpartition(":")[0]: tuple(int(d) for d in a.rpartition(":")[2].strip("[]").split(","))
                                for a in args}
        profiles.append(profile)
    return profiles


def test_plan_json_written_and_printed(export_copy, engine_manifest):
    plan = plan_build(BuildConfig(export_copy, target="orin-agx"))
    assert plan.path == export_copy / "engines" / "orin-agx" / "build_plan.json"
    data = json.loads(plan.path.read_text())
    one_stream = [g for g in engine_manifest["graphs"] if not is_batch_form(g)]   # batched forms: --max-streams > 1
    assert [e["graph"] for e in data["engines"]] == one_stream
    assert data["target"]["name"] == "orin-agx" and data["tensorrt_assumed"].startswith("10.3")
    assert data["max_context"] == engine_manifest["max_context"]
    assert data == plan.to_dict()
    assert str(plan.path) in plan.summary() and "profile prefill" in plan.summary()
    first = plan.path.read_bytes()
    plan_build(BuildConfig(export_copy, target="orin-agx"))
    assert plan.path.read_bytes() == first                      # deterministic: no timestamps


def test_command_lines_parse_back_to_the_profiles(engine_export, engine_manifest):
    plan = plan_build(BuildConfig(engine_export, target="orin-nx", max_context=2048), write=False)
    profiles = engine_profiles(engine_manifest, max_context=2048)
    for ep in plan.engines:
        entry = engine_manifest["graphs"][ep.graph]
        trtexec = shlex.split(shlex.join(ep.trtexec(plan.workspace_mib, plan.timing_cache)))
        poly = ep.polygraphy(plan.workspace_mib, plan.timing_cache)
        assert f"--onnx={engine_export / entry['file']}" in trtexec
        assert f"--saveEngine={engine_export / 'engines' / 'orin-nx' / ep.graph}.engine" in trtexec
        assert "--memPoolSize=workspace:2048" in trtexec and f"--timingCacheFile={plan.timing_cache}" in trtexec
        assert poly[:3] == ["polygraphy", "convert", str(engine_export / entry["file"])]
        if ep.graph != "decoder":                                # trtexec refuses shapes for static models
            assert not any("Shapes=" in a for a in trtexec) and "--trt-min-shapes" not in poly
            continue
        want = [{k: {n: getattr(r, k) for n, r in p.shapes.items()} for k in ("min", "opt", "max")}
                for p in profiles["decoder"]]
        assert len(want) == 2
        for parsed in (_trtexec_profiles(trtexec), _polygraphy_profiles(poly)):
            assert parsed == want
            for profile in parsed:   # every decoder input of the manifest, with its shape
                for key in ("min", "opt", "max"):
                    assert set(profile[key]) == {t["name"] for t in entry["inputs"]}
        assert [a for a in trtexec if a.startswith("--profile=")] == ["--profile=0", "--profile=1"]
        hidden = engine_manifest["dims"]["hidden"]
        assert f"--minShapes=inputs_embeds:1x1x{hidden}," in " ".join(trtexec)


def test_precision_modes_in_the_commands(engine_export):
    plan = plan_build(BuildConfig(engine_export, target="orin-agx", precision="fp16"), write=False)
    for ep in plan.engines:
        cmd = ep.trtexec(plan.workspace_mib, plan.timing_cache)
        poly = ep.polygraphy(plan.workspace_mib, plan.timing_cache)
        if ep.graph.startswith("compressor"):    # always the graph's precision, strongly typed
            assert ep.mode.precision == "fp32" and "--stronglyTyped" in cmd and "--fp16" not in cmd
            assert "--strongly-typed" in poly
        else:                                    # fp32 graph + FP16 flag on TensorRT 10
            assert ep.mode.flags == ("FP16",) and "--fp16" in cmd and "--stronglyTyped" not in cmd
            assert "--fp16" in poly and "--strongly-typed" not in poly
    plan = plan_build(BuildConfig(engine_export, target="orin-agx", precision="fp32"), write=False)
    assert all(ep.mode.strongly_typed and not ep.mode.flags for ep in plan.engines)
    plan = plan_build(BuildConfig(engine_export, target="h100", precision="bf16"), write=False)
    assert "--bf16" in plan.engine("decoder").trtexec(plan.workspace_mib, plan.timing_cache)
    with pytest.raises(UsageError, match="TensorRT 11 removed the FP16/BF16 builder flags.*--dtype fp16"):
        plan_build(BuildConfig(engine_export, target="h100"), tensorrt="11.0.0", write=False)


def test_precision_mode_rules():
    mode = precision_mode("decoder", "fp16", "fp16", 10)
    assert mode.strongly_typed and mode.flags == () and "strongly typed" in mode.why
    assert precision_mode("decoder", "fp16", "fp16", 11).strongly_typed
    with pytest.raises(UsageError, match="fp16 ONNX; bf16 engines need an fp32 export"):
        precision_mode("decoder", "fp16", "bf16", 10)
    assert precision_mode("compressor_r0.25", "fp16", "fp16", 10).precision == "fp16"
    assert precision_mode("compressor_r0.25", "fp32", "bf16", 10).precision == "fp32"
    assert precision_mode("vision_encoder", "fp32", "bf16", 10).flags == ("BF16",)


def test_config_errors_name_the_fix(engine_export, tmp_path):
    with pytest.raises(UsageError, match="no bf16 support.*--precision fp16"):
        BuildConfig(engine_export, target="orin-nano", precision="bf16")
    with pytest.raises(UsageError, match="unknown --target 'jetson'"):
        BuildConfig(engine_export, target="jetson")
    with pytest.raises(UsageError, match="is not a folder"):
        BuildConfig(tmp_path / "missing")
    with pytest.raises(UsageError, match="--max-context must be a whole number"):
        BuildConfig(engine_export, max_context=True)
    with pytest.raises(UsageError, match="--workspace must be a positive"):
        BuildConfig(engine_export, workspace_gb=0)
    with pytest.raises(UsageError, match="more than orin-nano's 8 GB; try 1"):
        plan_build(BuildConfig(engine_export, target="orin-nano", workspace_gb=16), write=False)
    plan = plan_build(BuildConfig(engine_export, target="orin-nano", workspace_gb=0.5), write=False)
    assert "--memPoolSize=workspace:512" in plan.engine("decoder").trtexec(plan.workspace_mib, plan.timing_cache)
    with pytest.raises(UsageError, match="longer than the export's"):
        plan_build(BuildConfig(engine_export, target="l4", max_context=10**5), write=False)


def test_plan_without_tensorrt_importable(engine_export, no_tensorrt):
    plan = plan_build(BuildConfig(engine_export, target="l4"), write=False)
    assert sys.modules["tensorrt"] is None                    # nothing replaced the blocked import
    assert plan.target.name == "l4" and len(plan.engines) == 5


def test_plan_in_a_fresh_process_imports_no_tensorrt_polygraphy_or_torch(engine_export):
    for target in ("orin-nano", "rtx"):
        code = ("import sys; from omnisift_edge.engines import BuildConfig, plan_build; "
                f"p = plan_build(BuildConfig({str(engine_export)!r}, target={target!r}), write=False); "
                "print(sorted(m for m in ('tensorrt', 'tensorrt_rtx', 'polygraphy', 'torch', 'onnx', 'onnxruntime') "
                "if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]", target


def test_replanning_after_a_build_keeps_the_checksums_true(export_copy):
    """Once a build checksummed build_plan.json, a new plan rewrites it and the manifest with it."""
    plan_build(BuildConfig(export_copy, target="orin-agx"))
    write_manifest(export_copy, read_manifest(export_copy))           # as build_engines does
    assert "engines/orin-agx/build_plan.json" in read_manifest(export_copy)["files"]
    plan_build(BuildConfig(export_copy, target="orin-agx", precision="fp32"))
    manifest = read_manifest(export_copy, verify=True)                 # would raise on a stale checksum
    assert json.loads((export_copy / "engines/orin-agx/build_plan.json").read_text())["precision"] == "fp32"
    assert manifest["files"]["engines/orin-agx/build_plan.json"]["bytes"] > 0


@pytest.mark.parametrize("target, tensorrt, form, why", [
    ("rtx", None, "decoder_scatter", "TensorRT-RTX has the KVCacheUpdate layer"),
    ("h100", "10.15.0", "decoder_scatter", "TensorRT 10.15.0 >= 10.15 has the KVCacheUpdate layer"),
    ("orin-agx", "10.3.0.30", "decoder", "TensorRT 10.3.0.30 has no KVCacheUpdate layer (needs >= 10.15; JetPack 6"),
])
def test_plan_says_which_decoder_form_each_target_gets_and_why(engine_export, target, tensorrt, form, why):
    plan = plan_build(BuildConfig(engine_export, target=target), tensorrt=tensorrt, write=False)
    graphs = [e.graph for e in plan.engines]
    assert form in graphs and ({"decoder", "decoder_scatter"} - {form}).isdisjoint(graphs)   # never both
    assert plan.decoder_form[0] == form and why in plan.decoder_form[1]
    assert f"decoder form: {form}, " in plan.summary() and plan.to_dict()["decoder_form"]["graph"] == form
    # the memory plan counts one cache buffer in place, past + present for the fallback
    assert ("KV cache (in place)" if form == "decoder_scatter" else "KV cache (past + present)") in plan.summary()
    manifest = read_manifest(engine_export, verify=False)
    t = manifest["thinker_shape"]["text"]
    one_buffer = 2 * t["layers"] * t["kv_heads"] * t["head_dim"] * (4 if plan.precision == "fp32" else 2)
    assert plan.memory.kv_per_token == one_buffer * (1 if form == "decoder_scatter" else 2)
    if form == "decoder_scatter":
        manifest = read_manifest(engine_export, verify=False)
        c = manifest["max_context"]
        (profile,) = plan.engine(form).profiles
        assert profile.name == "in_place" and dict(profile.values) == {"write_index": (0, (c - 512) // 2, c - 1)}
        axes = dict(profile.axes)
        assert axes["logits_length"] == (0, 1, 1) and axes["cache_length"] == (c, c, c)
        assert axes["sequence_length"] == (1, plan.engine(form).profiles[0].shapes["inputs_embeds"].opt[1], 512)
        assert plan.engine(form).static == {"batch_size": 1, "cache_length": c}
        assert "past_sequence_length" not in axes                              # the cache is static


def test_an_export_without_the_scatter_graph_keeps_the_fallback(export_copy):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    del manifest["kv_cache"]["decoder_scatter"]
    write_manifest(export_copy, manifest)
    plan = plan_build(BuildConfig(export_copy, target="rtx"), write=False)
    assert "decoder" in [e.graph for e in plan.engines] and "no decoder_scatter" in plan.decoder_form[1]


def test_build_plan_prefill_chunks_sizes_the_profiles_the_report_and_the_memory(export_copy, engine_manifest):
    """build --plan --prefill-chunks 4: the in-place decoder's profile takes 4 chunks' kept tokens per call
    (the default 512-token prompt still counts), the report records it, the memory plan grows with it."""
    from click.testing import CliRunner

    from omnisift_edge.cli import main
    from omnisift_edge.engines.profiles import kept_tokens

    k_max = max(kept_tokens(engine_manifest).values())
    one = plan_build(BuildConfig(export_copy, target="rtx", max_prompt=1), write=False)
    four = plan_build(BuildConfig(export_copy, target="rtx", max_prompt=1, prefill_chunks=4), write=False)
    rows = lambda plan: dict(plan.engine("decoder_scatter").profiles[0].axes)["sequence_length"][2]  # noqa: E731
    assert (rows(one), rows(four)) == (k_max, 4 * k_max)
    assert four.record()["prefill_chunks"] == 4 and four.record()["max_prefill_tokens"] == 4 * k_max
    assert four.memory.activations["decoder"] > one.memory.activations["decoder"]
    assert four.memory.to_dict()["prefill_tokens"] == 4 * k_max
    result = CliRunner().invoke(main, ["build", str(export_copy), "--target", "rtx", "--plan", "--prefill-chunks", "4"])
    assert result.exit_code == 0, result.output
    assert f"prefill up to {max(4 * k_max, 512)} tokens (4 chunks per call" in result.output
    assert json.loads((export_copy / "engines" / "rtx" / "build_plan.json").read_text())["prefill_chunks"] == 4


@pytest.mark.parametrize("value, needle", [("0", "at least 1"), ("100000", "rows per call")])
def test_build_bad_prefill_chunks_is_one_line_exit_1(export_copy, value, needle):
    from click.testing import CliRunner

    from omnisift_edge.cli import main

    result = CliRunner().invoke(main, ["build", str(export_copy), "--target", "rtx", "--plan", "--prefill-chunks", value])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and needle in lines[0], result.output
