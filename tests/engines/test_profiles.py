"""Optimization profiles derived from a real export's manifest."""

from __future__ import annotations

import copy

import pytest

from omnisift_edge.engines.profiles import (
    DEFAULT_MAX_PROMPT,
    decoder_limits,
    engine_profiles,
    graph_profiles,
    kept_tokens,
)
from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.tensors import is_batch_form


def _k(manifest, ratio):
    return next(r["kept_per_chunk"]["total"] for r in manifest["ratios"] if r["ratio"] == ratio)


def test_kept_tokens_read_from_the_graph_outputs_match_the_ratio_table(engine_manifest):
    ks = kept_tokens(engine_manifest)
    assert ks == {r["graph"]: r["kept_per_chunk"]["total"] for r in engine_manifest["ratios"]}
    assert ks["compressor_r1"] > ks["compressor_r0.25"] > 0


def test_static_graphs_have_one_fixed_profile_equal_to_the_manifest(engine_manifest):
    profiles = engine_profiles(engine_manifest)
    static = [g for g in engine_manifest["graphs"] if g != "decoder" and not is_batch_form(g)]   # batched: pools only
    assert set(static) == {"vision_encoder", "audio_encoder", "compressor_r1", "compressor_r0.25"}
    for graph in static:
        (profile,) = profiles[graph]
        assert profile.name == "static" and profile.dynamic_inputs == {}
        entry = engine_manifest["graphs"][graph]
        assert [n for n, _ in profile.inputs] == [t["name"] for t in entry["inputs"]]
        for tensor in entry["inputs"]:
            r = profile.shapes[tensor["name"]]
            assert r.min == r.opt == r.max == tuple(tensor["shape"])


def _check_decoder(manifest, profiles, max_context, s_max, k):
    prefill, decode = profiles
    assert (prefill.name, decode.name) == ("prefill", "decode")
    axes = {p.name: dict(p.axes) for p in profiles}
    assert axes["prefill"]["sequence_length"] == (1, k, s_max)
    assert axes["prefill"]["past_sequence_length"][0] == 0
    assert axes["prefill"]["past_sequence_length"][2] == max_context - s_max
    assert axes["decode"]["sequence_length"] == (1, 1, 1)
    assert axes["decode"]["past_sequence_length"][::2] == (1, max_context - 1)
    for name in ("prefill", "decode"):
        a = axes[name]
        assert a["batch_size"] == (1, 1, 1)
        assert a["total_sequence_length"] == tuple(p + s for p, s in zip(a["past_sequence_length"], a["sequence_length"]))
        assert a["total_sequence_length"][2] == max_context
        assert all(lo <= opt <= hi for lo, opt, hi in a.values())
    entry = manifest["graphs"]["decoder"]
    for profile in profiles:
        a = dict(profile.axes)
        assert set(profile.dynamic_inputs) == {t["name"] for t in entry["inputs"]}   # every decoder input is dynamic
        for tensor in entry["inputs"]:
            r = profile.shapes[tensor["name"]]
            for i, dim in enumerate(tensor["shape"]):
                want = (dim, dim, dim) if isinstance(dim, int) else a[dim]
                assert (r.min[i], r.opt[i], r.max[i]) == want, (profile.name, tensor["name"], i)


def test_decoder_profiles_follow_max_context_and_k(engine_manifest):
    m = engine_manifest
    s_max = max(max(kept_tokens(m).values()), DEFAULT_MAX_PROMPT)
    _check_decoder(m, engine_profiles(m)["decoder"], m["max_context"], s_max, _k(m, 0.25))


def test_max_context_override(engine_manifest):
    m = engine_manifest
    limits = decoder_limits(m, max_context=2048)
    assert limits.max_context == 2048
    _check_decoder(m, graph_profiles(m, "decoder", limits), 2048, limits.max_sequence, _k(m, 0.25))


def test_prompt_and_ratio_overrides(engine_manifest):
    m = engine_manifest
    k1, k25 = _k(m, 1.0), _k(m, 0.25)
    limits = decoder_limits(m, ratio=1.0, max_prompt=8)
    assert (limits.opt_sequence, limits.max_sequence, limits.main_ratio) == (k1, max(k1, 8), 1.0)
    limits = decoder_limits(m, max_prompt=1000)
    assert (limits.opt_sequence, limits.max_sequence) == (k25, 1000)
    _check_decoder(m, graph_profiles(m, "decoder", limits), m["max_context"], 1000, k25)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_context=10**6), r"longer than the export's 8192; the model has 32768 positions.*--max-context 32768 or less"),
    (dict(max_context=16384), r"longer than the export's 8192; export again with --max-context 16384"),
    (dict(max_context=100), r"leaves no room after one prefill of 512 tokens.*at least 513"),
    (dict(max_context=512), r"at least 513"),
    (dict(max_context="2048"), r"whole number"),
    (dict(ratio=0.5), r"no compressor for ratio 0.5 \(it has 0.25, 1\)"),
    (dict(max_prompt=0), r"at least 1 token"),
])
def test_bad_limits_are_usage_errors(engine_manifest, kwargs, message):
    with pytest.raises(UsageError, match=message):
        decoder_limits(engine_manifest, **kwargs)


def test_profiles_follow_the_manifest_not_a_copy_of_the_names(engine_manifest):
    """Rename a decoder input and change a fixed size in the manifest: the profiles follow."""
    m = copy.deepcopy(engine_manifest)
    inputs = m["graphs"]["decoder"]["inputs"]
    inputs[0]["name"] = "renamed_embeds"
    inputs[0]["shape"][2] = 99
    prefill, decode = graph_profiles(m, "decoder")
    assert "renamed_embeds" in prefill.dynamic_inputs and "inputs_embeds" not in prefill.shapes
    assert decode.shapes["renamed_embeds"].max[2] == 99


def test_an_axis_without_a_range_is_refused(engine_manifest):
    m = copy.deepcopy(engine_manifest)
    m["graphs"]["audio_encoder"]["inputs"][0]["shape"][0] = "n_mels"
    with pytest.raises(UsageError, match="axis 'n_mels' with no range"):
        graph_profiles(m, "audio_encoder")
    m = copy.deepcopy(engine_manifest)
    m["dynamic_axes"] = [*m["dynamic_axes"], "frames"]
    with pytest.raises(UsageError, match=r"dynamic axes \['frames'\]"):
        graph_profiles(m, "decoder")


def test_prefill_chunks_multiplies_the_prefill_rows_of_both_decoder_forms(engine_manifest):
    """build --prefill-chunks K: one prefill call takes K chunks' kept tokens (the largest K of the export);
    the prompt still counts when it is longer; the opt point stays one chunk of the main ratio."""
    from omnisift_edge.engines.profiles import SCATTER

    k_max = max(kept_tokens(engine_manifest).values())
    one = decoder_limits(engine_manifest, max_prompt=1)
    four = decoder_limits(engine_manifest, max_prompt=1, prefill_chunks=4)
    assert one.max_sequence == k_max and four.max_sequence == 4 * k_max and four.prefill_chunks == 4
    assert four.opt_sequence == one.opt_sequence
    (in_place,) = graph_profiles(engine_manifest, SCATTER, four)
    assert dict(in_place.axes)["sequence_length"] == (1, four.opt_sequence, 4 * k_max)
    prefill, _ = graph_profiles(engine_manifest, "decoder", four)
    assert dict(prefill.axes)["sequence_length"][2] == 4 * k_max
    assert dict(prefill.axes)["past_sequence_length"][2] == four.max_context - 4 * k_max
    assert decoder_limits(engine_manifest, max_prompt=10 * k_max, prefill_chunks=4).max_sequence == 10 * k_max


@pytest.mark.parametrize("chunks, match", [(0, "at least 1"), (-2, "at least 1"), (1.5, "whole number"),
                                            ("4", "whole number"), (True, "whole number"),
                                            (10**6, "rows per call .*use --prefill-chunks \\d+ or less")])
def test_bad_prefill_chunks_are_one_line(engine_manifest, chunks, match):
    with pytest.raises(UsageError, match=match):
        decoder_limits(engine_manifest, prefill_chunks=chunks)
