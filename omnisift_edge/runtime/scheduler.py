"""The pool's scheduler: every model call of every stream goes through one queue, decode steps batched.

Streams run in their callers' threads (a Triton instance's request threads, an app's camera
threads). Each model call is a job: a decode step (one answer token of one stream: batchable) or
any other call (an encoder, the compressor, a prefill: run alone). Whoever submits a job drives the
queue until its own job is done, running other streams' jobs on the way (one runner at a time; a
combining queue, no extra thread). The rule, kept simple:

- all pending decode steps go together in one batched call (`run_decodes`); while fewer steps are
  pending than streams are answering (`begin_answer`/`end_answer`), the runner waits for the
  missing ones, at most `gather_seconds` (their host work between two steps is short; a caller
  that stops reading its answer only delays the others by that much);
- decode batches and other calls alternate: after a decode batch, at most one other call runs
  before the next batch (so an answer waits for at most one prefill call, never for a chunk's
  whole prefill queue), and other calls run first-come first-served (no stream's chunk starves).

A job's error goes to its own caller only; a failed decode batch fails the steps in it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Sequence


class _Job:
    __slots__ = ("fn", "args", "done", "result", "error")

    def __init__(self, fn: Callable | None, args: tuple = ()):
        self.fn, self.args = fn, args
        self.done, self.result, self.error = False, None, None


class Scheduler:
    """One runner at a time over a queue of decode steps (batched) and other calls (FIFO)."""

    def __init__(self, run_decodes: Callable[[Sequence[tuple]], Sequence[Any]], *, gather_seconds: float = 0.005):
        self._run_decodes = run_decodes          # [args of each step] -> [result of each step]
        self.gather_seconds = gather_seconds
        self.answering = 0                       # streams inside an answer (their next decode step is coming)
        self._gather_until: float | None = None  # when the pending decodes stop waiting for the others
        self._cv = threading.Condition()
        self._decodes: list[_Job] = []
        self._others: deque[_Job] = deque()
        self._running = False
        self._after_decode = False               # the last run was a decode batch: another call may go next
        self.calls = {"decode_batches": 0, "decode_steps": 0, "other": 0}

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (a model call that is not a decode step) in its turn; its result or its error."""
        job = _Job(fn)
        with self._cv:
            self._others.append(job)
        return self._drive(job)

    def decode(self, *args) -> Any:
        """One decode step (`run_decodes`' arguments for one stream), batched with the others pending."""
        job = _Job(None, args)
        with self._cv:
            self._decodes.append(job)
            self._cv.notify_all()                # a runner gathering a batch may be waiting for this one
        return self._drive(job)

    def begin_answer(self) -> None:
        with self._cv:
            self.answering += 1

    def end_answer(self) -> None:
        with self._cv:
            self.answering -= 1
            self._cv.notify_all()

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
            self._after_decode = False
            return [self._others.popleft()]
        batch, self._decodes = self._decodes, []
        self._after_decode, self._gather_until = True, None
        return batch

    def _drive(self, job: _Job) -> Any:
        with self._cv:
            while not job.done:
                if self._running:
                    self._cv.wait()
                    continue
                wait = self._gather_wait()
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
                work[0].result = work[0].fn()
            else:
                self.calls["decode_batches"] += 1
                self.calls["decode_steps"] += len(work)
                for job, result in zip(work, self._run_decodes([j.args for j in work])):
                    job.result = result
        except BaseException as error:           # noqa: BLE001 - handed to each caller of the work
            for job in work:
                job.error = error
        for job in work:
            job.done = True
