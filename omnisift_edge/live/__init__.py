"""Live stage: a camera, network stream or real-time file through a runtime session, in real time.

Entry: `run(WatchConfig) -> WatchReport` (= `watch.watch`). Units: `source` (PyAV input:
`LiveSource`, `SourceConfig`), `chunker` (2-second chunks on the source clock, the bounded queue
and its drop policy), `capture` (the capture thread, reconnects), `watch` + `loop` (the
inference side: session, questions, events), `view` + `page` (the `--view` web page).
Rules and the events format: docs/live.md.
"""

from __future__ import annotations


def run(cfg, **callbacks):
    """Watch `cfg.source` (a `watch.WatchConfig`); see `watch.watch`."""
    from omnisift_edge.live.watch import watch

    return watch(cfg, **callbacks)
