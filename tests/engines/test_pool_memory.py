"""engines/pool_memory.py: a pool build's memory plan counts what a TensorRT stream pool loads (the batched
chunk engines, not the one-chunk ones) and its batched chunk prefill; the one-stream plan is as before.

"main's" numbers below are computed with the formulas the plan had before this change (not hard-coded)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from omnisift_edge.artifact.manifest import read_manifest
from omnisift_edge.engines.memory import (GB, _fit_target, activation_bytes, kv_bytes, kv_per_token, plan_config,
                                          plan_memory)
from omnisift_edge.engines.plan import BuildConfig, plan_build
from omnisift_edge.engines.pool_memory import (STREAMS_CAP, batch_activation_bytes, decode_activation_bytes,
                                               largest_streams, pool_weights, prefill_batch_activation_bytes)
from omnisift_edge.engines.presets import get_target
from omnisift_edge.engines.profiles import kept_tokens

SEVEN_B = Path(__file__).parents[1] / "model" / "configs" / "qwen2_5_omni_7b.json"
POOL_LOADS = {"vision_encoder_batch", "audio_encoder_batch", "compressor_batch", "decoder"}


def _target(fit):
    return _fit_target(fit.target, get_target)


def _main_need(plan, fit) -> float:
    """main's need: every weight in the table + host (Jetson) + KV + the largest activation + workspace."""
    t = _target(fit)
    return (sum(plan.weights.values()) + (plan.host_tables if t.jetson else 0) + plan.kv_cache
            + max(plan.activations.values()) + t.workspace_gb * GB) / GB


def _bisect(fits, cap: int) -> int:
    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _main_context(plan, fit) -> int:
    """main's largest max context of a one-stream plan (multiples of 256)."""
    t, cfg = _target(fit), plan.config

    def fits(blocks: int) -> bool:
        tokens = blocks * 256
        c = replace(cfg, max_context=max(tokens, 1), window=None)
        acts = max(max(activation_bytes(c, tokens).values()), decode_activation_bytes(c, tokens, 1))
        total = sum(plan.weights.values()) + (plan.host_tables if t.jetson else 0) + kv_bytes(c, tokens) + acts
        return (total + t.workspace_gb * GB) / GB <= fit.usable_gb

    return 256 * _bisect(fits, cfg.shape.text.max_position // 256)


def _main_streams(plan, fit, cfg=None) -> int:
    """main's streams column: every weight in the table, calls without the batched chunk prefill."""
    t, cfg = _target(fit), cfg or plan.config
    cache = cfg.window or cfg.max_context
    acts = max(activation_bytes(cfg, cache).values())
    fixed = sum(plan.weights.values()) + (plan.host_tables if t.jetson else 0) + t.workspace_gb * GB

    def fits(n: int) -> bool:
        calls = max(acts, decode_activation_bytes(cfg, cache, n), batch_activation_bytes(cfg, n))
        return (fixed + kv_bytes(cfg, cache, n) + calls) / GB <= fit.usable_gb

    return _bisect(fits, STREAMS_CAP)


def test_the_pool_plan_counts_the_batched_engines_not_the_one_chunk_ones(engine_export):
    pool = plan_build(BuildConfig(engine_export, target="rtx", max_streams=4), write=False).memory
    assert POOL_LOADS < set(pool.weights) and {"vision_encoder", "audio_encoder", "compressor"} < set(pool.weights)
    assert set(pool.loaded_weights) == POOL_LOADS                                  # both on disk, one set loaded
    assert pool.weights_total == sum(pool.weights[g] for g in POOL_LOADS)
    one_chunk = sum(pool.weights[g] for g in ("vision_encoder", "audio_encoder", "compressor"))
    assert pool.weights_total == sum(pool.weights.values()) - one_chunk > 0
    for fit in pool.fits:
        t = _target(fit)
        need = pool.device_bytes(t.jetson, t.workspace_gb) / GB
        assert fit.need_gb == round(need, 2) and need == pytest.approx(_main_need(pool, fit) - one_chunk / GB)
    record = pool.to_dict()
    assert record["loaded_weights_bytes"] == pool.weights_total
    assert record["weights_loaded_by"] == {"vision_encoder": "sessions", "audio_encoder": "sessions",
                                           "compressor": "sessions", "decoder": "both", "vision_encoder_batch": "pool",
                                           "audio_encoder_batch": "pool", "compressor_batch": "pool"}
    lines = pool.summary().splitlines()
    assert any(line.split()[1:2] == ["vision_encoder"] and "a session / the C++ app" in line for line in lines)
    assert any(line.split()[1:2] == ["vision_encoder_batch"] and "(loaded by the pool)" in line for line in lines)
    assert any(line.strip().startswith("weights the pool loads") for line in lines)
    # an export without the batched graphs: the pool loads the one-chunk engines, so they count
    plain = {g: b for g, b in pool.weights.items() if not g.endswith("_batch")}
    assert pool_weights(plain) == plain


def test_the_batched_chunk_prefill_is_counted_and_grows_with_the_streams(engine_export):
    plans = {n: plan_build(BuildConfig(engine_export, target="rtx", max_streams=n), write=False).memory
             for n in (1, 2, 4, 8)}
    cfg, cache = plans[4].config, plans[4].cache_tokens
    assert cfg.chunk_tokens == max(kept_tokens(read_manifest(engine_export)).values())   # K_max of the profile
    one_row = activation_bytes(replace(cfg, prefill=cfg.chunk_tokens), cache)["decoder"]
    rows = {n: p.activations["decoder (chunk prefill x streams)"] for n, p in plans.items() if n > 1}
    assert rows == {n: n * one_row for n in (2, 4, 8)} and rows[2] < rows[4] < rows[8]
    assert rows[4] == prefill_batch_activation_bytes(cfg, cache, 4)
    assert "decoder (chunk prefill x streams)" not in plans[1].activations
    # where it is the largest call (every token of a chunk kept, 8 streams), the need counts it
    big = plan_config(SEVEN_B, weights="int4", max_context=8192, streams=8, kv_in_place=True)
    largest = max(big.activations, key=big.activations.get)
    assert largest == "decoder (chunk prefill x streams)" and big.activations[largest] > big.activations["decoder"]
    h100 = next(f for f in big.fits if f.target == "h100")
    assert h100.need_gb == round((big.weights_total + big.kv_cache + big.activations[largest]
                                  + get_target("h100").workspace_gb * GB) / GB, 2)


@pytest.mark.parametrize("source", ["export", "config"])
def test_the_one_stream_plan_is_what_main_computed(engine_export, source):
    plan = (plan_build(BuildConfig(engine_export, target="rtx"), write=False).memory if source == "export" else
            plan_config(SEVEN_B, weights="int4", max_context=8192))
    cfg = plan.config
    assert cfg.streams == 1 and not any(g.endswith("_batch") for g in plan.weights)
    assert plan.loaded_weights == plan.weights and plan.weights_total == sum(plan.weights.values())
    assert plan.kv_cache == kv_per_token(cfg) * plan.cache_tokens
    assert plan.activations == activation_bytes(cfg, plan.cache_tokens)          # no pool terms
    for fit in plan.fits:
        need = _main_need(plan, fit)
        assert fit.need_gb == round(need, 2) and fit.fits == (need <= fit.usable_gb)
        assert fit.max_context == _main_context(plan, fit), fit.target


def test_the_streams_a_target_holds_follow_the_pool_plan():
    """The streams column moves both ways from main's: up where the one-chunk engines no longer count twice,
    down where N chunk prefills outgrow the calls main counted."""
    plan = plan_config(SEVEN_B, weights="int4", max_context=8192, streams=4, kept_per_chunk=128, kv_in_place=True)
    fits = {f.target: f for f in plan.fits}
    assert fits["orin-nx"].max_streams > _main_streams(plan, fits["orin-nx"]) >= 1   # 2.5 GB of weights less
    every = plan_config(SEVEN_B, weights="int4", max_context=8192, streams=4, kv_in_place=True)   # ratio 1: 562 rows
    a100 = next(f for f in every.fits if f.target == "a100")
    assert 2 <= a100.max_streams < _main_streams(every, a100)
    # the column is the largest N whose own pool plan fits the target
    for fit in (fits["orin-agx-32"], a100):
        source = plan if fit is fits["orin-agx-32"] else every
        t, n = _target(fit), fit.max_streams
        need = {k: plan_memory(replace(source.config, streams=k), targets=()).device_bytes(t.jetson, t.workspace_gb)
                for k in (n, n + 1)}
        assert need[n] <= fit.usable_gb * GB < need[n + 1], fit.target
    # engines only a session loads do not change it; a bigger batched engine does
    t, cfg, w = _target(a100), every.config, every.weights
    args = (every.host_tables, t.jetson, t.workspace_gb, a100.usable_gb)
    assert largest_streams(cfg, {**w, "vision_encoder": w["vision_encoder"] + 20 * GB}, *args) == a100.max_streams
    assert largest_streams(cfg, {**w, "vision_encoder_batch": w["vision_encoder_batch"] + 20 * GB}, *args) < a100.max_streams


def test_builds_refuse_by_the_pool_plan(engine_export):
    plan = plan_build(BuildConfig(engine_export, target="orin-nano", max_streams=2), write=False)
    fit = next(f for f in plan.memory.fits if f.target == "orin-nano")
    most = fit.max_streams
    assert most == largest_streams(plan.memory.config, plan.memory.weights, plan.memory.host_tables, True,
                                   plan.workspace_gb, fit.usable_gb) >= 2
    at_most = plan_build(BuildConfig(engine_export, target="orin-nano", max_streams=most), write=False)
    over = plan_build(BuildConfig(engine_export, target="orin-nano", max_streams=most + 1), write=False)
    assert at_most.streams_problem is None
    assert over.streams_problem and f"it holds {most} streams" in over.streams_problem
    assert f"beside {over.memory.weights_total / GB:.1f} GB of weights" in over.streams_problem
