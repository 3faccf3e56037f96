"""`build --max-streams N`: the decode batch as a profile dimension, the memory plan's most streams per target,
and the refusals (anywhere: no TensorRT needed)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from omnisift_edge.artifact.manifest import read_manifest, write_manifest
from omnisift_edge.engines.memory import decode_activation_bytes, kv_bytes, largest_streams
from omnisift_edge.engines.plan import BuildConfig, plan_build
from omnisift_edge.engines.streams import target_streams
from omnisift_edge.errors import UsageError


def test_four_streams_make_the_decode_batch_a_profile_axis(engine_export):
    plan = plan_build(BuildConfig(engine_export, target="rtx", max_streams=4), write=False)
    scatter = plan.engine("decoder_scatter")
    assert [p.name for p in scatter.profiles] == ["in_place", "in_place_decode", "in_place_prefill"]
    first, decode, chunks = (dict(p.axes) for p in scatter.profiles)
    assert first["batch_size"] == (1, 1, 1) and decode["batch_size"] == (1, 4, 4)
    assert decode["sequence_length"] == (1, 1, 1) and decode["logits_length"] == (1, 1, 1)
    # the chunks of 4 streams prefilled together: 4 rows of at most one chunk's kept tokens, no logits needed
    from omnisift_edge.engines.profiles import kept_tokens

    kept = max(kept_tokens(read_manifest(engine_export)).values())
    assert chunks["batch_size"] == (1, 4, 4) and chunks["sequence_length"][2] == kept < first["sequence_length"][2]
    assert chunks["logits_length"][0] == 0 and dict(scatter.profiles[2].values)        # write_index per row
    assert "batch_size" not in scatter.static and scatter.static["cache_length"] == plan.max_context
    assert plan.record()["max_streams"] == 4 and plan.to_dict()["max_streams"] == 4
    assert "decode of up to 4 streams per call" in plan.summary()
    # the past/present form (TensorRT 10.3): prefill stays batch 1, decode takes 1 .. 4
    from omnisift_edge.engines.profiles import decoder_limits, graph_profiles

    limits = decoder_limits(read_manifest(engine_export), max_streams=4)
    profiles = graph_profiles(read_manifest(engine_export), "decoder", limits)
    assert [p.name for p in profiles] == ["prefill", "decode", "prefill_batch"]     # 0 and 1 as before
    prefill, dec, chunks = (dict(p.axes) for p in profiles)
    assert prefill["batch_size"] == (1, 1, 1) and dec["batch_size"] == (1, 4, 4)
    assert chunks["batch_size"] == (1, 4, 4) and chunks["sequence_length"][2] == kept   # a chunk per stream
    assert chunks["past_sequence_length"][2] + kept == limits.max_context == chunks["total_sequence_length"][2]
    one_stream = decoder_limits(read_manifest(engine_export))
    assert [p.name for p in graph_profiles(read_manifest(engine_export), "decoder", one_stream)] == ["prefill", "decode"]
    one = plan_build(BuildConfig(engine_export, target="rtx"), write=False)
    assert [dict(p.axes)["batch_size"] for p in one.engine("decoder_scatter").profiles] == [(1, 1, 1)]


def test_the_memory_plan_says_how_many_streams_each_target_holds(engine_export):
    plan = plan_build(BuildConfig(engine_export, target="rtx", max_streams=4), write=False).memory
    cfg = plan.config
    assert cfg.streams == 4 and plan.kv_cache == kv_bytes(cfg, plan.cache_tokens, 4)
    assert plan.activations["decoder (decode x streams)"] == decode_activation_bytes(cfg, plan.cache_tokens, 4)
    fits = {f.target: f for f in plan.fits}
    assert fits["orin-nano"].max_streams < fits["h100"].max_streams                # more memory, more streams
    n = fits["orin-nano"].max_streams
    weights, host = plan.weights, plan.host_tables
    usable = fits["orin-nano"].usable_gb
    from omnisift_edge.engines.presets import get_target

    from dataclasses import replace

    workspace = get_target("orin-nano").workspace_gb
    jetpack = replace(cfg, kv_in_place=False)             # each target's own form: past/present on TensorRT 10.3
    assert fits["orin-nano"].decoder_form.startswith("decoder ") and cfg.kv_in_place       # (this rtx plan: in place)
    assert largest_streams(jetpack, weights, host, True, workspace, usable) == n >= 1
    assert largest_streams(cfg, weights, host, True, workspace, usable) > n                # one slot buffer, not three
    assert largest_streams(replace(jetpack, max_context=cfg.max_context // 2), weights, host, True, workspace, usable) > n
    assert re.search(r"largest max context\s+streams", plan.summary())
    one = kv_bytes(replace(cfg, kv_in_place=True), 100, 1)
    assert kv_bytes(replace(cfg, kv_in_place=True), 100, 3) == 3 * one                # in place: one buffer a slot
    assert kv_bytes(replace(cfg, kv_in_place=False), 100, 3) == 9 * one               # slot + gathered past + present


@pytest.mark.parametrize("value, needle", [
    ("0", "--max-streams must be a whole number of streams, at least 1 \\(got '0'\\)"),
    ("two", "--max-streams must be a whole number of streams"),
    ("1.5", "--max-streams must be a whole number of streams"),
    ("1000000", "--max-streams 1000000 does not fit orin-nano's 8 GB at a \\d+-token cache: it holds \\d+ streams.*"
                "use --max-streams \\d+ or less, or a shorter --max-context"),
])
@pytest.mark.parametrize("plan_only", [False, True])
def test_bad_max_streams_is_one_line_exit_1_and_nothing_written(export_copy, value, needle, plan_only):
    from omnisift_edge.cli import main

    if plan_only and value == "1000000":
        result = CliRunner().invoke(main, ["build", str(export_copy), "--target", "orin-nano", "--max-streams", value,
                                           "--plan"])
        assert result.exit_code == 0 and "REFUSED: --max-streams 1000000 does not fit" in result.output
        return
    before = (export_copy / "manifest.json").read_bytes()
    result = CliRunner().invoke(main, ["build", str(export_copy), "--target", "orin-nano", "--max-streams", value,
                                       *(["--plan"] if plan_only else [])])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and re.search(needle, lines[0]), result.output
    assert not (export_copy / "engines").exists()
    assert (export_copy / "manifest.json").read_bytes() == before


def test_an_export_with_one_write_index_per_call_cannot_take_a_batch(export_copy):
    """Exports made before per-row write indices ([1]): --max-streams > 1 names the fix; 1 builds as before."""
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["kv_cache"]["decoder_scatter"]["entry"]["inputs"][2]["shape"] = [1]
    write_manifest(export_copy, manifest)
    with pytest.raises(UsageError, match="takes one write_index per call.*export again for --max-streams 2, or build "
                                         "with --max-streams 1"):
        plan_build(BuildConfig(export_copy, target="rtx", max_streams=2), write=False)
    assert plan_build(BuildConfig(export_copy, target="rtx"), write=False).max_streams == 1


def test_target_streams_is_the_fit_of_the_target(engine_export):
    plan = plan_build(BuildConfig(engine_export, target="orin-nano", max_streams=2), write=False)
    fit = next(f for f in plan.memory.fits if f.target == "orin-nano")
    assert target_streams(plan.memory, plan.target, plan.workspace_gb) == fit.max_streams and plan.streams_problem is None
