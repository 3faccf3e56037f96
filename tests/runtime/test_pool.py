"""The stream pool: many streams on one copy of the graphs, KV slots, decode steps batched across streams."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.pool import open_pool  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402

RES = (112, 84)


@pytest.fixture(scope="module")
def cfg(small_export):
    return RuntimeConfig(small_export(resolution=RES), ratio=0.25)


def _record_logits(session) -> list:
    """Keep every logits row the stream's backend returns (question prefill and each decode step)."""
    seen, step = [], session.stream._step

    def recording(embeds, positions, want_logits=True):
        logits = step(embeds, positions, want_logits)
        if logits is not None:
            seen.append(np.array(logits, dtype=np.float32))
        return logits

    session.stream._step = recording
    return seen


def _script(session, plan, *, pause=0.0):
    """Run one camera: chunks of `seconds`, then questions; returns answers and recorded logits."""
    seconds, seed, questions = plan
    logits = _record_logits(session)
    clip = synthetic_clip(seconds, *RES, seed=seed)
    per_frame = int(session.spec.sample_rate / session.spec.fps)
    answers = []
    for j in range(0, len(clip.frames), 4):
        session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])
        time.sleep(pause)
    for question, tokens in questions:
        answers.append(list(session.ask_ids(question, max_new_tokens=tokens)))
    session.close()
    return answers, logits


PLANS = [(2.0, 1, [("What happens?", 6)]),
         (4.0, 2, [("What happens?", 9), ("And then?", 4)]),
         (6.0, 3, [("Describe it.", 7)]),
         (2.0, 4, [("Who speaks?", 12)])]


def test_four_streams_in_a_pool_match_four_separate_sessions(cfg):
    alone = [_script(OmniSession(cfg), plan) for plan in PLANS]
    pool = open_pool(cfg, max_streams=4)
    got, errors = {}, []

    def camera(i):
        try:
            time.sleep(0.15 * i)                 # streams start, ask and end at different times
            got[i] = _script(pool.open_stream(), PLANS[i], pause=0.02 * i)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert got[i][0] == alone[i][0]                                   # greedy answers
        assert len(got[i][1]) == len(alone[i][1])
        for pooled, single in zip(got[i][1], alone[i][1]):
            np.testing.assert_allclose(pooled, single, atol=1e-5, rtol=0)
    calls = pool.scheduler.calls
    questions = sum(len(plan[2]) for plan in PLANS)
    assert calls["decode_steps"] == sum(len(got[i][1]) for i in range(4)) - questions      # every step went through
    assert pool.open_streams == 0 and pool.free_slots == 4
    # (whether these staggered answers overlapped in time depends on the machine's load: that steps of
    # answers running together share calls is the next test's)


def test_answers_running_together_share_decode_calls(cfg):
    """Four streams asked at the same moment: their decode steps go in fewer calls than steps, and each
    answer equals the same stream run alone."""
    plans = [(2.0, 10 + i, [("What happens?", 8)]) for i in range(4)]
    alone = [_script(OmniSession(cfg), plan) for plan in plans]
    pool = open_pool(cfg, max_streams=4)
    pool.scheduler.gather_seconds = 2.0      # a loaded machine: wait long enough for the other steps
    streams = [pool.open_stream() for _ in plans]
    for stream, (seconds, seed, _) in zip(streams, plans):
        clip = synthetic_clip(seconds, *RES, seed=seed)
        stream.append_chunk(clip.frames[:4], clip.pcm[:int(stream.spec.sample_rate * seconds)])
    barrier, got, errors = threading.Barrier(4), {}, []

    def ask(i):
        try:
            barrier.wait()
            got[i] = list(streams[i].ask_ids(plans[i][2][0][0], max_new_tokens=8))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [got[i] for i in range(4)] == [answers[0] for answers, _ in alone]
    calls = pool.scheduler.calls
    assert calls["decode_batches"] < calls["decode_steps"]                # steps shared calls
    for stream in streams:
        stream.close()
    assert pool.free_slots == 4


def test_batched_decode_rows_equal_lone_steps(cfg):
    """The batched call itself, with a stream between them that is not decoding (it rides along)."""
    pool = open_pool(cfg, max_streams=3)
    streams = [pool.open_stream() for _ in range(3)]
    for i, s in enumerate(streams):
        clip = synthetic_clip(2.0 * (i + 1), *RES, seed=10 + i)
        s.append_chunk(clip.frames, clip.pcm)
        s.finish()
    lone = OmniSession(cfg)
    clip = synthetic_clip(6.0, *RES, seed=12)
    lone.append_chunk(clip.frames, clip.pcm)
    lone.finish()
    idle_before = streams[1].stream.kv.valid()
    rng = np.random.default_rng(0)
    embeds = [rng.standard_normal((1, 1, lone.stream.embed_table.shape[1])).astype(np.float32) for _ in range(2)]
    caches = [streams[0].stream.kv, streams[2].stream.kv]
    positions = [np.full((3, 1, 1), c.length + 3) for c in caches]
    batched = pool.backend.run_decodes(list(zip(caches, embeds, positions)))
    single = lone.stream.kv.step(embeds[1], positions[1], True)
    np.testing.assert_allclose(batched[1], single, atol=1e-5, rtol=0)
    assert [a.shape for a in streams[1].stream.kv.valid()] == [a.shape for a in idle_before]
    for after, before in zip(streams[1].stream.kv.valid(), idle_before):
        np.testing.assert_array_equal(after, before)                      # the idle row's cache is untouched
    np.testing.assert_array_equal(streams[2].stream.kv.valid()[0], lone.stream.kv.valid()[0])
    pool.close()


def test_bad_input_reaches_only_its_caller_and_slots_are_counted(cfg):
    pool = open_pool(cfg, max_streams=2)
    a, b = pool.open_stream(), pool.open_stream()
    assert pool.free_slots == 0 and pool.open_streams == 2
    with pytest.raises(UsageError, match="the pool is full: all 2 streams are open"):
        pool.open_stream()
    with pytest.raises(UsageError, match="stream 7 is not open"):
        pool.stream(7)
    assert pool.stream(a.id) is a
    clip = synthetic_clip(2.0, *RES, seed=5)
    with pytest.raises(UsageError, match="frames are"):
        b.append_chunk(clip.frames[:, :50], clip.pcm)                    # wrong size: b's error alone
    a.append_chunk(clip.frames, clip.pcm)
    answer = list(a.ask_ids("What happens?", max_new_tokens=4))
    b.append_chunk(clip.frames, clip.pcm)                                # b is still usable
    assert list(b.ask_ids("What happens?", max_new_tokens=4)) == answer  # same media, same answer
    b.close()
    assert pool.free_slots == 1 and pool.open_streams == 1
    with pytest.raises(UsageError, match=f"stream {b.id} was closed"):
        b.append_chunk(clip.frames, clip.pcm)
    with pytest.raises(UsageError, match=f"stream {b.id} is not open"):
        pool.stream(b.id)
    c = pool.open_stream()                                               # the freed slot, zeroed
    assert c.slot == b.slot and pool.free_slots == 0
    c.append_chunk(clip.frames, clip.pcm)
    assert list(c.ask_ids("What happens?", max_new_tokens=4)) == answer
    pool.close()
    assert pool.free_slots == 2 and pool.open_streams == 0


def test_pool_refuses_what_it_cannot_run(cfg):
    with pytest.raises(UsageError, match="max-streams must be a whole number"):
        open_pool(cfg, max_streams=0)
    with pytest.raises(UsageError, match="onnxruntime stream pool runs on the cpu"):
        open_pool(RuntimeConfig(cfg.folder, backend="onnxruntime", ratio=0.25, device="cuda:0"), max_streams=2)


def test_streams_opened_and_fed_together_equal_lone_streams(cfg):
    """Four cameras open their streams and push their chunks at the same moment from threads: the prompt
    prefixes go through the scheduler as batchable prefills, a chunk's prefill runs alone
    (GroupQueryAttention), and each stream's kept sets, logits and greedy answers equal the same stream
    run alone."""
    plans = [(4.0, 20 + i, [("What happens?", 6)]) for i in range(4)]
    alone = [OmniSession(cfg) for _ in plans]
    alone_out = [_script(session, plan) for session, plan in zip(alone, plans)]
    pool = open_pool(cfg, max_streams=4)
    release, kept, got, errors = threading.Event(), {}, {}, []
    barrier = threading.Barrier(5)

    def camera(i):
        try:
            barrier.wait()
            stream = pool.open_stream()
            got[i] = _script(stream, plans[i])
            kept[i] = [k.copy() for k in stream.stream.kept_indices]
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    holder = threading.Thread(target=pool.scheduler.call, args=(lambda: release.wait(30),))
    holder.start()                               # holds the runner: the four opens queue behind it
    threads = [threading.Thread(target=camera, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    barrier.wait()
    _wait_for_queue(pool.scheduler, 4)
    release.set()
    for t in (holder, *threads):
        t.join()
    assert not errors
    for i in range(4):
        assert got[i][0] == alone_out[i][0]                                # greedy answers
        assert len(kept[i]) == len(alone[i].stream.kept_indices) == 2
        for pooled, single in zip(kept[i], alone[i].stream.kept_indices):
            np.testing.assert_array_equal(pooled, single)                  # kept sets
        assert len(got[i][1]) == len(alone_out[i][1])
        for pooled, single in zip(got[i][1], alone_out[i][1]):
            np.testing.assert_allclose(pooled, single, atol=1e-5, rtol=0)  # logits
    calls = pool.scheduler.calls
    assert calls["prefill_chunks"] == 4                                    # the four prompt prefixes, batchable
    assert calls["prefill_retries"] == 0       # (how many shared a call depends on the threads' timing:
    #                                            the next test queues them behind a held runner)
    assert pool.free_slots == 4


def _wait_for_queue(scheduler, n: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while len(scheduler._others) < n:
        assert time.monotonic() < deadline, "the streams did not queue"
        time.sleep(0.005)


def test_batched_prefill_rows_equal_lone_prefills(cfg):
    """The batched prefill itself: prompt prefixes into empty caches queued together (one scheduler batch),
    one decoder call per run of consecutive slots,
    a stream between the runs that is not prefilling (its cache stays as it was), each row equal to the lone
    prefill; a cache with a past or rows of different lengths are refused (one call each instead)."""
    from omnisift_edge.runtime.slots import slot_runs

    pool = open_pool(cfg, max_streams=4)
    streams = [pool.open_stream() for _ in range(4)]
    lone = OmniSession(cfg)
    clip = synthetic_clip(2.0, *RES, seed=30)
    streams[2].append_chunk(clip.frames, clip.pcm)
    idle_before = streams[2].stream.kv.valid()
    chosen = [0, 1, 3]
    caches = [streams[i].stream.kv for i in chosen]
    for cache in caches:
        cache.length = 0                                                  # empty again: prefill anew
    ids, positions = streams[0].stream.layout.prefix()
    embeds = streams[0].stream._embed(ids)                                # [1, n, D]
    n = embeds.shape[1]
    positions = np.asarray(positions, np.int64).reshape(3, 1, n)
    assert slot_runs(caches) == [[0, 1], [2]]                             # two calls: slots 0-1, then 3
    release, results = threading.Event(), []
    holder = threading.Thread(target=pool.scheduler.call, args=(lambda: release.wait(30),))
    holder.start()                                                        # the prefills queue behind it
    threads = [threading.Thread(target=lambda c=c: results.append(pool.scheduler.prefill(n, c, embeds, positions)))
               for c in caches]
    for t in threads:
        t.start()
    _wait_for_queue(pool.scheduler, 3)
    counted = dict(pool.scheduler.calls)
    release.set()
    for t in (holder, *threads):
        t.join()
    assert results == [None] * 3
    assert pool.scheduler.calls["prefill_batches"] - counted["prefill_batches"] == 1     # one batch of 3
    assert pool.scheduler.calls["prefill_chunks"] - counted["prefill_chunks"] == 3
    for i in chosen:
        assert streams[i].stream.kv.length == lone.stream.kv.length == n
        for pooled, single in zip(streams[i].stream.kv.valid(), lone.stream.kv.valid()):
            np.testing.assert_allclose(pooled, single, atol=1e-5, rtol=0)
    for after, before in zip(streams[2].stream.kv.valid(), idle_before):
        np.testing.assert_array_equal(after, before)                      # the idle stream is untouched
    with pytest.raises(UsageError, match="empty caches only"):
        pool.backend.run_batch("prefill", [(caches[0], embeds, positions)])
    caches[0].length = caches[1].length = 0
    with pytest.raises(UsageError, match="rows of one length"):
        pool.backend.run_batch("prefill", [(caches[0], embeds, positions), (caches[1], embeds[:, :4], positions[..., :4])])
    pool.close()
