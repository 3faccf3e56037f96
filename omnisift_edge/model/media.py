"""Decode a video file into frames at 2 fps and mono 16 kHz PCM, with PyAV (imported lazily).

`load_media` is the one entry point: it demuxes the video file once (video and audio packets
together), keeps only the frames nearest to the sampling times k / fps, and resamples the audio
with FFmpeg's resampler (`av.AudioResampler(format="flt", layout="mono", rate=16000)`). Anything
the user can fix (missing file, not a media file, no audio) is a one-line `UsageError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.model.spec import OmniSpec


@dataclass(frozen=True)
class SourceInfo:
    """Where the media came from and what it was before sampling."""

    path: str
    audio_path: str | None      # a separate audio file, or None when the audio is the video file's
    width: int                  # native frame size (the frames are not resized here)
    height: int
    video_codec: str
    native_fps: float | None    # the video stream's average frame rate, when the container says
    audio_codec: str
    native_sample_rate: int
    native_channels: int


@dataclass(frozen=True, eq=False)
class Media:
    """A decoded clip: frames at `fps`, mono PCM at `sample_rate`."""

    frames: np.ndarray          # [T, H, W, 3] uint8 RGB, frame k shows time k / fps
    pcm: np.ndarray             # [N] float32 mono in [-1, 1]
    duration: float             # seconds of video (last frame's end), capped at max_seconds
    fps: float                  # spec.fps (2.0)
    sample_rate: int            # spec.sample_rate (16000)
    source: SourceInfo

    @property
    def audio_seconds(self) -> float:
        return self.pcm.shape[0] / self.sample_rate


def fit_audio_to_video(pcm: np.ndarray, n_frames: int, spec: OmniSpec = OmniSpec()) -> np.ndarray:
    """The audio track trimmed or zero-padded to the video's duration (n_frames at spec.fps).

    OmniSIFT pairs each 2-second video chunk with its own audio window, so audio beyond the video
    is dropped and a short track is padded with silence (docs/streaming.md).
    """
    n_samples = int(round(n_frames / spec.fps * spec.sample_rate))
    pcm = np.asarray(pcm, np.float32)
    return np.pad(pcm[:n_samples], (0, max(0, n_samples - len(pcm))))


def _check_file(path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"no such {what} file: {p}; check the path")
    if not p.is_file():
        raise UsageError(f"{what} path is not a file: {p}; pass a media file such as clip.mp4")
    if p.stat().st_size == 0:
        raise UsageError(f"{what} file is empty (zero-length): {p}; pass a non-empty media file")
    return p


def _open(av, path: Path, what: str):
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        kinds = "mp4, mkv, webm, ..." if what == "video" else "wav, mp3, m4a, ..."
        raise UsageError(f"cannot read {path} as media ({_reason(exc)}): not a media file, or corrupt or "
                         f"truncated; pass a valid {what} file ({kinds})") from None


def _reason(exc) -> str:
    return (getattr(exc, "strerror", None) or str(exc)).strip().rstrip(".")


class _FramePicker:
    """Keeps, for each sampling time k / fps, the decoded frame whose timestamp is nearest.

    Frames arrive in presentation order. Target k is decided as soon as a frame at or after it
    arrives: the nearer of that frame and the one before it, the earlier on a tie. Targets past
    the last frame take the last frame. Only chosen frames are converted to RGB arrays.
    """

    def __init__(self, fps: Fraction):
        self.fps = fps
        self.picked: list[np.ndarray] = []          # [H, W, 3] uint8 each
        self.size: tuple[int, int] | None = None    # (W, H) of the first frame
        self.prev = None                            # (time, frame, rgb or None)
        self.frames_seen = 0

    def _rgb(self, entry):
        t, frame, rgb = entry
        if rgb is None:
            w, h = self.size
            rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()          # [H, W, 3]
        return (t, frame, rgb)

    def offer(self, t: Fraction, frame) -> None:
        if self.size is None:
            self.size = (frame.width, frame.height)
        self.frames_seen += 1
        cur = (t, frame, None)
        while True:
            target = Fraction(len(self.picked)) / self.fps
            if t < target:
                break
            if self.prev is not None and target - self.prev[0] <= t - target:
                self.prev = self._rgb(self.prev)
                self.picked.append(self.prev[2])
            else:
                cur = self._rgb(cur)
                self.picked.append(cur[2])
        self.prev = cur

    def finish(self, n_targets: int) -> np.ndarray:
        while len(self.picked) < n_targets and self.prev is not None:
            self.prev = self._rgb(self.prev)
            self.picked.append(self.prev[2])
        return np.stack(self.picked[:n_targets])                                           # [T, H, W, 3]


def _frame_time(frame, stream, start_pts, index: int, rate) -> Fraction:
    """Seconds since the stream start, exactly (pts * time_base), or index / rate without a pts."""
    if frame.pts is not None and stream.time_base is not None:
        return (frame.pts - start_pts) * stream.time_base
    if rate:
        return Fraction(index) / Fraction(rate)
    raise UsageError("video frames carry no timestamps and the stream no frame rate; re-mux it with ffmpeg")


def _frame_duration(frame, stream, prev_t, t) -> Fraction:
    if getattr(frame, "duration", None) and stream.time_base is not None:
        return frame.duration * stream.time_base
    if stream.average_rate:
        return 1 / Fraction(stream.average_rate)
    return (t - prev_t) if prev_t is not None else Fraction(0)


class _AudioSink:
    def __init__(self, av, rate: int):
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.blocks: list[np.ndarray] = []          # [n] float32 each
        self.samples = 0
        self.declared: Fraction | None = None       # the stream's declared duration in seconds, if any

    def add(self, frame) -> None:
        for out in self.resampler.resample(frame):
            block = out.to_ndarray().reshape(-1)                                               # [n]
            self.blocks.append(block)
            self.samples += block.shape[0]

    def pcm(self) -> np.ndarray:
        self.add(None)                                                                         # flush
        return np.concatenate(self.blocks).astype(np.float32) if self.blocks else np.zeros(0, np.float32)


def _decode(av, container, path: Path, spec: OmniSpec, *, want_video: bool, want_audio: bool,
            max_seconds: float | None):
    """One pass over the packets of the wanted streams -> (picker, video facts, audio sink)."""
    vstream = container.streams.video[0] if want_video else None
    astream = container.streams.audio[0] if want_audio else None
    streams = [s for s in (vstream, astream) if s is not None]
    for s in streams:
        s.thread_type = "AUTO"
    limit = Fraction(max_seconds).limit_denominator(10**6) if max_seconds is not None else None
    picker = _FramePicker(Fraction(spec.fps).limit_denominator(10**6)) if vstream is not None else None
    sink = _AudioSink(av, spec.sample_rate) if astream is not None else None
    if astream is not None and astream.duration and astream.time_base is not None:
        sink.declared = astream.duration * astream.time_base
    audio_cap = round(max_seconds * spec.sample_rate) if max_seconds is not None else None
    start_pts, prev_t, end_t, video_done = None, None, Fraction(0), vstream is None
    try:
        for packet in container.demux(streams):   # ends with one empty packet per stream: the flush
            if packet.stream is vstream and not video_done:
                for frame in packet.decode():
                    if start_pts is None:
                        start_pts = vstream.start_time if vstream.start_time is not None else (frame.pts or 0)
                    t = _frame_time(frame, vstream, start_pts, picker.frames_seen, vstream.average_rate)
                    if limit is not None and t >= limit:
                        video_done = True
                        break
                    picker.offer(t, frame)
                    end_t = max(end_t, t + _frame_duration(frame, vstream, prev_t, t))
                    prev_t = t
            elif packet.stream is astream and (audio_cap is None or sink.samples < audio_cap):
                for frame in packet.decode():
                    sink.add(frame)
            if video_done and (sink is None or (audio_cap is not None and sink.samples >= audio_cap)):
                break
    except av.error.FFmpegError as exc:
        raise UsageError(f"{path} is corrupt or truncated ({_reason(exc)}); re-encode or re-download it") from None
    if limit is not None:
        end_t = min(end_t, limit)
    return picker, end_t, sink


def load_media(path, spec: OmniSpec = OmniSpec(), *, audio_path=None, max_seconds: float | None = None) -> Media:
    """Decode `path` into frames at spec.fps and mono PCM at spec.sample_rate.

    Frame k is the decoded frame nearest in presentation time to k / fps (seconds from the video
    stream's start, earlier frame on a tie), for k = 0 .. floor(duration * fps) - 1 (at least one
    frame); duration is the end of the last frame. The audio comes from `audio_path` when given,
    else from the file's first audio stream; it is returned whole (its length may differ from the
    video's by a frame or so). `max_seconds` cuts both at that time.
    """
    av = require("av")
    if max_seconds is not None and not max_seconds > 0:
        raise UsageError(f"max_seconds must be > 0 (got {max_seconds}); omit it to decode the whole file")
    vpath = _check_file(path, "video")
    apath = _check_file(audio_path, "audio") if audio_path is not None else None

    with _open(av, vpath, "video") as container:
        if not container.streams.video:
            raise UsageError(f"{vpath} has no video stream; pass a video file (audio-only input is not supported)")
        own_audio = apath is None
        if own_audio and not container.streams.audio:
            raise UsageError(f"{vpath} has no audio stream; pass --audio FILE with the soundtrack")
        vcc = container.streams.video[0].codec_context
        rate = container.streams.video[0].average_rate
        picker, end_t, sink = _decode(av, container, vpath, spec, want_video=True, want_audio=own_audio,
                                      max_seconds=max_seconds)
        acc = container.streams.audio[0].codec_context if own_audio else None
    if picker.frames_seen == 0:
        raise UsageError(f"{vpath} has no decodable video frames (zero-length or corrupt); pass another file")

    if apath is not None:
        with _open(av, apath, "audio") as container:
            if not container.streams.audio:
                raise UsageError(f"{apath} has no audio stream; pass an audio file (wav, mp3, m4a, ...) to --audio")
            acc = container.streams.audio[0].codec_context
            _, _, sink = _decode(av, container, apath, spec, want_video=False, want_audio=True,
                                 max_seconds=max_seconds)

    pcm = sink.pcm()                                                                           # [N]
    if sink.declared is not None:
        pcm = pcm[:math.ceil(sink.declared * spec.sample_rate)]   # drop the codec's last-frame padding (AAC)
    if max_seconds is not None:
        pcm = pcm[:round(max_seconds * spec.sample_rate)]
    if pcm.shape[0] == 0:
        raise UsageError(f"{apath or vpath} has an empty audio stream (zero-length); pass --audio FILE")
    if not np.isfinite(pcm).all():
        raise UsageError(f"{apath or vpath} has NaN or Inf audio samples; re-encode the audio track")

    fps = Fraction(spec.fps).limit_denominator(10**6)
    n_frames = max(1, math.floor(end_t * fps))
    frames = picker.finish(n_frames)                                                           # [T, H, W, 3]
    width, height = picker.size
    source = SourceInfo(
        path=str(vpath), audio_path=str(apath) if apath else None, width=width, height=height,
        video_codec=vcc.name, native_fps=float(rate) if rate else None, audio_codec=acc.name,
        native_sample_rate=int(acc.sample_rate or 0), native_channels=_channels(acc))
    return Media(frames=frames, pcm=pcm, duration=float(end_t), fps=float(spec.fps),
                 sample_rate=spec.sample_rate, source=source)


def _channels(cc) -> int:
    n = getattr(cc, "channels", None)
    if n:
        return int(n)
    layout = getattr(cc, "layout", None)
    return len(layout.channels) if layout is not None else 0
