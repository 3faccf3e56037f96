"""Chunk batching in the ONNX Runtime stream pool: a chunk's encoder, compressor and prefill calls of several
streams as one call (runtime/chunk_batch.py, pool_ort.py, slots.scatter_rows); results as each stream alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime import chunk_batch as cb  # noqa: E402
from omnisift_edge.runtime.pool import open_pool  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402

RES = (112, 84)


@pytest.fixture(scope="module")
def cfg(small_export):
    return RuntimeConfig(small_export(resolution=RES), ratio=0.25)


def _has_batch_forms(cfg) -> bool:
    from omnisift_edge.artifact.folder import ExportFolder

    return bool(cb.batch_graphs(ExportFolder.open(cfg.folder), cfg.ratio))


def _feed(session, seconds: float, seed: int) -> None:
    """Push a clip of `seconds` in 2-s pieces, then finish (a short last chunk when seconds is odd)."""
    clip = synthetic_clip(seconds, *RES, seed=seed)
    per_frame = int(session.spec.sample_rate / session.spec.fps)
    for j in range(0, len(clip.frames), 4):
        session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])
    session.finish()


def _wait_until(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _answer(session, tokens: int = 6):
    """(greedy answer, logits of the question and of every decode step) of one question."""
    seen, step = [], session.stream._step

    def recording(embeds, positions, want_logits=True):
        logits = step(embeds, positions, want_logits)
        if logits is not None:
            seen.append(np.array(logits, dtype=np.float32))
        return logits

    session.stream._step = recording
    answer = list(session.ask_ids("What happens?", max_new_tokens=tokens))
    session.stream._step = step
    return answer, seen


def _assert_same(pooled, alone) -> None:
    """Kept sets equal, KV rows and logits within 1e-5 (ONNX Runtime fp32), the same greedy answer."""
    assert len(pooled.stream.kept_indices) == len(alone.stream.kept_indices)
    for got, want in zip(pooled.stream.kept_indices, alone.stream.kept_indices):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(pooled.stream.kv.valid(), alone.stream.kv.valid()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    (answer, logits), (answer_alone, logits_alone) = _answer(pooled), _answer(alone)
    assert answer == answer_alone and len(logits) == len(logits_alone)
    for got, want in zip(logits, logits_alone):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


SECONDS = (4.0, 3.0, 4.0, 5.0)          # streams 1 and 3 end on a short last chunk


@pytest.mark.parametrize("prefill", [False, True], ids=["encoders", "encoders+prefill"])
def test_chunks_arriving_together_run_as_batches_and_equal_lone_streams(cfg, prefill):
    """Four cameras push their chunks at the same moment (threads, a barrier): each chunk stage runs as batches
    of several streams, a short last chunk among them, and each stream equals the same stream alone."""
    if not _has_batch_forms(cfg):
        pytest.skip("this export has no batched encoder/compressor forms (vision_encoder_batch, ...)")
    alone = [OmniSession(cfg) for _ in SECONDS]
    for i, session in enumerate(alone):
        _feed(session, SECONDS[i], 50 + i)
    pool = open_pool(cfg, max_streams=4, batch_chunks=True, batch_prefill=prefill)
    pool.scheduler.batch_gather_seconds = 2.0        # a loaded machine: wait long enough for the others' calls
    assert set(pool.backend.batched) == set(cb.BATCH_ROLES) and (pool.backend.scatter is not None) == prefill
    streams = [pool.open_stream() for _ in SECONDS]
    loaded = {Path(path).name for path in pool.backend._graphs}          # the batched forms INSTEAD of the one-chunk
    assert {"vision_encoder_batch.onnx", "audio_encoder_batch.onnx"} <= loaded
    assert not {"vision_encoder.onnx", "audio_encoder.onnx", "compressor_r0.25.onnx"} & loaded
    barrier, errors = threading.Barrier(4), []

    def camera(i):
        try:
            barrier.wait()
            _feed(streams[i], SECONDS[i], 50 + i)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for pooled, lone in zip(streams, alone):
        _assert_same(pooled, lone)
    calls, chunks = pool.scheduler.calls, sum(len(s.stream.reports) for s in streams)
    for kind in cb.BATCH_ROLES:
        assert calls[f"{kind}_chunks"] == chunks and calls[f"{kind}_batches"] < chunks, kind   # batches of > 1
        assert calls.get(f"{kind}_retries", 0) == 0
    chunk_prefills = calls["prefill_chunks"] - 4                                 # (4 prompt prefixes, alone)
    assert (chunk_prefills == chunks and calls["prefill_batches"] - 4 < chunks) if prefill else chunk_prefills == 0
    pool.close()
    assert pool.free_slots == 4


def test_a_bad_chunk_in_a_batch_fails_only_its_stream(cfg):
    """One stream's chunk that the batched compressor cannot run (an audio count past its table) among three good
    ones pushed together: the batch fails, the scheduler runs each row alone, only that stream's caller gets the
    error, the other three equal their lone streams, and every slot comes back."""
    if not _has_batch_forms(cfg):
        pytest.skip("this export has no batched encoder/compressor forms (vision_encoder_batch, ...)")
    alone = [OmniSession(cfg) for _ in range(4)]
    for i, session in enumerate(alone):
        _feed(session, 4.0, 90 + i)
    pool = open_pool(cfg, max_streams=4, batch_chunks=True)
    pool.scheduler.batch_gather_seconds = 2.0
    streams = [pool.open_stream() for _ in range(4)]
    feeds = streams[2].stream.compressor_feeds

    def bad_feeds(*args):                                 # a row of the right shapes and a count out of range
        out = feeds(*args)
        out[list(out)[4]] = np.array([10 ** 6], np.int64)
        return out

    streams[2].stream.compressor_feeds = bad_feeds
    errors, release = {}, threading.Event()

    def camera(i):
        try:
            _feed(streams[i], 4.0, 90 + i)
        except Exception as error:  # noqa: BLE001 - checked below
            errors[i] = error

    # the runner held until every camera's first call is queued, so the four start together (a camera that
    # reached its first chunk alone, the others still making their clips, would run its chunk alone)
    holder = threading.Thread(target=lambda: pool.scheduler.call(lambda: release.wait(60)))
    holder.start()
    _wait_until(lambda: pool.scheduler._running)
    threads = [threading.Thread(target=camera, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    _wait_until(lambda: len(pool.scheduler._others) == 4)                   # each camera's first call
    release.set()
    for t in [holder, *threads]:
        t.join()
    assert list(errors) == [2]
    assert pool.scheduler.calls.get("compressor_retries", 0) >= 1
    for i in (0, 1, 3):
        _assert_same(streams[i], alone[i])
    pool.close()
    assert pool.free_slots == 4 and pool.open_streams == 0


def test_batched_chunk_prefill_rows_equal_lone_prefills(cfg):
    """slots.scatter_rows itself: chunk prefills over pasts of different lengths, one decoder_scatter call per run of
    consecutive slots (a run of one: decoder_gqa), a stream between the runs untouched, every row as alone."""
    pool = open_pool(cfg, max_streams=4, batch_chunks=True, batch_prefill=True)
    streams = [pool.open_stream() for _ in range(4)]
    alone = [OmniSession(cfg) for _ in range(4)]
    for i, (pooled, lone) in enumerate(zip(streams, alone)):
        _feed(pooled, 2.0 * (i + 1), 60 + i)                          # pasts of 1, 2, 3, 4 chunks
        _feed(lone, 2.0 * (i + 1), 60 + i)
    idle_before = streams[2].stream.kv.valid()
    chosen = [0, 1, 3]
    caches = [streams[i].stream.kv for i in chosen]
    assert cb.prefill_key(5) != 5 and len({c.length for c in caches}) == 3   # chunk keys never mix with prefixes
    width = streams[0].stream.embed_table.shape[1]
    embeds = [np.random.default_rng(i).standard_normal((1, 7, width)).astype(np.float32) for i in chosen]
    positions = [np.tile(np.arange(c.length, c.length + 7), (3, 1, 1)).reshape(3, 1, 7) for c in caches]
    arrays = {name: a.__array_interface__["data"][0] for name, a in pool.slots.arrays.items()}
    assert pool.backend.run_batch("prefill", list(zip(caches, embeds, positions))) == [None] * 3
    assert {name: a.__array_interface__["data"][0] for name, a in pool.slots.arrays.items()} == arrays   # in place
    for j, i in enumerate(chosen):
        alone[i].stream.kv.step(embeds[j], positions[j], False)
        assert streams[i].stream.kv.length == alone[i].stream.kv.length
        for got, want in zip(streams[i].stream.kv.valid(), alone[i].stream.kv.valid()):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        for name, buffer in pool.slots.arrays.items():                # rows past the valid ones stay zero
            assert not buffer[streams[i].slot, :, streams[i].stream.kv.length:].any(), name
    for after, before in zip(streams[2].stream.kv.valid(), idle_before):
        np.testing.assert_array_equal(after, before)
    for pooled, lone in zip(streams, alone):
        _assert_same(pooled, lone)
    with pytest.raises(UsageError, match="rows of one length"):
        pool.backend.run_batch("prefill", [(caches[0], embeds[0], positions[0]),
                                           (caches[1], embeds[1][:, :3], positions[1][..., :3])])
    pool.close()
    assert pool.free_slots == 4


def test_a_bad_prefill_in_a_batch_fails_only_its_stream(cfg):
    """A batch with one prefill that cannot run (its slot is full) fails as a whole, is retried one by one, and only
    that stream's caller gets the error; the others are prefilled as alone and no slot leaks."""
    pool = open_pool(cfg, max_streams=3, batch_chunks=True, batch_prefill=True)
    streams = [pool.open_stream() for _ in range(3)]
    for i, s in enumerate(streams):
        _feed(s, 2.0, 70 + i)
    caches = [s.stream.kv for s in streams]
    width = streams[0].stream.embed_table.shape[1]
    rows = 7
    embeds = np.ones((1, rows, width), np.float32)
    positions = [np.tile(np.arange(c.length, c.length + rows), (3, 1, 1)).reshape(3, 1, rows) for c in caches]
    lengths = [c.length for c in caches]
    caches[1].length = caches[1].capacity - 2                    # no room for 7 more rows: a bad prefill
    release, results = threading.Event(), {}
    holder = threading.Thread(target=pool.scheduler.call, args=(lambda: release.wait(30),))
    holder.start()                                               # the prefills queue behind it

    def prefill(i):
        try:
            results[i] = pool.scheduler.prefill(cb.prefill_key(rows), caches[i], embeds, positions[i])
        except UsageError as error:
            results[i] = str(error)

    threads = [threading.Thread(target=prefill, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(pool.scheduler._others) < 3:
        assert time.monotonic() < deadline, "the prefills did not queue"
        time.sleep(0.005)
    release.set()
    for t in (holder, *threads):
        t.join()
    assert results[0] is None and results[2] is None and "the KV cache holds" in results[1]
    assert pool.scheduler.calls["prefill_retries"] == 1
    assert [caches[0].length, caches[2].length] == [lengths[0] + rows, lengths[2] + rows]
    caches[1].length = lengths[1]
    pool.close()
    assert pool.free_slots == 3 and pool.open_streams == 0


def test_batching_off_runs_every_chunk_call_alone(cfg):
    """`batch_chunks=False`: the one-chunk graphs, one call per chunk and stage, no batches; results as alone."""
    pool = open_pool(cfg, max_streams=2, batch_chunks=False, batch_prefill=True)
    assert pool.backend.batched == {} and pool.backend.scatter is None and not pool.batch_prefill
    stream, lone = pool.open_stream(), OmniSession(cfg)
    _feed(stream, 3.0, 80)
    _feed(lone, 3.0, 80)
    _assert_same(stream, lone)
    assert not [k for k in pool.scheduler.calls if k.startswith(cb.BATCH_ROLES)]
    assert pool.scheduler.calls["prefill_chunks"] == 1                      # the prompt prefix only
    pool.close()


def test_the_cpu_pool_batches_chunks_only_when_asked_and_caps_the_rows(cfg):
    """ONNX Runtime on the CPU: chunk batching is off by default (measured: no gain, more memory), on when asked,
    then at most `max_batch` rows a call."""
    from omnisift_edge.runtime.pool_ort import OrtPoolBackend

    default = open_pool(cfg, max_streams=2)
    assert not default.batch_chunks and default.backend.batched == {}
    default.close()
    asked = open_pool(cfg, max_streams=2, batch_chunks=True)
    assert asked.batch_chunks and set(asked.backend.batched) == set(cb.BATCH_ROLES)
    assert asked.scheduler.max_batch == OrtPoolBackend.max_batch
    asked.close()


def test_rows_stack_on_each_inputs_batch_axis_and_split_back():
    """chunk_batch.stack_rows / split_rows on the declared batched compressor: positions carry the batch on axis 1."""
    from omnisift_edge.artifact.tensors import COMPRESSOR_BATCH

    rng = np.random.default_rng(0)
    shapes = {"video_embeds": (1, 2, 3, 4), "audio_embeds": (1, 5, 4), "chunk_position_ids": (3, 1, 11),
              "valid_grids": (1,), "valid_audio_tokens": (1,)}
    rows = [{name: rng.standard_normal(shape) for name, shape in shapes.items()} for _ in range(3)]
    feeds = cb.stack_rows(COMPRESSOR_BATCH, rows)
    assert feeds["chunk_position_ids"].shape == (3, 3, 11) and feeds["video_embeds"].shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(feeds["chunk_position_ids"][:, 1:2], rows[1]["chunk_position_ids"])
    outputs = [rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 3, 6)), np.arange(18).reshape(3, 6),
               np.array([6, 4, 6])]                        # kept [B, K, D], positions [3, B, K], index [B, K], count [B]
    split = cb.split_rows(COMPRESSOR_BATCH, outputs, 3)
    np.testing.assert_array_equal(split[1][1], outputs[1][:, 1:2])
    kept, index = cb.kept_of(split[1])
    assert kept.shape == (1, 4, 4) and index.tolist() == [6, 7, 8, 9]
    assert cb.shape_key(rows[0]) == cb.shape_key(rows[2])
