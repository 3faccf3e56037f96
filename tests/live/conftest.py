"""Live-stream fixtures: the shared small export and real MPEG-TS streams on 127.0.0.1 from ffmpeg."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess

import pytest


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def udp_stream(port: int, seconds: float = 60, size: str = "112x84", *, video: bool = True, audio: bool = True):
    """ffmpeg sending a test pattern and/or a tone as MPEG-TS to udp://127.0.0.1:PORT at real pace."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg (Debian package ffmpeg; .ci/run installs it)")
    inputs = (["-f", "lavfi", "-i", f"testsrc=size={size}:rate=10"] if video else []) + \
        (["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"] if audio else [])
    codecs = (["-c:v", "mpeg2video", "-g", "5"] if video else []) + (["-c:a", "mp2"] if audio else [])
    proc = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", *inputs, "-t", str(seconds), *codecs,
         "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def live_export(small_export):
    """The shared small export (112x84; ratios 1 and 0.25: pass ratio 0.25)."""
    return small_export()


@contextlib.contextmanager
def tcp_stream(port: int, seconds: float = 60):
    """ffmpeg listening on tcp://127.0.0.1:PORT, sending MPEG-TS at real pace once a reader connects."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg (Debian package ffmpeg; .ci/run installs it)")
    proc = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=112x84:rate=10",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", str(seconds), "-c:v", "mpeg2video",
         "-g", "5", "-c:a", "mp2", "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


SYSTEM_PYTHON = "/usr/bin/python3"          # Debian's, with python3-gi and gir1.2-gst-rtsp-server-1.0


@contextlib.contextmanager
def rtsp_server(port: int):
    """GStreamer's RTSP server (tests/live/rtsp_server.py) at rtsp://127.0.0.1:PORT/test."""
    from pathlib import Path

    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs Debian's python3-gi and gir1.2-gst-rtsp-server-1.0 (.ci/run installs them)")
    proc = subprocess.Popen([SYSTEM_PYTHON, str(Path(__file__).with_name("rtsp_server.py")), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", "the RTSP server did not start"
        yield f"rtsp://127.0.0.1:{port}/test"
    finally:
        proc.kill()
        proc.wait(timeout=10)
