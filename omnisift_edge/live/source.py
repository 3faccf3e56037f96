"""Live sources through PyAV: a network stream, a V4L2 device, or a file played at its real pace.

`LiveSource(SourceConfig)` opens the input once (`open`), then `items()` yields what it decodes in
arrival order: `VideoItem(t, frame)` (an `av.VideoFrame`, converted only if the chunker samples it)
and `AudioItem(t, pcm)` (float32 16 kHz mono, resampled by FFmpeg's resampler as `model.media`
does). Times are seconds on the source's clock (pts * time_base). A stall longer than the read
timeout or the end of a live stream raises `SourceLost` (the capture loop reconnects); a source
that cannot be opened is a one-line `UsageError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from omnisift_edge.errors import UsageError, require

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "rtp", "tcp", "http", "https", "srt")
SAMPLE_RATE = 16000


class SourceLost(Exception):
    """The source stalled past the read timeout, or a live stream ended: reconnect (not a user error)."""


@dataclass(frozen=True)
class VideoItem:
    t: float                    # seconds on the source clock
    frame: Any                  # av.VideoFrame


@dataclass(frozen=True)
class AudioItem:
    t: float                    # seconds on the source clock of the first sample
    pcm: np.ndarray             # [n] float32 mono 16 kHz


@dataclass(frozen=True)
class SourceConfig:
    url: str                              # rtsp://, udp://, tcp://, http(s)://, srt://, /dev/videoN, or a file
    realtime: bool = False                # a file: play it at its real pace (a live source always is)
    format: str | None = None             # force FFmpeg's demuxer (e.g. mpegts, v4l2)
    require_audio: bool = False           # a source without audio is an error instead of silence
    open_timeout: float = 10.0            # seconds to open (and probe) the source
    read_timeout: float = 5.0             # seconds without data that count as a stall
    retry_seconds: float = 30.0           # how long a lost live source is retried before giving up
    audio: str | None = None              # a separate audio input: alsa:DEVICE, pulse:DEVICE, or a URL/file

    def __post_init__(self):
        if not str(self.url).strip():
            raise UsageError("the source is empty; pass a URL (rtsp://, udp://...), /dev/videoN or a file")
        for name in ("open_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0 seconds (got {getattr(self, name)})")
        if self.retry_seconds < 0:
            raise UsageError(f"--retry-seconds must be >= 0 (got {self.retry_seconds})")

    @property
    def kind(self) -> str:
        """network | device | file."""
        scheme = str(self.url).split("://", 1)[0].lower() if "://" in str(self.url) else ""
        if scheme in NETWORK_SCHEMES:
            return "network"
        if str(self.url).startswith("/dev/") or self.format in ("v4l2", "video4linux2", "alsa", "pulse"):
            return "device"
        return "file"

    def audio_input(self) -> "SourceConfig | None":
        """The separate audio input as a source of its own (`alsa:hw:0` -> url hw:0, format alsa)."""
        if self.audio is None:
            return None
        fmt, _, rest = str(self.audio).partition(":")
        url, fmt = (rest, fmt) if fmt in ("alsa", "pulse") and rest else (self.audio, None)
        return replace(self, url=url, format=fmt, audio=None, require_audio=True)

    @property
    def live(self) -> bool:
        """Whether the source runs on its own clock (drops possible) or waits for the reader (a file)."""
        return self.kind != "file" or self.realtime


def _demuxer_options(cfg: SourceConfig) -> tuple[str | None, dict]:
    scheme = str(cfg.url).split("://", 1)[0].lower()
    options = {"analyzeduration": "2000000", "probesize": "2000000"}
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = "tcp"                 # no lost UDP packets on a loaded link
    if scheme == "udp":
        options["overrun_nonfatal"] = "1"                 # a reader that falls behind loses packets, not the stream
    fmt = cfg.format
    if fmt is None and cfg.kind == "device":
        fmt = "v4l2"
    return fmt, options


class LiveSource:
    """One opened input: `open()`, then iterate `items()`; `close()` releases it (see module doc)."""

    def __init__(self, cfg: SourceConfig, *, video: bool = True):
        self.cfg = cfg
        self.video = video                                # False: an audio-only input (its video ignored)
        self.container = None
        self.has_audio = False
        self.size: tuple[int, int] | None = None          # (W, H) the video stream declares

    def open(self) -> "LiveSource":
        """Open the input or raise a UsageError naming what to check."""
        av = require("av")
        cfg = self.cfg
        if str(cfg.url).startswith("/dev/") and not Path(cfg.url).exists():
            raise UsageError(f"no capture device {cfg.url}; list devices with `v4l2-ctl --list-devices` "
                             "or `ls /dev/video*`")
        if cfg.kind == "file" and not Path(cfg.url).is_file():
            raise UsageError(f"no such file or known stream: {cfg.url}; pass rtsp://, udp://, tcp://, http(s)://, "
                             "srt:// URLs, /dev/videoN or a media file")
        fmt, options = _demuxer_options(cfg)
        try:
            self.container = av.open(str(cfg.url), mode="r", format=fmt, options=options,
                                     timeout=(cfg.open_timeout, cfg.read_timeout))
        except (av.error.FFmpegError, OSError) as exc:
            reason = (getattr(exc, "strerror", None) or str(exc)).strip().rstrip(".")
            raise UsageError(f"cannot open {cfg.url} ({reason}) within {cfg.open_timeout:g} s; check that the "
                             "stream is running and the URL, port or device is right") from None
        if self.video and not self.container.streams.video:
            self.close()
            raise UsageError(f"{cfg.url} has no video stream; OmniSIFT needs video (pass a camera or video stream)")
        self.has_audio = bool(self.container.streams.audio)
        if not self.has_audio and cfg.require_audio:
            self.close()
            if not self.video:
                raise UsageError(f"the audio input {cfg.url} has no audio stream; pass an audio device or stream")
            raise UsageError(f"{cfg.url} has no audio track and --require-audio was given; add audio to the "
                             "stream or drop --require-audio (silence is used then)")
        if self.video:
            cc = self.container.streams.video[0].codec_context
            self.size = (cc.width, cc.height)
        return self

    def items(self) -> Iterator[VideoItem | AudioItem]:
        """Decoded video frames and resampled audio blocks in arrival order (see the module doc)."""
        av = require("av")
        container = self.container
        vstream = container.streams.video[0] if self.video else None
        astream = container.streams.audio[0] if self.has_audio else None
        for s in (vstream, astream):
            if s is not None:
                s.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if astream else None
        pace = _Pace() if self.cfg.kind == "file" and self.cfg.realtime else None
        try:
            for packet in container.demux([s for s in (vstream, astream) if s is not None]):
                for frame in packet.decode():
                    if frame.pts is None or frame.time_base is None:
                        continue                          # no timestamp: cannot be placed on the clock
                    t = float(frame.pts * frame.time_base)
                    if pace is not None:
                        pace.wait(t)
                    if packet.stream is vstream:
                        yield VideoItem(t, frame)
                    else:
                        pcm = np.concatenate([o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
                                             or [np.zeros(0, np.float32)]).astype(np.float32)   # [n]
                        yield AudioItem(t, pcm)
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceLost(f"{(getattr(exc, 'strerror', None) or str(exc)).strip()}") from None
        if self.cfg.kind != "file":
            raise SourceLost("the stream ended")

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


class _Pace:
    """Sleeps so that source time t is reached no earlier than wall time (a file at its real pace)."""

    def __init__(self):
        self.origin: tuple[float, float] | None = None    # (source t, wall) of the first frame

    def wait(self, t: float) -> None:
        if self.origin is None:
            self.origin = (t, time.monotonic())
            return
        delay = self.origin[1] + (t - self.origin[0]) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
