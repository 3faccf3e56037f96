"""Grouped prefill (issue 25.3): a file's chunks prefilled in few decoder calls give the cache and the
answer that chunk-by-chunk prefill gives (the decoder is causal); live media stays chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("av")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402
from tests.helpers import write_clip  # noqa: E402

RES = (112, 84)


@pytest.fixture(scope="module")
def folder(small_export):
    return small_export(ratios=(1.0, 0.25), resolution=RES)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("grouped") / "clip.mp4", seconds=7.0, w=84, h=112)


def _answer(folder, clip, backend, ratio, prefill_chunks):
    session = OmniSession(RuntimeConfig(folder, backend=backend, ratio=ratio, prefill_chunks=prefill_chunks))
    calls = []
    step = session.stream._step

    def counted(embeds, positions, want_logits=True):
        calls.append(positions.shape[-1])
        return step(embeds, positions, want_logits)

    session.stream._step = counted
    session.append_file(clip)
    tokens = list(session.ask_ids("What happens?", max_new_tokens=4))
    return session, tokens, calls


@pytest.mark.parametrize("backend, ratio", [("onnxruntime", 1.0), ("onnxruntime", 0.25), ("torch", 0.25)])
def test_grouped_prefill_equals_chunk_by_chunk(folder, clip, backend, ratio):
    one, one_tokens, one_calls = _answer(folder, clip, backend, ratio, 1)
    grouped, tokens, calls = _answer(folder, clip, backend, ratio, None)    # a file: all chunks in one call
    chunks = len(one.reports)
    assert chunks == 4 and len(calls) == len(one_calls) - (chunks - 1)      # 4 chunk calls became 1
    assert grouped.stream.kv_length() == one.stream.kv_length()
    a = np.asarray(grouped.stream.question_logits if backend != "torch" else grouped.stream.question_logits.float())
    b = np.asarray(one.stream.question_logits if backend != "torch" else one.stream.question_logits.float())
    np.testing.assert_allclose(a.reshape(-1), b.reshape(-1), rtol=0, atol=1e-4)
    assert tokens == one_tokens
    assert len(grouped.stream.window.segments) == len(one.stream.window.segments)   # each chunk its own segment


def test_live_media_stays_chunk_by_chunk_and_bad_values_are_one_line(folder):
    session = OmniSession(RuntimeConfig(folder, ratio=0.25))
    assert session.stream.prefill_chunks == 1
    with pytest.raises(UsageError, match="--prefill-chunks must be at least 1"):
        RuntimeConfig(folder, prefill_chunks=0)


def test_a_grouped_prefill_holds_no_more_rows_than_one_call_takes(folder, clip):
    """An engine's profile caps a call (TrtStream sets `max_prefill_rows` from its build report): the grouped
    prefill then flushes before a chunk would overflow it, with the same cache as chunk by chunk."""
    one, one_tokens, one_calls = _answer(folder, clip, "onnxruntime", 0.25, 1)
    chunk_rows = one_calls[0]                                   # one whole chunk's kept tokens; 4 chunk calls
    session = OmniSession(RuntimeConfig(folder, backend="onnxruntime", ratio=0.25, prefill_chunks=None))
    session.stream.max_prefill_rows = 2 * chunk_rows             # two whole chunks per call at most
    calls, step = [], session.stream._step
    session.stream._step = lambda e, p, want_logits=True: (calls.append(p.shape[-1]), step(e, p, want_logits))[1]
    session.append_file(clip)
    assert calls == [sum(one_calls[0:2]), sum(one_calls[2:4])] and max(calls) <= 2 * chunk_rows   # 4 calls -> 2
    assert list(session.ask_ids("What happens?", max_new_tokens=4)) == one_tokens
    assert session.stream.kv_length() == one.stream.kv_length()


def test_the_trt_stream_reads_its_call_limit_from_the_build_report():
    from omnisift_edge.artifact.records import Build
    from omnisift_edge.runtime.trt_pipeline import prefill_rows

    def report(engines, chunks):
        return Build.from_dict("rtx", {"tensorrt": "1.7", "compute_capability": "8.9", "prefill_chunks": chunks,
                                       "engines": engines}, "builds.rtx")

    scatter = {"decoder_scatter": {"file": "engines/rtx/d.engine", "static_axes": {"cache_length": 4096},
                                   "profiles": [{"name": "in_place", "axes": {"sequence_length": [1, 45, 720]}}]}}
    assert prefill_rows(report(scatter, 4)) == 720 and report(scatter, 4).prefill_chunks == 4
    packed = {"decoder": {"file": "engines/orin/d.engine", "profiles": [
        {"name": "prefill", "axes": {"sequence_length": [1, 45, 512], "past_sequence_length": [0, 10, 100]}},
        {"name": "decode", "axes": {"sequence_length": [1, 1, 1], "past_sequence_length": [1, 10, 600]}}]}}
    assert prefill_rows(report(packed, 1)) == 512
    with pytest.raises(Exception, match="prefill_chunks"):
        report(scatter, 0)
