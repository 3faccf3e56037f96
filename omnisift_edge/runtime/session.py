"""The runtime stage's entry: `open_session(RuntimeConfig) -> OmniSession`, the API an app embeds.

An `OmniSession` opens an export folder (manifest schema, checksums and tool version checked),
takes media as it arrives (2-second chunks of frames + PCM, or a whole file), encodes, compresses
and prefills each chunk into the KV cache, then answers questions as streamed text, again and
again on the same context. Backends: `onnxruntime` (the exported graphs, CPU or CUDA provider)
and `torch` (the reference: the model the export was made from, chunk compressor included).

Rules (also in docs/runtime.md):
- frames must have the export's resolution; PCM is mono float at 16 kHz;
- a trailing partial chunk goes to the torch backend as it is (what transformers computes on the
  unpadded clip); exported graphs and engines take whole chunks, so for them it is padded to 2
  seconds (last frame repeated, audio zero-padded) when the stream ends or a question arrives;
- context policy: when the KV cache would exceed max_context, `ContextFullError` (a UsageError)
  is raised and nothing is appended: never a silently truncated context.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from omnisift_edge import __version__
from omnisift_edge.errors import UsageError
from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT
from omnisift_edge.runtime.stream import ChunkReport

BACKENDS = ("onnxruntime", "torch", "tensorrt")


@dataclass(frozen=True)
class RuntimeConfig:
    folder: Path
    backend: str = "onnxruntime"
    ratio: float | None = None            # one of the export's ratios; None: the first it lists
    device: str = "cpu"                   # cpu | cuda (ORT's CUDA provider, or torch on the GPU)
    max_context: int | None = None        # None: the export's
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    target: str | None = None             # tensorrt: which build's engines; None: the only one built
    model: Path | None = None             # torch: the model folder (default: the one the manifest records)
    pad_tail: bool | None = None          # pad a short last chunk to 2 s; None: only where the backend needs it

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise UsageError(f"--device must be cpu or cuda (got {self.device!r})")
        if self.pad_tail is False and self.backend != "torch":
            raise UsageError(f"the {self.backend} backend takes whole 2-second chunks only; leave pad_tail unset")
        if self.max_context is not None and self.max_context < 256:
            raise UsageError(f"--max-context must be at least 256 tokens (got {self.max_context})")


def _check_versions(manifest: dict) -> None:
    wrote = str(manifest.get("tools", {}).get("omnisift_edge", ""))
    if wrote.split(".")[:2] != __version__.split(".")[:2]:
        raise UsageError(f"this export was written by omnisift-edge {wrote or 'unknown'}, this is {__version__}; "
                         "export again with this version")


class OmniSession:
    """Stream media in, ask questions, get streamed answers (see the module docstring)."""

    def __init__(self, cfg: RuntimeConfig):
        from omnisift_edge.export.manifest import read_manifest
        from omnisift_edge.model.preprocess import StreamingLogMel
        from omnisift_edge.model.prompt import build_prompt
        from omnisift_edge.model.tokenizer import load_tokenizer
        from omnisift_edge.runtime.ort_pipeline import compressor_graph_name, spec_from_manifest

        self.cfg = cfg
        self.manifest = manifest = read_manifest(cfg.folder)
        _check_versions(manifest)
        self.spec = spec_from_manifest(manifest)
        self.resolution = tuple(manifest["resolution"])
        self.ratio = _pick_ratio(manifest, cfg.ratio)
        self.plan = next(e for e in manifest["ratios"] if e["graph"] == compressor_graph_name(manifest, self.ratio))
        self.tokenizer = load_tokenizer(cfg.folder / manifest["tokenizer"]["folder"])
        self.stop_ids = list(manifest["stop_token_ids"])
        prefix = build_prompt(self.tokenizer, "", system=cfg.system_prompt, spec=self.spec).prefix_ids
        self.stream = self._open_backend(prefix)
        self._mel = StreamingLogMel(self.spec)
        self._frames: deque = deque()       # frames waiting for their audio window (4 per chunk)
        self._windows: deque = deque()      # audio windows waiting for their frames
        self._samples = 0
        self._finished = False
        self._questions = 0

    def _open_backend(self, prefix_ids: Sequence[int]):
        max_context = self.cfg.max_context or self.manifest["max_context"]
        if self.cfg.backend == "onnxruntime":
            from omnisift_edge.runtime.ort_pipeline import OrtStream

            providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if self.cfg.device.startswith("cuda") \
                else ("CPUExecutionProvider",)
            return OrtStream(self.cfg.folder, self.manifest, self.ratio, prefix_ids, providers=providers,
                             max_context=max_context)
        if self.cfg.backend == "tensorrt":
            from omnisift_edge.runtime.trt_pipeline import TrtStream

            return TrtStream(self.cfg.folder, self.manifest, self.ratio, prefix_ids, target=self.cfg.target,
                             max_context=max_context)
        from omnisift_edge.model.load import ModelSource, load_model
        from omnisift_edge.runtime.torch_pipeline import CompressionConfig, TorchStream

        source = self.manifest["export_config"]["source"]
        path = self.cfg.model if self.cfg.model is not None else source["path"]   # resolved at export
        model = load_model(ModelSource(path=path, compressor=source["compressor"], seed=source["seed"],
                                       dtype=self.manifest["dtype"], selector_heads=source["selector_heads"],
                                       default_chat_template=source.get("default_chat_template", False),
                                       device=self.cfg.device))
        if model.identity.get("config_sha256") != self.manifest["model"].get("config_sha256"):
            raise UsageError("the model folder changed since the export (config hash differs); export again")
        grid_hw = (self.manifest["dims"]["grid_h"], self.manifest["dims"]["grid_w"])
        compression = CompressionConfig(self.plan["rho_video"], self.plan["rho_audio"])
        return TorchStream(model, prefix_ids, grid_hw=grid_hw, compression=compression, max_context=max_context)

    # -- media in --------------------------------------------------------------------------------
    @property
    def reports(self) -> list[ChunkReport]:
        return self.stream.reports

    def append_chunk(self, frames: np.ndarray, pcm: np.ndarray) -> list[ChunkReport]:
        """Frames [T, H, W, 3] uint8 at 2 fps and the PCM [N] (16 kHz mono) they span; any split."""
        if self._finished:
            raise UsageError("the media stream ended when the first question was asked; open a new session")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UsageError(f"frames must be uint8 [T, H, W, 3] RGB (got {frames.dtype} {list(frames.shape)})")
        if tuple(frames.shape[1:3]) != self.resolution:
            h, w = self.resolution
            raise UsageError(f"frames are {frames.shape[1]}x{frames.shape[2]} but this export takes {h}x{w}; "
                             f"resize them (omnisift_edge.model.preprocess.resize_frames) or export at that size")
        windows = self._mel.push(pcm)        # checks the PCM first: a refused chunk changes nothing
        self._frames.extend(frames)
        self._samples += len(pcm)
        return self._drain(windows)

    def append_file(self, path: Path, *, audio_path: Path | None = None) -> list[ChunkReport]:
        """Decode a file (video + its audio track, or a separate audio file) and append it whole."""
        from omnisift_edge.model.media import load_media
        from omnisift_edge.model.preprocess import resize_frames

        media = load_media(Path(path), self.spec, audio_path=audio_path)
        frames = media.frames
        if tuple(frames.shape[1:3]) != self.resolution:
            frames = resize_frames(frames, self.resolution)
        n_samples = int(round(len(frames) / self.spec.fps * self.spec.sample_rate))   # audio to the video's length
        pcm = np.pad(media.pcm[:n_samples], (0, max(0, n_samples - len(media.pcm))))
        per_chunk, samples = self.spec.raw_frames_per_chunk, self.spec.samples_per_chunk
        reports = []
        for j in range(-(-len(frames) // per_chunk)):
            reports += self.append_chunk(frames[j * per_chunk:(j + 1) * per_chunk], pcm[j * samples:(j + 1) * samples])
        return reports + self.finish()

    def finish(self) -> list[ChunkReport]:
        """End the media: process a trailing partial chunk.

        The torch backend takes it as it is (1 grid step, a short audio window): the same as
        transformers on the unpadded clip. Exported graphs and engines take whole chunks only, so
        for them it is padded to 2 s (last frame repeated, silence); docs/streaming.md measures
        what that padding moves.
        """
        if self._finished:
            return []
        self._finished = True
        per_chunk = self.spec.raw_frames_per_chunk
        frames = len(self.stream.reports) * per_chunk + len(self._frames)
        if self._partial_tail:
            want = int(round(frames / self.spec.fps * self.spec.sample_rate))   # audio to the video's length
        else:
            if self._frames and len(self._frames) % per_chunk:
                self._frames.extend([self._frames[-1]] * (per_chunk - len(self._frames) % per_chunk))
            want = -(-frames // per_chunk) * self.spec.samples_per_chunk
        windows = []
        if want > self._samples:
            windows += self._mel.push(np.zeros(want - self._samples, np.float32))
        windows += self._mel.finish()
        return self._drain(windows)

    @property
    def _partial_tail(self) -> bool:
        """Whether the backend takes a short last chunk (PyTorch) or only whole ones (graphs, engines)."""
        if self.cfg.pad_tail is not None:
            return not self.cfg.pad_tail
        return self.cfg.backend == "torch"

    def _drain(self, windows) -> list[ChunkReport]:
        from omnisift_edge.model.preprocess import video_patches

        reports = []
        per_chunk = self.spec.raw_frames_per_chunk
        self._windows.extend(windows)
        while self._windows and (len(self._frames) >= per_chunk or (self._finished and self._frames)):
            frames = np.stack([self._frames.popleft() for _ in range(min(per_chunk, len(self._frames)))])
            pixels, grid_thw = video_patches(frames, self.spec, size=self.resolution)
            reports.append(self.stream.push(pixels, int(grid_thw[0]), self._windows.popleft().features))
        if self._finished:
            self._windows.clear()   # audio beyond the video is dropped (docs/streaming.md)
        return reports

    # -- questions out ---------------------------------------------------------------------------
    def ask_ids(self, question: str, *, max_new_tokens: int = 64) -> Iterator[int]:
        """Greedy answer token ids for `question` (the first question ends the media stream)."""
        from omnisift_edge.model.prompt import build_prompt, followup_ids

        if not isinstance(question, str):
            raise UsageError(f"the question must be a str; got {type(question).__name__}")
        if not self._finished:
            self.finish()
        if not question.strip():
            raise UsageError("the question is empty; ask something about the video")
        if self._questions == 0:
            ids = build_prompt(self.tokenizer, question, system=self.cfg.system_prompt, spec=self.spec).suffix_ids
        else:
            ids = followup_ids(self.tokenizer, question, self.spec)
        self._questions += 1
        yield from self.stream.ask(ids, max_new_tokens=max_new_tokens, stop_ids=self.stop_ids)

    def ask(self, question: str, *, max_new_tokens: int = 64) -> Iterator[str]:
        """The answer as streamed text pieces (decoded incrementally, special tokens skipped)."""
        tokens: list[int] = []
        shown = ""
        for token in self.ask_ids(question, max_new_tokens=max_new_tokens):
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if len(text) > len(shown) and not text.endswith("\ufffd"):   # wait for whole UTF-8 characters
                yield text[len(shown):]
                shown = text
        self.last_answer_ids = tokens


def _pick_ratio(manifest: dict, ratio: float | None) -> float:
    """The ratio to run: the one asked for, else the export's only one; several need a choice."""
    have = [e["ratio"] for e in manifest["ratios"]]
    if ratio is None and len(have) > 1:
        raise UsageError(f"this export has ratios {', '.join(f'{r:g}' for r in have)}; pick one with --ratio "
                         f"(e.g. --ratio {min(have):g})")
    return have[0] if ratio is None else ratio


def open_session(cfg: RuntimeConfig) -> OmniSession:
    return OmniSession(cfg)
