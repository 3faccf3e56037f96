"""The torch stream pool: one model, KV slots of torch buffers, decode steps of every answering stream in one
forward; each stream equals a lone torch `OmniSession` (answers, logits, kept sets)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.pool import open_pool  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402
from tests.runtime.test_pool import PLANS, RES, _script  # noqa: E402


@pytest.fixture(scope="module")
def cfg(small_export):
    return RuntimeConfig(small_export(resolution=RES), backend="torch", ratio=0.25)


def _run(session, plan, *, pause=0.0):
    """`_script` (answers, every logits row) plus the stream's kept sets (per chunk, into its token order)."""
    answers, logits = _script(session, plan, pause=pause)
    return answers, logits, [k.tolist() for k in session.stream.kept_indices]


def _camera_threads(fn, n):
    errors = []

    def run(i):
        try:
            fn(i)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _assert_same(pooled, alone):
    assert pooled[0] == alone[0]                                               # greedy answers
    assert pooled[2] == alone[2]                                               # kept sets, chunk by chunk
    assert len(pooled[1]) == len(alone[1])
    for got, want in zip(pooled[1], alone[1]):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)               # question + every decode step


def test_four_streams_in_a_torch_pool_match_four_separate_sessions(cfg):
    alone = [_run(OmniSession(cfg), plan) for plan in PLANS]
    pool = open_pool(cfg, max_streams=4)
    got = {}

    def camera(i):
        time.sleep(0.15 * i)                     # streams start, ask and end at different times
        got[i] = _run(pool.open_stream(), PLANS[i], pause=0.02 * i)

    _camera_threads(camera, 4)
    for i in range(4):
        _assert_same(got[i], alone[i])
    questions = sum(len(plan[2]) for plan in PLANS)
    assert pool.scheduler.calls["decode_steps"] == sum(len(got[i][1]) for i in range(4)) - questions
    assert pool.open_streams == 0 and pool.free_slots == 4


def test_torch_answers_running_together_share_decode_calls(cfg):
    plans = [(2.0, 10 + i, [("What happens?", 8)]) for i in range(4)]
    alone = [_run(OmniSession(cfg), plan) for plan in plans]
    pool = open_pool(cfg, max_streams=4)
    pool.scheduler.gather_seconds = 2.0          # a loaded machine: wait long enough for the other steps
    streams = [pool.open_stream() for _ in plans]
    assert all(s.stream.model is pool.backend.model for s in streams)           # one model for all
    for stream, (seconds, seed, _) in zip(streams, plans):
        clip = synthetic_clip(seconds, *RES, seed=seed)
        stream.append_chunk(clip.frames, clip.pcm)
    barrier, got = threading.Barrier(4), {}

    def ask(i):
        barrier.wait()
        got[i] = list(streams[i].ask_ids(plans[i][2][0][0], max_new_tokens=8))

    _camera_threads(ask, 4)
    assert [got[i] for i in range(4)] == [answers[0] for answers, _, _ in alone]
    calls = pool.scheduler.calls
    assert calls["decode_batches"] < calls["decode_steps"]                    # steps shared calls
    pool.close()
    assert pool.free_slots == 4


@pytest.mark.parametrize("decoding", [(0, 2), (0, 1)], ids=["gathered", "contiguous"])
def test_batched_torch_decode_rows_equal_lone_steps(cfg, decoding):
    """The batched forward itself: each row its own position, write index and valid length; a slot that is not
    decoding (between two decoding ones, or after them) is untouched."""
    pool = open_pool(cfg, max_streams=3)
    streams = [pool.open_stream() for _ in range(3)]
    lone = []
    for i, s in enumerate(streams):
        clip = synthetic_clip(2.0 * (i + 1), *RES, seed=10 + i)                   # different lengths
        for session in (s, OmniSession(cfg)):
            session.append_chunk(clip.frames, clip.pcm)
            session.finish()
        lone.append(session)
    idle = ({0, 1, 2} - set(decoding)).pop()
    idle_before = [b[idle].clone() for pair in pool.backend.slots.buffers for b in pair]
    width = pool.backend.model.thinker.config.text_config.hidden_size
    embeds = [torch.randn(1, 1, width, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    caches = [streams[i].stream.kv for i in decoding]
    positions = [np.full((3, 1, 1), c.length + 3 + 5 * i) for i, c in enumerate(caches)]
    batched = pool.backend.run_decodes(list(zip(caches, embeds, positions)))
    for j, i in enumerate(decoding):
        with torch.inference_mode():
            single = lone[i].stream.kv.step(embeds[j], positions[j].reshape(3, 1), True)
        np.testing.assert_allclose(batched[j].numpy(), single.numpy(), atol=1e-5, rtol=0)
        assert caches[j].length == lone[i].stream.kv.length
        for (pk, pv), (lk, lv) in zip(caches[j].buffers, lone[i].stream.kv.buffers):
            n = caches[j].length                                                # the rows written match
            np.testing.assert_allclose(pk[:, :, :n].numpy(), lk[:, :, :n].numpy(), atol=1e-5, rtol=0)
            np.testing.assert_allclose(pv[:, :, :n].numpy(), lv[:, :, :n].numpy(), atol=1e-5, rtol=0)
    after = [b[idle] for pair in pool.backend.slots.buffers for b in pair]
    assert all(torch.equal(a, b) for a, b in zip(after, idle_before))         # the idle slot is untouched
    with pytest.raises(UsageError, match="one decode step per stream"):
        pool.backend.run_decodes([(caches[0], embeds[0], positions[0])] * 2)
    pool.close()


def test_torch_pool_bad_input_reaches_only_its_caller_and_slots_are_counted(cfg):
    pool = open_pool(cfg, max_streams=2)
    a, b = pool.open_stream(), pool.open_stream()
    assert pool.free_slots == 0 and pool.open_streams == 2
    with pytest.raises(UsageError, match="the pool is full: all 2 streams are open"):
        pool.open_stream()
    with pytest.raises(UsageError, match="stream 7 is not open"):
        pool.stream(7)
    clip = synthetic_clip(2.0, *RES, seed=5)
    a.append_chunk(clip.frames, clip.pcm)
    answers, bad = {}, []

    def answer(_):
        answers["a"] = list(a.ask_ids("What happens?", max_new_tokens=6))

    def wrong_chunk(_):
        for frames in (clip.frames[:, :50], clip.frames[..., :2]):               # wrong size, wrong channels
            with pytest.raises(UsageError) as error:
                b.append_chunk(frames, clip.pcm)
            bad.append(str(error.value))

    _camera_threads(lambda i: (answer, wrong_chunk)[i](i), 2)                   # b's errors while a answers
    assert len(bad) == 2 and "frames are" in bad[0]
    b.append_chunk(clip.frames, clip.pcm)                                      # b is still usable
    assert list(b.ask_ids("What happens?", max_new_tokens=6)) == answers["a"]  # same media, same answer
    b.close()
    b.close()                                                                  # twice: harmless
    assert pool.free_slots == 1 and pool.open_streams == 1
    with pytest.raises(UsageError, match=f"stream {b.id} was closed"):
        b.append_chunk(clip.frames, clip.pcm)
    with pytest.raises(UsageError, match=f"stream {b.id} was closed"):
        list(b.ask_ids("What happens?"))
    c = pool.open_stream()                                                     # the freed slot, zeroed
    assert c.slot == b.slot and pool.free_slots == 0
    c.append_chunk(clip.frames, clip.pcm)
    assert list(c.ask_ids("What happens?", max_new_tokens=6)) == answers["a"]
    pool.close()
    assert pool.free_slots == 2 and pool.open_streams == 0


def test_sliding_streams_in_a_torch_pool_match_lone_sessions(cfg):
    """Eviction (rows moved down) and re-basing (keys rotated) on slot views: two pool streams of different
    lengths equal lone sessions, and each other's slots are untouched by them."""
    sliding = RuntimeConfig(cfg.folder, backend="torch", ratio=0.25, max_context=256, context_policy="sliding",
                            position_limit=512)
    plans = [(24.0, 3, [("What happens?", 6)]), (10.0, 4, [("Who speaks?", 5), ("And then?", 3)])]
    alone = [_run(OmniSession(sliding), plan) for plan in plans]
    pool = open_pool(sliding, max_streams=2)
    got = {}

    def camera(i):
        stream = pool.open_stream()
        got[i] = _run(stream, plans[i])
        got[i] += (stream.stream.window.base,)

    _camera_threads(camera, 2)
    assert got[0][3] > 0                                                       # the long one re-based
    for i in range(2):
        _assert_same(got[i], alone[i])
    assert pool.free_slots == 2
