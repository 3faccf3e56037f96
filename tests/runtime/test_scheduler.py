"""The pool's scheduler: decode steps batched, answers first without starving other calls, errors to their caller."""

from __future__ import annotations

import threading
import time

import pytest

from omnisift_edge.runtime.scheduler import Scheduler


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_pending_decodes_share_one_call_and_alternate_with_other_calls():
    order, release = [], threading.Event()

    def run_decodes(steps):
        order.append(("decode", sorted(s[0] for s in steps)))
        if any(s[0] == "bad" for s in steps):
            raise ValueError("a failed batch")
        return [s[0] * 2 for s in steps]

    scheduler = Scheduler(run_decodes)
    results, errors = {}, {}

    def other(name, wait=False):
        def fn():
            if wait:
                assert release.wait(10)
            order.append(("other", name))
            if name == "broken":
                raise RuntimeError("only mine")
            return name
        try:
            results[name] = scheduler.call(fn)
        except RuntimeError as error:
            errors[name] = str(error)

    def decode(value):
        results[value] = scheduler.decode(value)

    threads = [threading.Thread(target=other, args=("prefill0", True))]
    threads[0].start()
    _wait_for(lambda: scheduler._running)                      # the first call holds the runner
    for queued, name in enumerate(("broken", "prefill2"), 1):
        threads.append(threading.Thread(target=other, args=(name,)))
        threads[-1].start()
        _wait_for(lambda: len(scheduler._others) == queued)   # queued in this order
    for value in ("a", "b", "c"):
        threads.append(threading.Thread(target=decode, args=(value,)))
        threads[-1].start()
    _wait_for(lambda: len(scheduler._decodes) == 3 and len(scheduler._others) == 2)
    release.set()
    for t in threads:
        t.join(10)
    assert order == [("other", "prefill0"), ("decode", ["a", "b", "c"]), ("other", "broken"),
                     ("other", "prefill2")]                   # answers first; then the others, in arrival order
    assert results == {"prefill0": "prefill0", "prefill2": "prefill2", "a": "aa", "b": "bb", "c": "cc"}
    assert errors == {"broken": "only mine"}                   # one caller's error, the others served
    assert scheduler.calls == {"decode_batches": 1, "decode_steps": 3, "prefill_batches": 0, "prefill_chunks": 0,
                               "prefill_retries": 0, "other": 3}
    with pytest.raises(ValueError, match="a failed batch"):
        scheduler.decode("bad")
    assert scheduler.call(lambda: 7) == 7                      # still serving after a failed batch


def test_pending_prefills_of_one_key_share_a_call_and_a_bad_one_fails_alone():
    """Prefills queued together go in one call per key, in their turn; decode steps still go first; when a
    batch fails, each prefill runs alone, so only the bad one's caller gets the error."""
    order, release = [], threading.Event()

    def run_batch(kind, jobs):
        assert kind == "prefill"
        order.append(("prefill", sorted(j[0] for j in jobs)))
        if len(jobs) > 1 and any(j[0] == "bad" for j in jobs):
            raise ValueError("the batch failed")
        if jobs[0][0] == "bad":
            raise ValueError("bad chunk")
        return [j[0].upper() for j in jobs]

    def run_decodes(steps):
        order.append(("decode", sorted(s[0] for s in steps)))
        return [s[0] for s in steps]

    scheduler = Scheduler(run_decodes, run_batch=run_batch)
    results, errors = {}, {}

    def submit(kind, name, key=None):
        try:
            if kind == "call":
                results[name] = scheduler.call(lambda: (release.wait(10), order.append(("other", name)))[1] or name)
            elif kind == "prefill":
                results[name] = scheduler.prefill(key, name, name)
            else:
                results[name] = scheduler.decode(name)
        except ValueError as error:
            errors[name] = str(error)

    threads = [threading.Thread(target=submit, args=("call", "encoder"))]
    threads[0].start()
    _wait_for(lambda: scheduler._running)
    for kind, name, key in (("prefill", "p1", 10), ("prefill", "q1", 7), ("prefill", "p2", 10),
                            ("prefill", "bad", 7), ("decode", "d", None)):
        threads.append(threading.Thread(target=submit, args=(kind, name, key)))
        threads[-1].start()
        _wait_for(lambda: len(scheduler._others) + len(scheduler._decodes) == len(threads) - 1)
    release.set()
    for t in threads:
        t.join(10)
    assert order == [("other", "encoder"), ("decode", ["d"]), ("prefill", ["p1", "p2"]),
                     ("prefill", ["bad", "q1"]), ("prefill", ["q1"]), ("prefill", ["bad"])]
    assert results == {"encoder": "encoder", "d": "d", "p1": "P1", "p2": "P2", "q1": "Q1"}
    assert errors == {"bad": "bad chunk"}
    assert scheduler.calls["prefill_batches"] == 2 and scheduler.calls["prefill_chunks"] == 4
    assert scheduler.calls["prefill_retries"] == 1



def test_other_calls_run_by_the_arrival_of_the_work_they_serve():
    """A chunk's later calls rank as the chunk: an earlier chunk's call goes before a later chunk's, whatever
    order they were queued in (earliest deadline first); equal ranks keep their queue order."""
    order, release = [], threading.Event()
    scheduler = Scheduler(lambda steps: [None] * len(steps))
    holder = threading.Thread(target=scheduler.call, args=(lambda: release.wait(10),))
    holder.start()
    _wait_for(lambda: scheduler._running)
    early, late = time.monotonic() - 1.0, time.monotonic()
    threads = []
    for name, rank in (("late chunk: vision", late), ("early chunk: prefill", early), ("late chunk: audio", late)):
        threads.append(threading.Thread(target=scheduler.call, args=(lambda n=name: order.append(n),),
                                        kwargs={"rank": rank}))
        threads[-1].start()
        _wait_for(lambda: len(scheduler._others) == len(threads))
    release.set()
    for t in (holder, *threads):
        t.join(10)
    assert order == ["early chunk: prefill", "late chunk: vision", "late chunk: audio"]


def test_a_batch_waits_for_pushing_streams_between_two_calls():
    """Streams inside a push (begin_chunk) whose next call is not queued yet: the batchable call at the head waits
    for them (at most batch_gather_seconds), so the chunks that arrived together stay one batch; a lone pusher
    never waits."""
    batches = []

    def run_batch(kind, items):
        batches.append((kind, sorted(i[0] for i in items)))
        return [i[0] for i in items]

    scheduler = Scheduler(lambda steps: [None] * len(steps), run_batch=run_batch, batch_gather_seconds=5.0)
    results = {}

    def push(name, delay):
        try:
            time.sleep(delay)                                 # host work before the call
            results[name] = scheduler.batch("vision", "shape", name, rank=time.monotonic())
        finally:
            scheduler.end_chunk()

    threads = [threading.Thread(target=push, args=(name, delay)) for name, delay in (("a", 0.0), ("b", 0.3))]
    scheduler.begin_chunk()                                   # both streams are inside a media call
    scheduler.begin_chunk()
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert batches == [("vision", ["a", "b"])] and results == {"a": "a", "b": "b"}
    assert time.monotonic() - start < 4.0                     # b's call ended the wait, not the 5-s limit
    scheduler.begin_chunk()
    start = time.monotonic()
    assert scheduler.batch("vision", "shape", "c", rank=time.monotonic()) == "c"    # alone: no wait
    scheduler.end_chunk()
    assert time.monotonic() - start < 1.0 and scheduler.calls["vision_batches"] == 2


def test_a_batch_takes_at_most_max_batch_calls_in_arrival_order():
    """`max_batch`: five pending calls of one key run as batches of 2, 2 and 1, earliest first; another key apart."""
    batches, release = [], threading.Event()

    def run_batch(kind, items):
        batches.append([item[0] for item in items])
        return [item[0] for item in items]

    scheduler = Scheduler(lambda steps: [], run_batch=run_batch, max_batch=2)
    results = {}
    hold = threading.Thread(target=lambda: scheduler.call(lambda: release.wait(10)))
    hold.start()
    _wait_for(lambda: scheduler._running)                       # the runner is busy: the calls below queue
    threads = []
    for i, key in enumerate(("k", "k", "other", "k", "k", "k")):
        threads.append(threading.Thread(target=lambda i=i, key=key: results.update(
            {i: scheduler.batch("vision_encoder", key, i, rank=float(i))})))
        threads[-1].start()
        _wait_for(lambda n=i + 1: len(scheduler._others) == n)
    release.set()
    for t in [hold, *threads]:
        t.join(10)
    assert results == {i: i for i in range(6)}                  # every caller its own result
    assert batches == [[0, 1], [2], [3, 4], [5]]                # by rank, at most 2 rows, keys apart
    assert scheduler.calls["vision_encoder_batches"] == 4 and scheduler.calls["vision_encoder_chunks"] == 6
