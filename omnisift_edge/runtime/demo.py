"""`omnisift-edge demo`: stream a clip through OmniSIFT and the thinker in PyTorch and answer.

The clip is split into 2-second chunks (4 frames at 2 fps, 32000 samples); each chunk is
preprocessed, encoded, compressed and prefilled as it would arrive from a camera, then the
question is asked and the answer streamed. Prints per-chunk kept tokens and the achieved ratio.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omnisift_edge.errors import UsageError
from omnisift_edge.model.load import ModelSource
from omnisift_edge.model.preprocess import parse_resolution


@dataclass(frozen=True)
class DemoConfig:
    source: ModelSource = ModelSource()
    video: Path | None = None
    audio: Path | None = None
    seconds: float = 6.0
    resolution: str = "112x112"
    ratio: float = 0.25
    question: str = "What happens in the video, and what do you hear?"
    max_new_tokens: int = 16

    def __post_init__(self):
        if not 0 < self.ratio <= 1:
            raise UsageError(f"--ratio must be in (0, 1] (got {self.ratio}); 0.25 keeps a quarter of the tokens")
        if self.video is None and not 0 < self.seconds <= 600:
            raise UsageError(f"--seconds must be in (0, 600] (got {self.seconds})")
        if not 1 <= self.max_new_tokens <= 4096:
            raise UsageError(f"--max-new-tokens must be in [1, 4096] (got {self.max_new_tokens})")
        parse_resolution(self.resolution)          # fail before the model loads, not after
        for flag, path in (("--video", self.video), ("--audio", self.audio)):
            if path is not None and not Path(path).is_file():
                raise UsageError(f"{flag} {path} does not exist; pass a video file with an audio track")


@dataclass
class DemoResult:
    chunks: list = field(default_factory=list)
    answer_ids: list = field(default_factory=list)
    answer: str = ""
    rho_video: float = 0.0
    rho_audio: float = 0.0
    stream_seconds: float = 0.0
    answer_seconds: float = 0.0

    @property
    def tokens_in(self) -> int:
        return sum(c.video_tokens + c.audio_tokens for c in self.chunks)

    @property
    def tokens_kept(self) -> int:
        return sum(c.kept_video + c.kept_audio for c in self.chunks)

    def summary(self) -> str:
        ratio = self.tokens_kept / max(1, self.tokens_in)
        text = repr(self.answer) if self.answer else "(no text: the tokens are outside the tokenizer's vocabulary)"
        return (f"kept {self.tokens_kept}/{self.tokens_in} audio+video tokens ({ratio:.1%}; video drop "
                f"{self.rho_video:.3f}, audio drop {self.rho_audio:.3f}) in {len(self.chunks)} chunks; "
                f"streamed in {self.stream_seconds:.2f}s, answered in {self.answer_seconds:.2f}s\n"
                f"answer ids: {self.answer_ids}\nanswer: {text}")


def _load_clip(cfg: DemoConfig, spec, size: tuple[int, int]):
    """(frames [T, H, W, 3] uint8 at 2 fps, pcm float32 at 16 kHz)."""
    if cfg.video is not None:
        from omnisift_edge.model.media import load_media

        media = load_media(cfg.video, spec, audio_path=cfg.audio)
        return media.frames, media.pcm
    if cfg.audio is not None:
        raise UsageError("--audio goes with --video; leave both out for the generated clip")
    from omnisift_edge.model.synthetic import synthetic_clip

    clip = synthetic_clip(cfg.seconds, *size, fps=spec.fps, sample_rate=spec.sample_rate)
    return clip.frames, clip.pcm


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    from omnisift_edge.model.load import load_model
    from omnisift_edge.model.media import fit_audio_to_video
    from omnisift_edge.model.preprocess import StreamingLogMel, video_patches
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.runtime.torch_pipeline import CompressionConfig, TorchStream

    model = load_model(cfg.source)
    spec = model.spec
    size = parse_resolution(cfg.resolution)
    frames, pcm = _load_clip(cfg, spec, size)
    pieces = build_prompt(model.tokenizer, cfg.question, spec=spec)
    grid_hw = (size[0] // spec.patch_size, size[1] // spec.patch_size)
    compression = CompressionConfig.for_ratio(cfg.ratio, spec.tokens_per_frame(*size))
    stream = TorchStream(model, pieces.prefix_ids, grid_hw=grid_hw, compression=compression)
    result = DemoResult(rho_video=compression.rho_video, rho_audio=compression.rho_audio)

    per_chunk = spec.raw_frames_per_chunk
    n_chunks = -(-len(frames) // per_chunk)
    pcm = fit_audio_to_video(pcm, len(frames), spec)
    mel_stream = StreamingLogMel(spec)
    pending: deque = deque()       # video chunks waiting for their audio window's STFT look-ahead
    started = time.perf_counter()
    for j in range(n_chunks):
        pending.append(frames[j * per_chunk:(j + 1) * per_chunk])
        windows = mel_stream.push(pcm[j * spec.samples_per_chunk:(j + 1) * spec.samples_per_chunk])
        if j == n_chunks - 1:
            windows += mel_stream.finish()
        for mel in windows[:len(pending)]:   # audio beyond the video is dropped
            pixel_values, grid_thw = video_patches(pending.popleft(), spec, size=size)
            report = stream.push(pixel_values, int(grid_thw[0]), mel.features)
            result.chunks.append(report)
            echo(f"chunk {report.index}: video {report.kept_video}/{report.video_tokens}, "
                 f"audio {report.kept_audio}/{report.audio_tokens}")
    result.stream_seconds = time.perf_counter() - started
    started = time.perf_counter()
    stop_ids = [model.spec.tokens.im_end, model.spec.tokens.endoftext]
    result.answer_ids = list(stream.ask(pieces.suffix_ids, max_new_tokens=cfg.max_new_tokens, stop_ids=stop_ids))
    result.answer_seconds = time.perf_counter() - started
    result.answer = model.tokenizer.decode(result.answer_ids, skip_special_tokens=True)
    return result
