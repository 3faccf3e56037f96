"""Where an export's host memory goes: peak RSS and anonymous RSS per export step (a debug aid).

With `OMNISIFT_EDGE_TRACE_MEMORY=<file>` in the environment, `traced(progress)` wraps the export's
progress callback: a daemon thread samples /proc/self/status (VmRSS, RssAnon, RssFile) every 50 ms,
and at each progress point the step that just ended is appended to `<file>` as one JSON line
(its name, seconds, and the peaks of RSS, anonymous and file-backed RSS during it, bytes; the RSS
peak is the kernel's exact VmHWM, reset at each step through /proc/self/clear_refs, the other two are
sampled, so a spike shorter than a sample can be missed). Without
the variable it returns `progress` unchanged and starts nothing. Linux only (/proc); elsewhere the
peaks read 0. benchmarks/export_cost.py sets it and prints the table (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

ENV = "OMNISIFT_EDGE_TRACE_MEMORY"
KEYS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def read_status() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process now, bytes (0 where /proc is missing)."""
    values = dict.fromkeys(KEYS, 0)
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key = line.split(":", 1)[0]
                if key in values:
                    values[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return values


def _main_stack() -> str:
    """Where the main thread is (innermost frames last): the line that was running at a step's anonymous peak."""
    import sys
    import traceback

    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return ""
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-8:][::-1])


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0; ignored where refused)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


class _Sampler:
    """Peaks of `KEYS` since the last `step`, sampled by a daemon thread."""

    def __init__(self, file: str, interval: float = 0.05):
        self.file, self.interval, self.lock = file, interval, threading.Lock()
        self.name, self.started, self.peaks = "start", time.perf_counter(), read_status()
        self.where = ""
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self._sample()
            time.sleep(self.interval)

    def _sample(self) -> None:
        now = read_status()
        with self.lock:
            if now["RssAnon"] > self.peaks["RssAnon"]:
                self.where = _main_stack()
            self.peaks = {k: max(self.peaks[k], now[k]) for k in KEYS}

    def step(self, name: str) -> None:
        """Close the running step (write its line) and open `name`."""
        self._sample()
        with self.lock:
            record = {"step": self.name, "seconds": round(time.perf_counter() - self.started, 2), **self.peaks,
                      "anon_peak_at": self.where}
            self.where = ""
            _reset_peak()
            self.name, self.started, self.peaks = name, time.perf_counter(), read_status()
        with open(self.file, "a") as out:
            out.write(json.dumps(record) + "\n")


_SAMPLER: list[_Sampler] = []


def mark(name: str) -> None:
    """Start a traced sub-step `name` (nothing printed); a no-op when tracing is off."""
    if _SAMPLER:
        _SAMPLER[0].step(name)


def finish() -> None:
    """Write the last step's line; a no-op when tracing is off."""
    if _SAMPLER:
        _SAMPLER.pop().step("end")


def traced(progress: Callable[[str], None]) -> Callable[[str], None]:
    """`progress`, recording each step's memory peaks when `OMNISIFT_EDGE_TRACE_MEMORY` names a file."""
    file = os.environ.get(ENV)
    if not file:
        return progress
    _SAMPLER[:] = [_Sampler(file)]

    def wrapped(message: str) -> None:
        mark(message)
        progress(message)

    return wrapped
