"""The pool's scheduler: every model call of every stream goes through one queue, decode steps batched.

Streams run in their callers' threads (a Triton instance's request threads, an app's camera
threads). Each model call is a job: a decode step (one answer token of one stream: batchable), a
chunk prefill (batchable with the other streams' prefills of the same key: same shapes), or any
other call (an encoder, the compressor, a question: run alone). Whoever submits a job drives the
queue until its own job is done, running other streams' jobs on the way (one runner at a time; a
combining queue, no extra thread). The rule, kept simple:

- all pending decode steps go together in one batched call (`run_decodes`); while fewer steps are
  pending than streams are answering (`begin_answer`/`end_answer`), the runner waits for the
  missing ones, at most `gather_seconds` (their host work between two steps is short; a caller
  that stops reading its answer only delays the others by that much);
- decode batches and other calls alternate: after a decode batch, at most one other call runs
  before the next batch (so an answer waits for at most one prefill call, never for a chunk's
  whole prefill queue), and other calls run first-come first-served by the arrival of the work they
  serve (`rank`: a chunk's encoders, compressor and prefill all rank as the chunk's push), so an
  earlier chunk finishes before a later one starts instead of all of them advancing call by call
  together (earliest deadline first: every chunk's deadline is its arrival + one chunk length);
  no stream's chunk starves;
- a batchable call (`batch(kind, key, ...)`: a prefill, a chunk's encoder or compressor call) at the
  head of that queue takes every pending call of the same kind and key with it (one
  `run_batch(kind, ...)` call; the ones pulled forward are later arrivals, so nobody waits longer, and
  a pending decode batch still goes first). Which calls a backend can batch, and under which key
  (equal shapes), is its own business (runtime/pool_ort.py, pool_trt.py; runtime/chunk_batch.py);
- chunks that arrive together reach each stage at about the same time, but not at once: a stream
  prepares its chunk (log-mel, patches) before its first call, and after a batch every stream does a
  little host work before its next call. So while streams are inside a media call (`begin_chunk` /
  `end_chunk`: runtime/pool.py's `PoolStream`) and some of them have no call queued (they are between
  two calls), a batchable call at the head waits for them, at most `batch_gather_seconds` (no wait
  while a decode step is pending; a stream that queues or leaves its media call ends the wait at
  once). Without it the first stream back would run its next call alone and the batch would fall
  apart after the first stage.

A job's error goes to its own caller only: a failed decode batch fails the steps in it; a failed
batch of other calls is run again one call at a time, so a bad one fails only its own stream.
"""

from __future__ import annotations

import threading
import time
from bisect import insort
from typing import Any, Callable, Sequence


class _Job:
    __slots__ = ("fn", "args", "key", "rank", "pushed", "done", "result", "error")

    def __init__(self, fn: Callable | None, args: tuple = (), key: Any = None, rank: float | None = None):
        self.fn, self.args, self.key = fn, args, key      # key: (kind, key) of a batchable call (None: not one)
        self.pushed = rank is not None                    # a call of a chunk being pushed (it ranks as the chunk)
        self.rank = time.monotonic() if rank is None else rank   # its turn: when the work it serves arrived
        self.done, self.result, self.error = False, None, None


def _rank(job: _Job) -> float:
    return job.rank


class Scheduler:
    """One runner at a time over a queue of decode steps (batched) and other calls (by rank, batchable ones
    batched by kind and key)."""

    def __init__(self, run_decodes: Callable[[Sequence[tuple]], Sequence[Any]], *, gather_seconds: float = 0.005,
                 run_batch: Callable[[str, Sequence[tuple]], Sequence[Any]] | None = None,
                 batch_gather_seconds: float = 0.02, max_batch: int | None = None):
        self._run_decodes = run_decodes          # [args of each step] -> [result of each step]
        self._run_batch = run_batch              # (kind, [args of each call]) -> [result of each]; None: no batches
        self.gather_seconds = gather_seconds
        self.batch_gather_seconds = batch_gather_seconds
        self.max_batch = max_batch               # rows of one batchable call at most (None: every pending one)
        self.answering = 0                       # streams inside an answer (their next decode step is coming)
        self.pushing = 0                         # streams inside a chunk's push (their next chunk call is coming)
        self._gather_until: float | None = None  # when the pending decodes stop waiting for the others
        self._batch_until: float | None = None   # when the batchable call at the head stops waiting for the pushers
        self._cv = threading.Condition()
        self._decodes: list[_Job] = []
        self._others: list[_Job] = []           # by rank, then arrival (insort is stable)
        self._running = False
        self._after_decode = False               # the last run was a decode batch: another call may go next
        self.calls = {"decode_batches": 0, "decode_steps": 0, "prefill_batches": 0, "prefill_chunks": 0,
                      "prefill_retries": 0, "other": 0}   # + "{kind}_batches" / "_chunks" / "_retries" per kind

    def call(self, fn: Callable[[], Any], *, rank: float | None = None) -> Any:
        """Run `fn` (a model call that is not a decode step) in its turn; its result or its error. `rank`:
        the `time.monotonic()` the work it serves arrived (a chunk's calls share its push's; None: now)."""
        job = _Job(fn, rank=rank)
        with self._cv:
            insort(self._others, job, key=_rank)
            self._cv.notify_all()                # a runner gathering a batch counts the pushers' queued calls
        return self._drive(job)

    def decode(self, *args) -> Any:
        """One decode step (`run_decodes`' arguments for one stream), batched with the others pending."""
        job = _Job(None, args)
        with self._cv:
            self._decodes.append(job)
            self._cv.notify_all()                # a runner gathering a batch may be waiting for this one
        return self._drive(job)

    def batch(self, kind: str, key: Any, *args, rank: float | None = None) -> Any:
        """One batchable call (`run_batch(kind, ...)`'s arguments for one stream), run together with the
        pending calls of the same `kind` and `key` (equal shapes)."""
        if self._run_batch is None:
            raise RuntimeError("this scheduler batches no calls (no run_batch); submit them with call()")
        job = _Job(None, args, (kind, key), rank)
        with self._cv:
            insort(self._others, job, key=_rank)
            self._cv.notify_all()                # a runner gathering this key's batch may be waiting for it
        return self._drive(job)

    def prefill(self, key: Any, *args, rank: float | None = None) -> Any:
        """One prefill (`run_batch("prefill", ...)`'s arguments for one stream), batched with the pending
        ones of the same `key` (equal shapes)."""
        return self.batch("prefill", key, *args, rank=rank)

    def begin_answer(self) -> None:
        with self._cv:
            self.answering += 1

    def end_answer(self) -> None:
        with self._cv:
            self.answering -= 1
            self._cv.notify_all()

    def begin_chunk(self) -> None:
        """A stream starts pushing a chunk: its calls (ranked as the chunk) may batch with the others'."""
        with self._cv:
            self.pushing += 1

    def end_chunk(self) -> None:
        with self._cv:
            self.pushing -= 1
            self._cv.notify_all()

    def _batch_wait(self) -> float:
        """Seconds the batchable call at the head waits for pushing streams still between two calls (0: run now)."""
        if self._decodes or not self._others or self._others[0].key is None or self.pushing < 2:
            return 0.0
        if sum(1 for job in self._others if job.pushed) >= self.pushing:   # every pusher has its call queued
            return 0.0
        head = self._others[0]
        if self.max_batch and sum(1 for job in self._others if job.key == head.key) >= self.max_batch:
            return 0.0                                                     # the batch is full already
        now = time.monotonic()
        if self._batch_until is None:
            self._batch_until = now + self.batch_gather_seconds
        return max(0.0, self._batch_until - now)

    def _gather_wait(self) -> float:
        """Seconds to wait for the decode steps still missing from the next batch (0: run now)."""
        if not self._decodes or (self._others and self._after_decode) or len(self._decodes) >= self.answering:
            return 0.0
        now = time.monotonic()
        if self._gather_until is None:
            self._gather_until = now + self.gather_seconds
        return max(0.0, self._gather_until - now)

    def _take(self) -> list[_Job]:
        if self._others and (self._after_decode or not self._decodes):
            self._after_decode, self._batch_until = False, None
            head = self._others.pop(0)
            if head.key is None:
                return [head]
            same = [job for job in self._others if job.key == head.key]     # later arrivals, pulled forward
            same = same[:self.max_batch - 1] if self.max_batch else same
            for job in same:
                self._others.remove(job)
            return [head, *same]
        batch, self._decodes = self._decodes, []
        self._after_decode, self._gather_until = True, None
        return batch

    def _drive(self, job: _Job) -> Any:
        with self._cv:
            while not job.done:
                if self._running:
                    self._cv.wait()
                    continue
                wait = self._gather_wait() or self._batch_wait()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                self._running = True
                work = self._take()
                self._cv.release()
                try:
                    self._execute(work)
                finally:
                    self._cv.acquire()
                    self._running = False
                    self._cv.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _execute(self, work: list[_Job]) -> None:
        try:
            if work[0].fn is not None:
                self.calls["other"] += 1
                results = [work[0].fn()]
            elif work[0].key is not None:
                results = self._batch(work)
            else:
                self.calls["decode_batches"] += 1
                self.calls["decode_steps"] += len(work)
                results = self._run_decodes([j.args for j in work])
            for job, result in zip(work, results):
                job.result = result
        except BaseException as error:           # noqa: BLE001 - handed to each caller of the work
            for job in work:
                job.error = error
        for job in work:
            job.done = True

    def _count(self, name: str, n: int = 1) -> None:
        self.calls[name] = self.calls.get(name, 0) + n

    def _batch(self, work: list[_Job]) -> list[Any]:
        """One `run_batch` call for the batch; if it fails, each call alone (an error stays its stream's)."""
        kind = work[0].key[0]
        self._count(f"{kind}_batches")
        self._count(f"{kind}_chunks", len(work))
        try:
            return list(self._run_batch(kind, [j.args for j in work]))
        except Exception:
            if len(work) == 1:
                raise
        self._count(f"{kind}_retries")
        for job in work:
            try:
                job.result = self._run_batch(kind, [job.args])[0]
            except Exception as error:  # noqa: BLE001 - its caller's alone
                job.error = error
        return [job.result for job in work]
