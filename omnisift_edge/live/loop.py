"""`LiveLoop`: the inference side of `watch` (session, capture thread, questions, events).

Kept apart from `watch.py` (the config, the report and the small helpers) to keep each module
short. One instance runs once: `run()` then `close()`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from omnisift_edge.errors import UsageError
from omnisift_edge.live.watch import (EventLog, Questions, WatchConfig, WatchReport, chunk_event, jpeg_frames,
                                      max_chunks, parse_hostport, stdin_questions)


class LiveLoop:
    """Opens the session, the page and the source, then takes chunks and answers (watch.py's doc)."""

    def __init__(self, cfg: WatchConfig, events: EventLog, *, text: Callable[[str], None],
                 progress: Callable[[str], None], stop: threading.Event | None = None):
        self.cfg, self.events, self.text, self.progress = cfg, events, text, progress
        self.stop = stop or threading.Event()
        self.report = WatchReport()
        self.questions = Questions()
        self.session = self.view = self.capture = None
        self.next_ask = cfg.ask_every
        self.last_index: int | None = None
        self.turn_open = False              # the session's current turn has media (its log-mel runs on)
        self.connection = 0                 # the source connection of the last chunk processed

    # -- setup ---------------------------------------------------------------------------------
    def _open(self) -> None:
        from omnisift_edge.live.capture import Capture
        from omnisift_edge.live.chunker import AUDIO_WAIT, SEPARATE_AUDIO_WAIT, ChunkAssembler, ChunkQueue
        from omnisift_edge.live.source import LiveSource
        from omnisift_edge.runtime.session import open_session

        cfg = self.cfg
        self.session = session = open_session(cfg.runtime)
        if cfg.view is not None:
            from omnisift_edge.live.view import View

            self.view = View(*parse_hostport(cfg.view), on_question=self.questions.put)
            self.report.url = self.view.start()
            self.events.view = self.view
            self.progress(f"view: {self.report.url}")
        source = LiveSource(cfg.source).open()
        self.progress(f"opened {cfg.source.url} ({source.size[0]}x{source.size[1]}"
                      f"{', with audio' if source.has_audio else ''})")
        merge = session.spec.spatial_merge_size
        grid = [session.stream.grid_hw[0] // merge, session.stream.grid_hw[1] // merge]
        self.events.emit({"event": "start", "source": str(cfg.source.url), "export": str(cfg.runtime.folder),
                          "backend": cfg.runtime.backend, "ratio": session.ratio,
                          "resolution": list(session.resolution), "grid": grid, "policy": cfg.drop_policy,
                          "queue": cfg.queue})
        audio = None
        if cfg.source.audio is not None:
            try:
                audio = LiveSource(cfg.source.audio_input(), video=False).open()
            except UsageError:
                source.close()
                raise
            self.progress(f"opened the audio input {cfg.source.audio}")
        elif not source.has_audio:
            self._notice(f"{cfg.source.url} has no audio track: every chunk gets silence (--require-audio refuses)")
        assembler = ChunkAssembler(session.resolution, session.spec, notice=self._notice,
                                   silent=audio is None and not source.has_audio,
                                   audio_wait=SEPARATE_AUDIO_WAIT if audio is not None else AUDIO_WAIT)
        chunks = ChunkQueue(cfg.queue, cfg.drop_policy, block=not cfg.source.live)
        self.capture = Capture(source, assembler, chunks, self.events.emit,
                               max_chunks=max_chunks(cfg.seconds, session.spec.seconds_per_chunk), audio=audio)
        if cfg.stdin:
            stdin_questions(self.questions.put)

    def _notice(self, text: str) -> None:
        self.progress(text)
        self.events.emit({"event": "notice", "text": text})

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> WatchReport:
        self._open()
        self.capture.start()
        chunks = self.capture.queue
        try:
            while not chunks.done:
                if self.stop.is_set():
                    self.capture.stop.set()
                    self.capture.ended_by = "stopped"
                chunk, stale = chunks.get(timeout=0.1, max_age=self.cfg.max_lag)
                for gone in stale:
                    self.events.emit({"event": "drop", "index": gone.index, "capture_time": gone.start,
                                      "policy": "stale", "dropped": chunks.dropped})
                if chunk is not None:
                    self._process(chunk)
                if self.last_index is not None:
                    for question, origin in self.questions.take():
                        self._answer(question, origin)
            self.report.reason = self.capture.ended_by
            if self.cfg.question and self.cfg.ask_every is None and self.last_index is not None:
                self._answer(self.cfg.question, "end")
        except KeyboardInterrupt:
            self.report.reason = "interrupted"
        if self.capture.error is not None:
            self.report.reason = "error"
            self._end()
            raise self.capture.error
        self._end()
        return self.report

    def _process(self, chunk) -> None:
        from omnisift_edge.live.chunker import lookahead

        if chunk.connection != self.connection:      # the source came back after a gap: a new user turn
            self.connection = chunk.connection
            if self.turn_open:
                self.session.new_turn()
                self.turn_open = False
        # a turn's first chunk brings all its samples; later ones skip the lookahead already pushed
        pcm = chunk.pcm[lookahead(self.session.spec):] if self.turn_open else chunk.pcm
        reports = self.session.append_chunk(chunk.frames, pcm)
        self.turn_open = True
        if not reports:                             # not reached with whole chunks; never an IndexError
            return
        lag_ms = (time.monotonic() - chunk.captured) * 1000
        self.report.processed += 1
        self.report.lags_ms.append(lag_ms)
        self.last_index = chunk.index
        report = reports[-1]
        kept_index = self.session.stream.kept_indices[-1]
        event = chunk_event(chunk, report, kept_index, lag_ms, self.capture.queue.dropped, self.report.processed,
                            self.session.turn)
        self.events.emit(event, **({"frames": jpeg_frames(chunk.frames)} if self.view is not None else {}))
        end = chunk.start + self.session.spec.seconds_per_chunk
        if self.next_ask is not None and end >= self.next_ask:
            while self.next_ask <= end:
                self.next_ask += self.cfg.ask_every
            self._answer(self.cfg.question, "timer")

    def _answer(self, question: str, origin: str) -> None:
        """Ask `question` now; stream the answer to `text` and the page; an `answer` event."""
        session = self.session
        self.events.emit({"event": "asking", "question": question, "origin": origin})
        start = time.perf_counter()
        first = None
        tokens: list[int] = []
        shown = ""
        try:
            for token in session.ask_ids(question, max_new_tokens=self.cfg.max_new_tokens):
                first = first or time.perf_counter()
                tokens.append(token)
                text = session.tokenizer.decode(tokens, skip_special_tokens=True)
                if len(text) > len(shown) and not text.endswith("\ufffd"):   # whole UTF-8 characters only
                    piece, shown = text[len(shown):], text
                    self.text(piece)
                    if self.view is not None:
                        self.view.publish({"event": "piece", "question": question, "text": piece})
        except UsageError as exc:                   # e.g. a question the context cannot hold: said, not fatal
            self.turn_open = False                  # asking ended the turn's media either way
            self._notice(f"question not asked: {exc}")
            return
        end = time.perf_counter()
        self.turn_open = False              # the question ended the turn: the next chunk opens a new one
        self.text("\n" if shown else "(no text: the answer tokens decode to nothing, as a random-weight model answers)\n")
        rate = (len(tokens) - 1) / (end - first) if first is not None and len(tokens) > 1 and end > first else None
        answer = {"event": "answer", "question": question, "text": shown, "origin": origin,
                  "ttft_ms": round(((first or end) - start) * 1000, 1), "tokens": len(tokens),
                  "tokens_per_s": round(rate, 2) if rate else None, "after_chunk": self.last_index}
        self.report.answers.append(answer)
        self.events.emit(answer)

    def _end(self) -> None:
        capture, report = self.capture, self.report
        report.captured, report.partial = capture.captured, capture.partial
        report.reconnects, report.dropped = capture.reconnects, capture.queue.dropped
        report.capture_cpu_s = capture.cpu_seconds
        self.events.emit({"event": "end", **report.summary()})

    def close(self) -> None:
        if self.capture is not None:
            self.capture.stop.set()
            self.capture.join(timeout=self.cfg.source.read_timeout + 2)
        if self.view is not None:
            self.view.stop()
        if self.session is not None:
            self.session.close()
