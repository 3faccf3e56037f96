"""`omnisift-edge watch` and `live.watch` on real streams served on 127.0.0.1, and its bad inputs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from omnisift_edge.errors import UsageError
from tests.helpers import write_clip
from tests.live.conftest import free_port, rtsp_server, tcp_stream, udp_stream

pytest.importorskip("av")


def _events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(export, url, events=None, **fields):
    from omnisift_edge.live.source import SourceConfig
    from omnisift_edge.live.watch import WatchConfig
    from omnisift_edge.runtime.session import RuntimeConfig

    source = {k: fields.pop(k) for k in list(fields) if k in ("realtime", "open_timeout", "read_timeout",
                                                              "retry_seconds", "require_audio")}
    return WatchConfig(runtime=RuntimeConfig(export, ratio=0.25, context_policy="sliding"),
                       source=SourceConfig(url, **source), events=events, max_new_tokens=4, **fields)


def _check_chunks(events: list[dict]) -> None:
    chunks = [e for e in events if e["event"] == "chunk"]
    end = events[-1]
    assert end["event"] == "end" and end["processed"] == len(chunks) >= 1
    assert end["captured"] == end["processed"] + end["dropped"]
    assert [c["index"] for c in chunks] == sorted({c["index"] for c in chunks})
    for c in chunks:
        assert len(c["kept_video_index"]) == c["kept_video"] and len(c["kept_audio_index"]) == c["kept_audio"]
        assert all(0 <= i < c["video_tokens"] for i in c["kept_video_index"])
        assert all(0 <= i < c["audio_tokens"] for i in c["kept_audio_index"])
        assert c["lag_ms"] >= 0


def test_watch_cli_on_a_udp_stream_answers_while_it_runs(live_export, tmp_path):
    port, events = free_port(), tmp_path / "events.jsonl"
    with udp_stream(port):
        done = subprocess.run(
            [sys.executable, "-m", "omnisift_edge.cli", "watch", str(live_export), f"udp://127.0.0.1:{port}",
             "--ratio", "0.25", "--seconds", "6", "--question", "What is shown?", "--ask-every", "4",
             "--events", str(events), "--max-new-tokens", "4"],
            input="What do you hear?\n", capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    log = _events(events)
    _check_chunks(log)
    assert log[0]["event"] == "start" and log[0]["grid"] == [4, 3]
    assert log[-1]["reason"] == "seconds" and log[-1]["captured"] == 3
    answers = [e for e in log if e["event"] == "answer"]
    assert {a["origin"] for a in answers} == {"stdin", "timer"}
    for a in answers:
        assert a["tokens"] >= 1 and a["ttft_ms"] > 0 and a["after_chunk"] is not None
    assert "3 chunks processed" in done.stderr


@pytest.mark.parametrize("server", ["rtsp", "tcp"])
def test_watch_reads_rtsp_and_tcp_streams(live_export, tmp_path, server):
    from omnisift_edge.live.watch import watch

    port, events = free_port(socket.SOCK_STREAM), tmp_path / "events.jsonl"
    serve = rtsp_server(port) if server == "rtsp" else tcp_stream(port)
    with serve as url:
        url = url if server == "rtsp" else f"tcp://127.0.0.1:{port}"
        report = watch(_config(live_export, url, events, seconds=4, question="What moves?", open_timeout=20))
    log = _events(events)
    _check_chunks(log)
    assert report.captured == 2 and [a["origin"] for a in report.answers] == ["end"]
    assert not [e for e in log if e["event"] == "notice"]       # both carry audio: no silence notice


def test_ctrl_c_ends_the_stream_cleanly(live_export, tmp_path):
    import signal

    port, events = free_port(), tmp_path / "events.jsonl"
    with udp_stream(port):
        proc = subprocess.Popen(
            [sys.executable, "-m", "omnisift_edge.cli", "watch", str(live_export), f"udp://127.0.0.1:{port}",
             "--ratio", "0.25", "--events", str(events), "--no-stdin"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert _wait_for(lambda: _has_chunk(events), 120)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    log = _events(events)
    assert log[-1]["event"] == "end" and log[-1]["reason"] == "interrupted" and log[-1]["processed"] >= 1
    assert "(interrupted)" in err and "Traceback" not in err


def _watch_in_thread(cfg, **kw):
    from omnisift_edge.live.watch import watch

    box = {}

    def go():
        try:
            box["report"] = watch(cfg, **kw)
        except UsageError as exc:
            box["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, box


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _has_chunk(path) -> bool:
    return path.exists() and '"event": "chunk"' in path.read_text()


def test_a_source_that_dies_is_reconnected_and_the_stream_goes_on(live_export, tmp_path):
    port, events = free_port(), tmp_path / "events.jsonl"
    cfg = _config(live_export, f"udp://127.0.0.1:{port}", events, seconds=8, read_timeout=1.0, retry_seconds=20,
                  open_timeout=20, question="What happens?")
    with udp_stream(port):
        thread, box = _watch_in_thread(cfg)
        assert _wait_for(lambda: _has_chunk(events), 60)
    time.sleep(1.5)                                        # the source is gone: a stall, then reconnect tries
    with udp_stream(port):
        thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in box
    log = _events(events)
    _check_chunks(log)
    gaps = [e for e in log if e["event"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["reconnects"] == 1 and box["report"].reconnects == 1
    assert gaps[0]["new_turn"] is True
    before = [e for e in log[:log.index(gaps[0])] if e["event"] == "chunk"]
    after = [e for e in log[log.index(gaps[0]):] if e["event"] == "chunk"]
    assert after and log[-1]["reason"] == "seconds"
    assert {e["turn"] for e in before} == {0} and {e["turn"] for e in after} == {1}   # the chunks after it: turn 1
    answers = [e for e in log if e["event"] == "answer"]                  # asked at the end, in the new turn
    assert len(answers) == 1 and answers[0]["tokens"] >= 1 and log.index(answers[0]) > log.index(after[-1])


def test_a_source_that_never_comes_back_is_one_error(live_export, tmp_path):
    port, events = free_port(), tmp_path / "events.jsonl"
    cfg = _config(live_export, f"udp://127.0.0.1:{port}", events, read_timeout=1.0, retry_seconds=2, open_timeout=20)
    with udp_stream(port):
        thread, box = _watch_in_thread(cfg)
        assert _wait_for(lambda: _has_chunk(events), 60)
    start = time.monotonic()
    thread.join(timeout=30)
    assert not thread.is_alive() and time.monotonic() - start < 15
    assert "did not come back within 2 s" in str(box["error"])
    assert _events(events)[-1]["reason"] == "error"


def test_bad_sources_are_one_line_within_their_timeout(live_export, tmp_path):
    from omnisift_edge.live.watch import watch

    silent_port = free_port()
    start = time.monotonic()
    with pytest.raises(UsageError, match=r"cannot open udp://127\.0\.0\.1:\d+ .* within 1 s"):
        watch(_config(live_export, f"udp://127.0.0.1:{silent_port}", open_timeout=1))
    assert time.monotonic() - start < 30
    with pytest.raises(UsageError, match="no capture device /dev/video97"):
        watch(_config(live_export, "/dev/video97"))
    audio_only = write_clip(tmp_path / "tone.mp4", seconds=1, video=False)
    with pytest.raises(UsageError, match="has no video stream"):
        watch(_config(live_export, str(audio_only), realtime=True))
    mute = write_clip(tmp_path / "mute.mp4", seconds=2, w=112, h=84, audio=False)
    with pytest.raises(UsageError, match="no audio track and --require-audio"):
        watch(_config(live_export, str(mute), require_audio=True))


def test_no_audio_is_silence_stated_and_a_size_change_is_rescaled(live_export, tmp_path):
    from omnisift_edge.live.watch import watch

    mute = write_clip(tmp_path / "mute.mp4", seconds=4, w=112, h=84, audio=False)
    events = tmp_path / "mute.jsonl"
    report = watch(_config(live_export, str(mute), events))            # a file, not real time: no drops
    log = _events(events)
    assert any("no audio track" in e.get("text", "") for e in log if e["event"] == "notice")
    assert report.processed == 2 and report.dropped == 0
    # two MPEG-TS segments of different sizes, back to back in one file
    parts = [tmp_path / "a.ts", tmp_path / "b.ts"]
    write_clip(parts[0], seconds=2, w=112, h=84, vcodec="mpeg2video", acodec="mp2")
    write_clip(parts[1], seconds=2.5, w=168, h=112, vcodec="mpeg2video", acodec="mp2")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
    events = tmp_path / "joined.jsonl"
    report = watch(_config(live_export, str(joined), events))
    notices = [e["text"] for e in _events(events) if e["event"] == "notice"]
    assert any("changed to 168x112" in n for n in notices) and report.processed >= 2


def test_view_on_a_taken_port_is_one_line(live_export, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "omnisift_edge.cli", "watch", str(live_export), "udp://127.0.0.1:9",
             "--ratio", "0.25", "--view", f"127.0.0.1:{port}", "--no-stdin"],
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"Error: --view 127.0.0.1:{port}: the port is taken; pick "
                                                "another port (port 0 picks a free one)"]
