"""camera_app --gst end to end with the stub backend (ctest camera_app_gst_*; docs/cpp.md).

    python3 gst_app.py CAMERA_APP CASE      CASE: testsrc | file | udp | drops | bad

Needs OMNISIFT_EXPORT_DIR (an export folder; cpp/ci.sh makes one) and GStreamer's base and good
plugins (Debian gstreamer1.0-plugins-base/-good, gstreamer1.0-tools); exits 77 (skipped) without
them. Every run is bounded by a timeout; the servers are real GStreamer pipelines on 127.0.0.1
that the case starts and stops. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = sys.argv[1] if len(sys.argv) > 1 else ""
EXPORT = os.environ.get("OMNISIFT_EXPORT_DIR", "")
TMP = Path(tempfile.mkdtemp(prefix="omnisift_gst_"))
LIVE_AV = ("videotestsrc is-live=true pattern=ball ! video/x-raw,framerate=15/1 ! video.  "
           "audiotestsrc is-live=true freq=440 ! audio.")


def run(pipeline: str, *extra: str, timeout: float = 60) -> tuple[int, str, str, list[dict]]:
    """camera_app EXPORT --stub --gst PIPELINE ...: exit code, stdout, stderr, events."""
    events = TMP / f"events-{time.monotonic_ns()}.jsonl"
    cmd = [APP, EXPORT, "--stub", "--gst", pipeline, "--events", str(events), "--question", "What happens?", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = events.read_text().splitlines() if events.exists() else []
    print(f"$ {' '.join(cmd)}\n-> {p.returncode}\n{p.stdout}{p.stderr}")
    return p.returncode, p.stdout, p.stderr, [json.loads(line) for line in lines]


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind]


def problems(stderr: str) -> list[str]:
    """camera_app's own lines other than the stub notice."""
    return [ln for ln in stderr.splitlines() if ln.startswith("camera_app:") and "stub backend" not in ln]


def check(cond: bool, what: str) -> None:
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)


def check_stream(code, events, *, chunks: int, reason: str, audio: bool = True) -> None:
    check(code == 0, f"exit 0 (got {code})")
    chunk = of(events, "chunk")
    check([c["index"] for c in chunk] == list(range(chunks)), f"chunk events 0..{chunks - 1}: {chunk}")
    check(all(c["kept_video"] + c["kept_audio"] > 0 and c["video_tokens"] > 0 and c["audio_tokens"] == 50
              for c in chunk), "every chunk kept tokens")
    check(all(c["lag_ms"] >= 0 for c in chunk), "lag measured")
    if audio:
        check(all(c["audio_filled"] < 3200 for c in chunk), f"audio came with the video: {chunk}")
    end = of(events, "end")[-1]
    check(end["reason"] == reason and end["processed"] == chunks and end["dropped"] == 0, f"end event: {end}")
    check(len(of(events, "answer")) >= 1 and of(events, "answer")[-1]["origin"] == "end", "the last question answered")


def case_testsrc() -> None:
    code, out, err, events = run(LIVE_AV, "--seconds", "4", "--ask-every", "2")
    check_stream(code, events, chunks=2, reason="seconds")
    check([a["origin"] for a in of(events, "answer")] == ["timer", "timer", "end"], "asked every 2 s and at the end")
    check(of(events, "start")[0]["policy"] == "oldest" and "live: captured 2, processed 2, dropped 0" in out, out)
    # no audio branch: silence, stated once; --require-audio makes it an error
    code, out, err, events = run("videotestsrc is-live=true ! video.", "--seconds", "2")
    check_stream(code, events, chunks=1, reason="seconds", audio=False)
    check(len(of(events, "notice")) == 1 and "no audio branch" in of(events, "notice")[0]["text"], "notice once")
    check(of(events, "chunk")[0]["audio_filled"] == 32000, "silence")
    code, out, err, events = run("videotestsrc is-live=true ! video.", "--seconds", "2", "--require-audio")
    check(code == 1 and len(problems(err)) == 1 and "--require-audio" in problems(err)[0], "require-audio refuses")


def case_file() -> None:
    clip = TMP / "clip.webm"   # VP8 + Vorbis in WebM: encoders and decoders of plugins-base/-good only
    subprocess.run(["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=125", "pattern=smpte", "!",
                    "video/x-raw,width=160,height=120,framerate=25/1", "!", "vp8enc", "deadline=1", "!", "webmmux",
                    "name=m", "!", "filesink", f"location={clip}", "audiotestsrc", "num-buffers=220", "!",
                    "audio/x-raw,rate=44100,channels=2", "!", "audioconvert", "!", "vorbisenc", "!", "m."],
                   check=True, timeout=60, capture_output=True)
    # 5 s at its real pace: two whole chunks, the last second is a partial chunk (discarded)
    code, out, err, events = run(f"filesrc location={clip} ! decodebin name=d  d. ! video.  d. ! audio.")
    check_stream(code, events, chunks=2, reason="source ended")
    check(of(events, "end")[-1]["partial"] == 1, "the partial last second discarded")
    # the file without its audio: the audio branch gets nothing -> silence, stated once
    silent = TMP / "silent.webm"
    subprocess.run(["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=100", "!", "video/x-raw,framerate=25/1", "!",
                    "vp8enc", "deadline=1", "!", "webmmux", "!", "filesink", f"location={silent}"],
                   check=True, timeout=60, capture_output=True)
    code, out, err, events = run(f"filesrc location={silent} ! decodebin name=d  d. ! video.  d. ! audio.")
    check(code == 0 and len(of(events, "notice")) == 1 and "no audio arrived" in of(events, "notice")[0]["text"],
          "a stream without audio: silence, said once")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def rtp_server(vport: int, aport: int, seconds: float) -> subprocess.Popen:
    """A live camera streaming RTP (VP8 video, Opus audio) to 127.0.0.1 for `seconds`."""
    frames, blocks = int(seconds * 15), int(seconds * 100)
    return subprocess.Popen(
        ["gst-launch-1.0", "-q", "videotestsrc", "is-live=true", f"num-buffers={frames}", "pattern=ball", "!",
         "video/x-raw,width=160,height=120,framerate=15/1", "!", "vp8enc", "deadline=1", "keyframe-max-dist=5", "!",
         "rtpvp8pay", "!", "udpsink", "host=127.0.0.1", f"port={vport}",
         "audiotestsrc", "is-live=true", f"num-buffers={blocks}", "samplesperbuffer=480", "!",
         "audio/x-raw,rate=48000,channels=1", "!", "audioconvert", "!", "opusenc", "!", "rtpopuspay", "!",
         "udpsink", "host=127.0.0.1", f"port={aport}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rtp_client(vport: int, aport: int) -> str:
    return (f'udpsrc address=127.0.0.1 port={vport} caps="application/x-rtp,media=video,encoding-name=VP8,'
            f'payload=96,clock-rate=90000" ! rtpjitterbuffer latency=100 ! rtpvp8depay ! vp8dec ! video.  '
            f'udpsrc address=127.0.0.1 port={aport} caps="application/x-rtp,media=audio,encoding-name=OPUS,'
            f'payload=96,clock-rate=48000" ! rtpjitterbuffer latency=100 ! rtpopusdepay ! opusdec ! audio.')


def with_server(seconds: float, *args: str, timeout: float = 60):
    vport, aport = free_ports(2)
    server = None
    try:
        # the receiver first (UDP: packets sent before it listens are lost), then the camera
        proc = subprocess.Popen([APP, EXPORT, "--stub", "--gst", rtp_client(vport, aport), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        server = rtp_server(vport, aport, seconds)
        out, err = proc.communicate(timeout=timeout)
        print(f"-> {proc.returncode}\n{out}{err}")
        return proc.returncode, out, err
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)


def case_udp() -> None:
    events = TMP / "udp.jsonl"
    code, out, err = with_server(12, "--seconds", "4", "--events", str(events), "--question", "What happens?")
    ev = [json.loads(line) for line in events.read_text().splitlines()]
    check_stream(code, ev, chunks=2, reason="seconds")
    # the camera dies after 3 s (mid-chunk): one line, the whole chunk answered, the partial discarded
    events = TMP / "dies.jsonl"
    code, out, err = with_server(3, "--seconds", "20", "--read-timeout", "2", "--events", str(events))
    ev = [json.loads(line) for line in events.read_text().splitlines()]
    check(code == 1 and len(problems(err)) == 1 and "stalled" in problems(err)[0], f"one line: {problems(err)}")
    end = of(ev, "end")[-1]
    check(end["reason"] == "error" and end["processed"] == 1 and end["partial"] == 1, f"end: {end}")
    check(of(ev, "answer")[-1]["origin"] == "end", "answered over what arrived")


def case_drops() -> None:
    # inference 2.5 s per 2 s chunk, a queue of 1: chunks are dropped, counted, and the lag stays bounded
    for policy in ("oldest", "thin"):
        code, out, err, events = run(LIVE_AV, "--seconds", "12", "--queue", "1", "--process-delay-ms", "2500",
                                     "--drop-policy", policy, timeout=90)
        end = of(events, "end")[-1]
        check(code == 0 and end["captured"] == 6 and end["dropped"] >= 1, f"{policy}: drops counted: {end}")
        check(end["processed"] + end["dropped"] == end["captured"], f"{policy}: captured = processed + dropped")
        check(len(of(events, "drop")) == end["dropped"] and all(d["policy"] == policy for d in of(events, "drop")),
              "a drop event per drop")
        check(end["lag_ms_p95"] < 3 * 2500 + 2000, f"{policy}: lag bounded: {end}")


def case_bad() -> None:
    for pipeline, needle in [("nosuchelement_xyz ! video.", "does not parse"),
                             ("videotestsrc is-live=true ! fakesink", "never links into `video.`"),
                             (f"filesrc location={TMP}/missing.webm ! decodebin ! video.", "")]:
        code, out, err, events = run(pipeline, "--seconds", "4", "--read-timeout", "3", timeout=30)
        check(code == 1 and len(problems(err)) == 1 and needle in problems(err)[0] and "Traceback" not in err,
              f"one line for {pipeline!r}: {problems(err)}")
    code, out, err, events = run(LIVE_AV, "--drop-policy", "newest", timeout=30)
    check(code == 1 and "--drop-policy must be oldest or thin" in err, "bad policy")


def main() -> int:
    if not EXPORT:
        print("OMNISIFT_EXPORT_DIR is not set; skipped (cpp/ci.sh exports one)")
        return 77
    if shutil.which("gst-launch-1.0") is None:
        print("gst-launch-1.0 (gstreamer1.0-tools) is missing; skipped")
        return 77
    try:
        globals()[f"case_{sys.argv[2]}"]()
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
