"""The stream pool's TensorRT backend (runtime/pool_trt.py).

On the CPU: the slot bookkeeping, the copy plans of the past/present form's gather, and a whole pool of
four streams against four separate TensorRT streams with TensorRT, the GPU and the engines stood in for
by ONNX Runtime on the same graphs (tests/runtime/test_trt_pipeline.py's stand-ins: the engine file names
its ONNX graph, device memory is host memory, a KV_CACHE_UPDATE's present is written into its past), for
both decoder forms. With TensorRT and a GPU (`trt`), the same comparison on real engines built with
`--max-streams 4`.
"""

from __future__ import annotations

import json
import threading
import time
import types

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.artifact.manifest import write_manifest  # noqa: E402
from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.pool import open_pool  # noqa: E402
from omnisift_edge.runtime.pool_trt import batch_mask, gather_copies, scatter_copies, span_feeds  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402
from omnisift_edge.runtime.slots import SlotBook  # noqa: E402
from tests.helpers import HostMemory  # noqa: E402
from tests.runtime.test_pool import _record_logits  # noqa: E402
from tests.runtime.test_trt_pipeline import _fake_build, _OrtEngineRunner  # noqa: E402

RES = (112, 84)
PLANS = [(2.0, 1, "What happens?", 6), (4.0, 2, "What happens?", 9), (6.0, 3, "Describe it.", 7),
         (2.0, 4, "Who speaks?", 5)]


@pytest.fixture(scope="module")
def folder(small_export):
    return small_export(ratios=(0.25,), resolution=RES)


def test_slots_are_handed_out_lowest_first_and_taken_back():
    book = SlotBook(3)
    assert [book.take() for _ in range(3)] == [0, 1, 2] and book.take() is None and book.free == 0
    book.give(1)
    book.give(1)                                     # twice: harmless
    book.give(0)
    assert book.free == 2 and book.take() == 0 and book.take() == 1 and book.length(2) == 0


def test_gather_and_scatter_copies_move_each_streams_rows():
    """Slots packed [1, kv, L, hd] (trt_kv.DeviceKV's layout) -> batch past [B, kv, T, hd] -> a present
    [B, kv, T + 1, hd] -> slots packed [1, kv, L + 1, hd]: each stream's own rows, then its new one."""
    kv, hd, rows, itemsize = 2, 3, 8, 4
    head_row, slot_bytes = hd * itemsize, kv * rows * hd * itemsize
    rng = np.random.default_rng(0)
    slots, lengths = [3, 0, 2], [5, 2, 7]
    memory = np.zeros(4 * slot_bytes, np.uint8)
    packed = {}
    for slot, n in zip(slots, lengths):
        packed[slot] = rng.standard_normal((kv, n, hd)).astype(np.float32)
        memory[slot * slot_bytes:slot * slot_bytes + packed[slot].nbytes] = packed[slot].view(np.uint8).reshape(-1)
    past = max(lengths)
    batch = np.full(len(slots) * kv * past * hd, np.nan, np.float32).view(np.uint8)
    for src, dst, n in gather_copies(slots, lengths, past, kv, head_row, slot_bytes):
        batch[dst:dst + n] = memory[src:src + n]
    batch = batch.view(np.float32).reshape(len(slots), kv, past, hd)
    for b, (slot, n) in enumerate(zip(slots, lengths)):
        np.testing.assert_array_equal(batch[b, :, :n], packed[slot])
    present = rng.standard_normal((len(slots), kv, past + 1, hd)).astype(np.float32)
    present[:, :, :past] = np.nan_to_num(batch)
    raw = present.view(np.uint8).reshape(-1)
    for src, dst, n in scatter_copies(slots, lengths, past, kv, head_row, slot_bytes):
        memory[dst:dst + n] = raw[src:src + n]
    for b, (slot, n) in enumerate(zip(slots, lengths)):
        got = memory[slot * slot_bytes:slot * slot_bytes + kv * (n + 1) * head_row].view(np.float32).reshape(kv, n + 1, hd)
        np.testing.assert_array_equal(got[:, :n], packed[slot])
        np.testing.assert_array_equal(got[:, n], present[b, :, past])
    mask = batch_mask(lengths, past)
    assert mask.tolist()[1] == [1, 1, 0, 0, 0, 0, 0, 1] and mask[:, -1].all() and mask.sum() == sum(lengths) + 3


def test_an_in_place_span_puts_each_step_on_its_slots_row():
    embeds = [np.full((1, 1, 4), v, np.float32) for v in (1.0, 2.0)]
    positions = [np.full((3, 1, 1), p, np.int64) for p in (40, 7)]
    e, p, w = span_feeds([3, 1], embeds, positions, [9, 0, 6], np.float32)     # slots 1..3; slot 2 idle
    assert e[:, 0, 0].tolist() == [2.0, 0.0, 1.0] and p[0, :, 0].tolist() == [7, 0, 40] and w.tolist() == [9, 0, 6]
    with pytest.raises(UsageError, match="one decode step per stream"):
        span_feeds([1, 1], embeds, positions, [9], np.float32)


def _stand_ins(monkeypatch, built):
    """TensorRT, the GPU and the engines stood in for (test_trt_pipeline's stand-ins), for the build in `built`."""
    import polygraphy.backend.trt as polygraphy_trt

    import omnisift_edge.runtime.trt_env as trt_env
    from omnisift_edge.runtime import trt_kv
    from omnisift_edge.runtime.trt_env import DeviceInfo

    version = json.loads((built / "manifest.json").read_text())["builds"]["h100"]["tensorrt"]
    monkeypatch.setattr(trt_env, "require_tensorrt", lambda *_: types.SimpleNamespace(__version__=version))
    monkeypatch.setattr(trt_env, "require_device", lambda: DeviceInfo("NVIDIA H100", (9, 0), 80.0))
    monkeypatch.setattr(polygraphy_trt, "EngineFromBytes", lambda data: lambda: str(built / data().decode()))
    monkeypatch.setattr(polygraphy_trt, "TrtRunner", _OrtEngineRunner)
    monkeypatch.setattr(trt_kv, "CudaMemory", HostMemory)
    _OrtEngineRunner.log = []


def _pool_build(folder, dst, *, in_place: bool, max_streams: int, batched_prefill: bool = False):
    """A stand-in build recording `--max-streams`: the in-place form with its in_place_decode profile;
    `batched_prefill`: the decoder's batched chunk-prefill profile as engines/profiles.py plans it
    (`prefill_batch` / `in_place_prefill`), and the batched chunk engines' batch axis where the export
    holds their graphs."""
    from omnisift_edge.artifact.manifest import load_manifest
    from omnisift_edge.engines.profiles import decoder_limits, graph_profiles

    built = _fake_build(folder, dst, in_place=in_place)
    manifest = json.loads((built / "manifest.json").read_text())
    build = manifest["builds"]["h100"]
    build["max_streams"] = max_streams
    if in_place and max_streams > 1:
        first = build["engines"]["decoder_scatter"]["profiles"][0]
        build["engines"]["decoder_scatter"]["profiles"].append(
            {"name": "in_place_decode", "axes": {**first["axes"], "batch_size": [1, max_streams, max_streams],
                                                 "sequence_length": [1, 1, 1], "logits_length": [1, 1, 1]},
             "inputs": {}, "values": first["values"]})
    if batched_prefill:
        typed = load_manifest(built, verify=False)
        limits = decoder_limits(typed, max_prompt=1, max_streams=max_streams)
        decoder = "decoder_scatter" if in_place else "decoder"
        planned = graph_profiles(typed, decoder, limits)[-1].to_dict()
        assert planned["name"] == ("in_place_prefill" if in_place else "prefill_batch")
        build["engines"][decoder]["profiles"].append(planned)
        for key, engine in build["engines"].items():
            if key.startswith(("vision_encoder_batch", "audio_encoder_batch", "compressor_batch_")):
                engine["profiles"] = [{"name": "batch", "axes": {"batch_size": [1, max_streams, max_streams]},
                                       "inputs": {}}]
    write_manifest(built, manifest)
    return built


def _camera(session, plan, first: int = 0):
    """Append the plan's clip in 2-second chunks (from chunk `first`); the stream's logits are recorded from then on."""
    seconds, seed, _, _ = plan
    clip = synthetic_clip(seconds, *RES, seed=seed)
    per_frame = int(session.spec.sample_rate / session.spec.fps)
    for j in range(4 * first, len(clip.frames), 4):
        session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])
    return _record_logits(session)


def _first_chunks(session, plan, n: int):
    """Append the first `n` 2-second pieces of the plan's clip (the log-mel stream holds the last one back)."""
    seconds, seed, _, _ = plan
    clip = synthetic_clip(seconds, *RES, seed=seed)
    per_frame = int(session.spec.sample_rate / session.spec.fps)
    for j in range(0, 4 * n, 4):
        session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])


@pytest.mark.parametrize("in_place", [True, False], ids=["decoder_scatter", "decoder_past_present"])
def test_four_pool_streams_match_four_separate_tensorrt_streams(folder, tmp_path, monkeypatch, in_place):
    built = _pool_build(folder, tmp_path / "built", in_place=in_place, max_streams=4)
    _stand_ins(monkeypatch, built)
    cfg = RuntimeConfig(built, backend="tensorrt", ratio=0.25)
    alone = []
    for plan in PLANS:
        session = OmniSession(cfg)
        seen = _camera(session, plan)
        alone.append((list(session.ask_ids(plan[2], max_new_tokens=plan[3])), seen))
        session.close()
    _OrtEngineRunner.log = []
    pool = open_pool(cfg, max_streams=4)
    pool.scheduler.gather_seconds = 2.0              # a loaded machine: wait long enough for the other steps
    streams = [pool.open_stream() for _ in PLANS]
    seen = [_camera(s, plan) for s, plan in zip(streams, PLANS)]
    barrier, got, errors = threading.Barrier(4), {}, []

    def ask(i):
        try:
            barrier.wait()
            got[i] = list(streams[i].ask_ids(PLANS[i][2], max_new_tokens=PLANS[i][3]))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert got[i] == alone[i][0]                                          # greedy answers
        assert len(seen[i]) == len(alone[i][1])
        for pooled, single in zip(seen[i], alone[i][1]):
            np.testing.assert_allclose(pooled, single, atol=1e-4, rtol=0)
    calls = pool.scheduler.calls
    assert calls["decode_batches"] < calls["decode_steps"]                   # steps shared engine calls
    runs = [e for e in _OrtEngineRunner.log if e[:2] == ("trt-decoder", "run")]
    assert sum(e[1] == "activate" and e[0] == "trt-decoder" for e in _OrtEngineRunner.log) == 1   # loaded once
    assert max(e[2] for e in runs) == (1 if in_place else 1)                 # the batched decode's profile ran
    for stream in streams:
        stream.close()
    assert pool.free_slots == 4 and pool.open_streams == 0


def test_a_pool_larger_than_the_engines_batch_is_one_line(folder, tmp_path, monkeypatch):
    built = _pool_build(folder, tmp_path / "built", in_place=True, max_streams=2)
    _stand_ins(monkeypatch, built)
    with pytest.raises(UsageError) as exc:
        open_pool(RuntimeConfig(built, backend="tensorrt", ratio=0.25), max_streams=4)
    message = str(exc.value)
    assert "\n" not in message and "take decode batches of up to 2 streams" in message
    assert f"omnisift-edge build {built} --target h100 --max-streams 4" in message
    pool = open_pool(RuntimeConfig(built, backend="tensorrt", ratio=0.25), max_streams=2)   # within the build: fine
    assert pool.free_slots == 2


@pytest.mark.trt
@pytest.mark.gpu
def test_four_pool_streams_on_real_engines_match_four_sessions(folder, tmp_path):
    """The GPU check (docs/runtime.md): engines built here with --max-streams 4, four pool streams against
    four separate TensorRT sessions: the same greedy answers, logits within fp32 engine noise."""
    import shutil

    from omnisift_edge.engines.build import build_engines
    from omnisift_edge.engines.plan import BuildConfig

    export = tmp_path / "export"
    shutil.copytree(folder, export)
    build_engines(BuildConfig(export, target="auto", precision="fp32", max_streams=4))
    cfg = RuntimeConfig(export, backend="tensorrt", ratio=0.25)
    alone = []
    for plan in PLANS:
        session = OmniSession(cfg)
        seen = _camera(session, plan)
        alone.append((list(session.ask_ids(plan[2], max_new_tokens=plan[3])), seen))
        session.close()
    pool = open_pool(cfg, max_streams=4)
    pool.scheduler.gather_seconds = 1.0
    streams = [pool.open_stream() for _ in PLANS]
    seen = [_camera(s, plan) for s, plan in zip(streams, PLANS)]
    got = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, list(streams[i].ask_ids(
        PLANS[i][2], max_new_tokens=PLANS[i][3])))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert got[i] == alone[i][0]
        for pooled, single in zip(seen[i], alone[i][1]):
            np.testing.assert_allclose(pooled, single, atol=2e-3, rtol=0)
    assert pool.scheduler.calls["decode_batches"] < pool.scheduler.calls["decode_steps"]


class _BatchLog(_OrtEngineRunner):
    """The stand-in engine runner, also recording each call's engine and the shape of its first input (the
    decoder's inputs_embeds [B, S, D])."""

    calls: list = []

    def infer(self, feeds, copy_outputs_to_host=True):
        self.calls.append((self.name, *np.shape(next(iter(feeds.values())))))
        return super().infer(feeds, copy_outputs_to_host)


TOGETHER = [(6.0, 11, "What happens?", 5), (5.0, 12, "Describe it.", 6), (2.0, 13, "Who speaks?", 4),
            (5.0, 14, "What happens?", 6)]       # 3, 3 (a short last chunk), 1 and 3 (short last) chunks


def _alone(cfg, plan):
    session = OmniSession(cfg)
    seen = _camera(session, plan)
    answer = list(session.ask_ids(plan[2], max_new_tokens=plan[3]))
    kept = [k.copy() for k in session.stream.kept_indices]
    session.close()
    return answer, seen, kept


def _cameras_together(pool):
    """Streams 0-2 open; stream 0 pushes its first chunk alone (its cache is longer than the others' from then
    on), then the three push their chunks at the same moment from threads (their first calls queue behind a
    held runner, so all three pushes have begun when the first runs); each asks once its clip is in and
    closes; stream 3 opens once stream 2 has closed (on its freed slot) and runs its clip then."""
    streams, got, errors = {i: pool.open_stream() for i in range(3)}, {}, []
    _first_chunks(streams[0], TOGETHER[0], 2)
    assert len(streams[0].stream.reports) == 1                   # one chunk in: a longer cache than the others'
    barrier, freed, release = threading.Barrier(3), threading.Event(), threading.Event()
    holder = threading.Thread(target=pool.scheduler.call, args=(lambda: release.wait(60),))
    holder.start()

    def camera(i):
        try:
            if i < 3:
                barrier.wait()
            else:
                assert freed.wait(300)
                streams[i] = pool.open_stream()
            seen = _camera(streams[i], TOGETHER[i], first=2 if i == 0 else 0)
            answer = list(streams[i].ask_ids(TOGETHER[i][2], max_new_tokens=TOGETHER[i][3]))
            got[i] = (answer, seen, [k.copy() for k in streams[i].stream.kept_indices])
            streams[i].close()
            if i == 2:
                freed.set()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            freed.set()

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while pool.scheduler.pushing < 3 or len(pool.scheduler._others) < 3:
        assert time.monotonic() < deadline, "the cameras did not queue"
        time.sleep(0.005)
    release.set()
    for t in (holder, *threads):
        t.join()
    assert not errors, errors
    return got


@pytest.mark.parametrize("in_place", [True, False], ids=["decoder_scatter", "decoder_past_present"])
def test_chunks_that_arrive_together_are_prefilled_in_one_call_and_equal_lone_streams(folder, tmp_path, monkeypatch,
                                                                                    in_place):
    """Three cameras push their chunks at the same moment, a fourth starts when one has ended, two clips end in a
    short chunk: the chunks' prefills go through the decoder together (in place: rows of consecutive slots,
    each at its own write_index; past/present: gathered into a masked batch), and each stream's kept sets,
    logits and greedy answers equal the same stream run alone."""
    built = _pool_build(folder, tmp_path / "built", in_place=in_place, max_streams=4, batched_prefill=True)
    _stand_ins(monkeypatch, built)
    monkeypatch.setattr("polygraphy.backend.trt.TrtRunner", _BatchLog)
    cfg = RuntimeConfig(built, backend="tensorrt", ratio=0.25)
    alone = [_alone(cfg, plan) for plan in TOGETHER]
    _BatchLog.calls = []
    pool = open_pool(cfg, max_streams=4)
    pool.scheduler.gather_seconds = 1.0              # a loaded machine: wait long enough for the other steps
    pool.scheduler.batch_gather_seconds = 3.0        # ... and for the other cameras' stage calls
    got = _cameras_together(pool)
    for i in range(4):
        answer, seen, kept = got[i]
        assert answer == alone[i][0]                                                # greedy answers
        assert len(kept) == len(alone[i][2]) and len(seen) == len(alone[i][1])
        for pooled, single in zip(kept, alone[i][2]):
            np.testing.assert_array_equal(pooled, single)                           # kept sets
        for pooled, single in zip(seen, alone[i][1]):
            np.testing.assert_allclose(pooled, single, atol=1e-4, rtol=0)          # logits
    calls = pool.scheduler.calls
    assert calls["prefill_retries"] == 0
    assert calls["prefill_chunks"] == sum(len(plan[2]) for plan in alone) + 4     # the chunks, the prompt prefixes
    chunk_rows = {len(k) for plan in alone for k in plan[2]}                       # kept counts: whole, short
    assert len(chunk_rows) == 2
    together = [c[1:3] for c in _BatchLog.calls if c[0] == "trt-decoder" and c[1] > 1 and c[2] > 1]
    assert {rows for _, rows in together} <= chunk_rows            # (only chunk prefills go in batches)
    if pool.backend.batched:          # the export's batched chunk graphs, built: every stage of a chunk batches,
        for kind in ("vision_encoder", "audio_encoder", "compressor", "prefill"):   # so the prefills do too
            assert calls[f"{kind}_chunks"] > calls[f"{kind}_batches"], kind
        assert (3, max(chunk_rows)) in together                    # the first chunks of streams 0-2: one call
        assert not any(c[0] in ("trt-vision_encoder", "trt-audio_encoder") for c in _BatchLog.calls)   # not loaded
    assert pool.free_slots == 4 and pool.open_streams == 0


def _valid_rows(kv) -> list[np.ndarray]:
    """A device cache's valid rows [1, kv, length, hd] per past name (host memory here)."""
    return [np.array(view)[:, :, :kv.length] for view in kv.bind().values()]


@pytest.mark.parametrize("in_place", [True, False], ids=["decoder_scatter", "decoder_past_present"])
def test_a_batched_chunk_prefill_writes_each_streams_rows_as_its_own_prefill(folder, tmp_path, monkeypatch, in_place):
    """The batched chunk prefill itself, queued behind a held runner (one scheduler batch): streams on slots 0-2,
    slot 2's cache a chunk longer than the others', slot 3 open but not prefilling. In place: one decoder call of
    3 rows on slots 0-2, each at its own write_index; past/present: one call over their gathered, masked pasts.
    Each stream's cache afterwards equals a lone stream's that did the same prefill; slot 3's is untouched."""
    from omnisift_edge.runtime import chunk_batch as cb

    built = _pool_build(folder, tmp_path / "built", in_place=in_place, max_streams=4, batched_prefill=True)
    _stand_ins(monkeypatch, built)
    monkeypatch.setattr("polygraphy.backend.trt.TrtRunner", _BatchLog)
    cfg = RuntimeConfig(built, backend="tensorrt", ratio=0.25)
    pool = open_pool(cfg, max_streams=4)
    streams = [pool.open_stream() for _ in range(4)]
    lone = [OmniSession(cfg) for _ in range(3)]
    for session in (streams[2], lone[2], streams[3]):
        _first_chunks(session, TOGETHER[1], 2)                               # one chunk in
    idle = _valid_rows(streams[3].stream.kv)
    table = streams[0].stream.embed_table
    embeds = table[np.arange(100, 119)][None]                               # [1, 19, D]: 19 rows, as a chunk's
    n = embeds.shape[1]
    rows = lambda kv: np.repeat(np.arange(kv.length, kv.length + n)[None], 3, axis=0)   # noqa: E731 [3, n]
    for session in lone:
        session.stream._step(embeds, rows(session.stream.kv), want_logits=False)
    release, errors = threading.Event(), []
    holder = threading.Thread(target=pool.scheduler.call, args=(lambda: release.wait(60),))
    holder.start()                                                           # the prefills queue behind it

    def prefill(stream):
        try:
            stream.kv.reserve(n)
            pool.scheduler.prefill(cb.prefill_key(n), stream, embeds, rows(stream.kv))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=prefill, args=(s.stream,)) for s in streams[:3]]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(pool.scheduler._others) < 3:
        assert time.monotonic() < deadline, "the prefills did not queue"
        time.sleep(0.005)
    _BatchLog.calls, counted = [], dict(pool.scheduler.calls)
    release.set()
    for t in (holder, *threads):
        t.join()
    assert not errors, errors
    assert pool.scheduler.calls["prefill_batches"] - counted["prefill_batches"] == 1
    assert pool.scheduler.calls["prefill_chunks"] - counted["prefill_chunks"] == 3
    assert [c[1:3] for c in _BatchLog.calls if c[0] == "trt-decoder"] == [(3, n)]     # one engine call, 3 rows
    for stream, session in zip(streams, lone):
        assert stream.stream.kv.length == session.stream.kv.length
        for pooled, single in zip(_valid_rows(stream.stream.kv), _valid_rows(session.stream.kv)):
            np.testing.assert_allclose(pooled, single, atol=1e-5, rtol=0)
    for after, before in zip(_valid_rows(streams[3].stream.kv), idle):
        np.testing.assert_array_equal(after, before)                         # the stream not prefilling


@pytest.mark.trt
@pytest.mark.gpu
def test_chunks_together_on_real_engines_match_lone_sessions(folder, tmp_path):
    """The GPU check of the batched chunks (docs/runtime.md): engines built here with --max-streams 4 (the decoder's
    batched prefill profile, and the batched encoder/compressor engines where the export has their graphs);
    three cameras push together, a fourth starts later, two clips end short: kept sets, logits within fp32
    engine noise and greedy answers as each stream alone; the prefills (and the chunk stages) ran in batches."""
    import shutil

    from omnisift_edge.engines.build import build_engines
    from omnisift_edge.engines.plan import BuildConfig

    export = tmp_path / "export"
    shutil.copytree(folder, export)
    build_engines(BuildConfig(export, target="auto", precision="fp32", max_streams=4))
    cfg = RuntimeConfig(export, backend="tensorrt", ratio=0.25)
    alone = [_alone(cfg, plan) for plan in TOGETHER]
    pool = open_pool(cfg, max_streams=4)
    pool.scheduler.gather_seconds = pool.scheduler.batch_gather_seconds = 1.0
    assert pool.backend.batches_prefill                       # the build's batched chunk-prefill profile
    got = _cameras_together(pool)
    for i in range(4):
        answer, seen, kept = got[i]
        assert answer == alone[i][0]
        for pooled, single in zip(kept, alone[i][2]):
            np.testing.assert_array_equal(pooled, single)
        for pooled, single in zip(seen, alone[i][1]):
            np.testing.assert_allclose(pooled, single, atol=2e-3, rtol=0)
    calls = pool.scheduler.calls
    kinds = ("vision_encoder", "audio_encoder", "compressor", "prefill") if pool.backend.batched else ("prefill",)
    for kind in kinds:
        assert calls[f"{kind}_chunks"] > calls[f"{kind}_batches"], kind
    assert calls["prefill_retries"] == 0 and pool.free_slots == 4
