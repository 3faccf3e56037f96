"""Decoding ahead: the data check and each step's examples on worker threads, in a fixed order.

Decoding and preprocessing a clip (PyAV, resize, log-mel) costs more than a training step of a
small model, and on a GPU it would leave the device idle. `workers` threads check every line in
parallel before training and decode step s + 1 while step s trains. The order never depends on the
threads: step s gets the examples `example_positions(s)` names, in that order, so a run with
`workers=0` (everything in the main thread) trains on the same examples and ends with the same
weights (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from omnisift_edge.errors import UsageError


class Feeder:
    """Runs `prepare(record)` on `workers` threads (or inline with 0); `close()` drops queued work."""

    def __init__(self, prepare: Callable, workers: int):
        self.prepare = prepare
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") if workers else None
        self.queued: dict[int, list[tuple[object, Future | None]]] = {}

    def check(self, records) -> Iterator[tuple[object, str | None]]:
        """(record, None) for a line that decodes, (record, reason) for one that does not; in order."""
        if self.pool is None:
            yield from ((r, _reason(self.prepare, r)) for r in records)
            return
        futures = [self.pool.submit(_reason, self.prepare, r) for r in records]
        for record, future in zip(records, futures):
            yield record, future.result()

    def queue(self, step: int, records) -> None:
        """Start decoding `records` for `step` (a no-op without workers: they decode when taken)."""
        if step not in self.queued:
            submit = self.pool.submit if self.pool is not None else None
            self.queued[step] = [(r, submit(self.prepare, r) if submit else None) for r in records]

    def take(self, step: int, records) -> Iterator[tuple[object, object | None, Exception | None]]:
        """(record, example, None) or (record, None, error) for each of `step`'s records, in order."""
        self.queue(step, records)
        for record, future in self.queued.pop(step):
            try:
                yield record, (future.result() if future is not None else self.prepare(record)), None
            except Exception as exc:   # the caller decides: skip the line or stop
                yield record, None, exc

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _reason(prepare: Callable, record) -> str | None:
    try:
        prepare(record)
    except UsageError as exc:
        return str(exc)
    except Exception as exc:   # a media library's own error on a broken file: a bad line, not a crash
        return f"media error ({type(exc).__name__}: {exc})"
    return None
