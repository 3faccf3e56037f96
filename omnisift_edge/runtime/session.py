"""The runtime stage's entry: `open_session(RuntimeConfig) -> OmniSession`, the API an app embeds.

An `OmniSession` opens an export folder (manifest schema, checksums and tool version checked),
takes media as it arrives (2-second chunks of frames + PCM, or a whole file), encodes, compresses
and prefills each chunk into the KV cache, then answers questions as streamed text, again and
again on the same context. Backends: `onnxruntime` (the exported graphs, CPU or CUDA provider),
`tensorrt` (the engines of one build) and `torch` (the reference: the model the export was made
from, chunk compressor included).

Rules (also in docs/runtime.md):
- frames must have the export's resolution; PCM is mono float at 16 kHz;
- a trailing partial chunk goes to every backend as it is (what transformers computes on the
  unpadded clip) when the stream ends or a question arrives: graphs and engines take it through
  valid-length inputs; exports made before them get it padded to 2 seconds (last frame repeated,
  audio zero-padded);
- context policy `error` (default): when the KV cache would exceed max_context, `ContextFullError`
  (a UsageError) is raised and nothing is appended: never a silently truncated context; `sliding`
  evicts the oldest chunks instead (runtime/context.py, docs/runtime.md);
- media appended after an answer continues the stream in a new user turn (its own video span);
  `new_turn()` does the same without a question (a live source back after a gap).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT
from omnisift_edge.runtime.stream import STAGES, ChunkReport

BACKENDS = ("onnxruntime", "torch", "tensorrt")
# a session's chunk reports also time the host preprocessing (pixel patches, log-mel) the chunk needed
SESSION_STAGES = ("preprocess", *STAGES)


@dataclass(frozen=True)
class RuntimeConfig:
    folder: Path
    backend: str = "onnxruntime"
    ratio: float | None = None            # one of the export's ratios; None: its only one (several: required)
    device: str = "cpu"                   # cpu | cuda (ORT's CUDA provider, or torch on the GPU)
    max_context: int | None = None        # None: the export's
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    target: str | None = None             # tensorrt: which build's engines; None: the only one built
    context_policy: str = "error"         # error | sliding (runtime/context.py)
    window_seconds: float | None = None   # sliding: seconds of media kept; None: what max_context holds
    position_limit: int | None = None     # None: the model's max_position_embeddings (re-base before it)
    model: Path | None = None             # torch: the model folder (default: the one the manifest records)
    pad_tail: bool | None = None          # pad a short last chunk to 2 s; None: only where the graphs need it
    ort_threads: str = "quiet"            # onnxruntime: how the sessions share the CPU (artifact.onnx_runtime)
    prefill_chunks: int | None = None     # chunks per prefill call; None: a file's all at once, live ones 1 each

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise UsageError(f"--device must be cpu or cuda (got {self.device!r})")
        if self.max_context is not None:
            from omnisift_edge.artifact.limits import check_max_context

            check_max_context(self.max_context)    # the export's limit: checked once its manifest is read
        self.context                      # validates the policy
        if self.prefill_chunks is not None and self.prefill_chunks < 1:
            raise UsageError(f"--prefill-chunks must be at least 1 (got {self.prefill_chunks})")
        from omnisift_edge.artifact.onnx_runtime import check_thread_policy

        check_thread_policy(self.ort_threads)

    @property
    def context(self):
        from omnisift_edge.runtime.context import ContextPolicy

        return ContextPolicy(self.context_policy, self.window_seconds, self.position_limit)


class OmniSession:
    """Stream media in, ask questions, get streamed answers (see the module docstring)."""

    def __init__(self, cfg: RuntimeConfig):
        self._load(cfg)
        self._begin(self._open_backend(self._prefix_ids))

    def _load(self, cfg: RuntimeConfig) -> None:
        """What every stream of one export shares (runtime/pool.py loads it once): export, tokenizer, prompt."""
        from omnisift_edge.artifact.folder import ExportFolder
        from omnisift_edge.model.prompt import build_prompt
        from omnisift_edge.model.tokenizer import load_tokenizer
        from omnisift_edge.runtime.exported import spec_from_layout

        self.cfg = cfg
        self.export = ExportFolder.open(cfg.folder)
        self.manifest = manifest = self.export.manifest        # artifact.manifest.Manifest
        self.spec = spec_from_layout(self.export.manifest.layout)
        self.resolution = self.export.manifest.resolution
        ratio_plan = self.export.ratio_plan(_pick_ratio(manifest, cfg.ratio))
        self.ratio = ratio_plan.ratio
        self.plan = ratio_plan
        self.tokenizer = load_tokenizer(self.export.tokenizer_path)
        self.stop_ids = list(self.export.manifest.stop_token_ids)
        _check_context_limit(cfg, manifest)
        prefix = build_prompt(self.tokenizer, "", system=cfg.system_prompt, spec=self.spec).prefix_ids
        check_window(cfg.context, spec=self.spec, prompt_tokens=len(prefix) + 2,
                     chunk_tokens=self.plan.kept_total,
                     max_context=cfg.max_context or manifest.max_context)
        self._prefix_ids = prefix

    def _begin(self, stream) -> None:
        """This stream's own state: its backend stream (KV cache, layout) and the media waiting for a chunk."""
        from omnisift_edge.model.preprocess import StreamingLogMel

        self.stream = stream
        self.stream.prefill_chunks = self.cfg.prefill_chunks or 1      # live media: chunk by chunk unless asked
        self._mel = StreamingLogMel(self.spec)
        self._frames: deque = deque()       # frames waiting for their audio window (4 per chunk)
        self._windows: deque = deque()      # audio windows waiting for their frames
        self._samples = 0
        self._finished = False              # a question ended this turn's media; more media opens a new turn
        self._turn_start = 0                # reports before this turn's first chunk
        self._turn = 0                      # the user turn the media goes to (0: the first)
        self._questions = 0
        self._closed = False
        self._preprocess = 0.0              # host preprocessing seconds not yet booked to a chunk

    def _open_backend(self, prefix_ids: Sequence[int]):
        max_context = self.cfg.max_context or self.manifest.max_context
        if self.cfg.backend == "onnxruntime":
            from omnisift_edge.runtime.ort_pipeline import OrtStream

            providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if self.cfg.device.startswith("cuda") \
                else ("CPUExecutionProvider",)
            return OrtStream(self.export, self.ratio, prefix_ids, providers=providers, max_context=max_context,
                             context=self.cfg.context, threads=self.cfg.ort_threads)
        if self.cfg.backend == "tensorrt":
            from omnisift_edge.runtime.trt_pipeline import TrtStream

            return TrtStream(self.export, self.ratio, prefix_ids, target=self.cfg.target, max_context=max_context,
                             context=self.cfg.context)
        from omnisift_edge.runtime.torch_pipeline import TorchStream

        return TorchStream(load_export_model(self.cfg, self.manifest), prefix_ids,
                           **torch_stream_options(self.manifest, self.plan), max_context=max_context,
                           context=self.cfg.context)

    # -- media in --------------------------------------------------------------------------------
    @property
    def reports(self) -> list[ChunkReport]:
        return self.stream.reports

    def append_chunk(self, frames: np.ndarray, pcm: np.ndarray) -> list[ChunkReport]:
        """Frames [T, H, W, 3] uint8 at 2 fps and the PCM [N] (16 kHz mono) they span; any split.

        After an answer, media continues the stream in a new user turn (docs/runtime.md)."""
        self._check_open()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UsageError(f"frames must be uint8 [T, H, W, 3] RGB (got {frames.dtype} {list(frames.shape)})")
        if tuple(frames.shape[1:3]) != self.resolution:
            h, w = self.resolution
            raise UsageError(f"frames are {frames.shape[1]}x{frames.shape[2]} but this export takes {h}x{w}; "
                             f"resize them (omnisift_edge.model.preprocess.resize_frames) or export at that size")
        if self._finished and not self.stream.closed:
            raise UsageError("the media ended (finish() or append_file) and no question followed; ask one first "
                             "or call new_turn() (more media then opens a new user turn), or open a new session")
        if self._finished:                  # a question ended the last turn's media: this opens the next
            self._restart_media()
        start = time.perf_counter()
        windows = self._mel.push(pcm)        # checks the PCM first: a refused chunk changes nothing
        self._preprocess += time.perf_counter() - start
        self._frames.extend(frames)
        self._samples += len(pcm)
        return self._drain(windows)

    def _restart_media(self) -> None:
        """A new turn's media: a fresh log-mel stream, its chunks counted from here."""
        from omnisift_edge.model.preprocess import StreamingLogMel

        self._mel = StreamingLogMel(self.spec)
        self._samples = 0
        self._turn_start = len(self.stream.reports)
        self._finished = False

    @property
    def turn(self) -> int:
        """The user turn media goes to: 0 at first, +1 for each turn opened (after an answer, new_turn)."""
        return self._turn

    def new_turn(self, note: str | None = None) -> list[ChunkReport]:
        """End this turn's media without a question; the chunks that follow are a new user turn.

        For a live source back after a gap: its chunks do not continue the video before it. The turn
        ends as the chat template ends a user message with a video and no answer follows:
        `<|audio_eos|><|vision_eos|>{note}<|im_end|>\\n<|im_start|>user\\n<|vision_bos|><|audio_bos|>`
        (model.prompt.gap_pieces; `note` is plain text, None writes none). A trailing partial chunk
        is processed first, as a question would (its reports are returned). With no media in this
        turn (none yet, or an answer ended it) nothing changes: the next chunk opens the turn as ever.
        """
        self._check_open()
        if note is not None and not isinstance(note, str):
            raise UsageError(f"the note must be a str or None; got {type(note).__name__}")
        if self.stream.closed:              # an answer ended the media: the next chunk opens a new turn
            return []
        reports = self.finish()
        if len(self.stream.reports) == self._turn_start:   # no chunk in this turn: nothing to end
            self._restart_media()
            return reports
        from omnisift_edge.model.prompt import gap_pieces

        pieces = gap_pieces(self.tokenizer, note or "", self.spec)
        self.stream.end_turn(pieces.suffix_ids)
        self.stream.open_turn(pieces.prefix_ids)
        self._turn += 1
        self._restart_media()
        return reports

    def append_file(self, path: Path, *, audio_path: Path | None = None) -> list[ChunkReport]:
        """Decode a file (video + its audio track, or a separate audio file) and append it whole."""
        from omnisift_edge.model.media import fit_audio_to_video, load_media
        from omnisift_edge.model.preprocess import resize_frames

        media = load_media(Path(path), self.spec, audio_path=audio_path)
        frames = media.frames
        if tuple(frames.shape[1:3]) != self.resolution:
            frames = resize_frames(frames, self.resolution)
        pcm = fit_audio_to_video(media.pcm, len(frames), self.spec)
        per_chunk, samples = self.spec.raw_frames_per_chunk, self.spec.samples_per_chunk
        reports, chunks = [], -(-len(frames) // per_chunk)
        live, self.stream.prefill_chunks = self.stream.prefill_chunks, self.cfg.prefill_chunks or chunks   # grouped
        try:
            for j in range(chunks):
                reports += self.append_chunk(frames[j * per_chunk:(j + 1) * per_chunk],
                                             pcm[j * samples:(j + 1) * samples])
            return reports + self.finish()
        finally:
            self.stream.prefill_chunks = live

    def finish(self) -> list[ChunkReport]:
        """End the media: process a trailing partial chunk.

        Every backend takes it as it is (1 grid step, a short audio window): the same as
        transformers on the unpadded clip. Exports without valid-length inputs (before issue 25)
        take whole chunks only, so for them it is padded to 2 s (last frame repeated, silence);
        docs/streaming.md measures what that padding moves.
        """
        if self._finished:
            return []
        self._finished = True
        per_chunk = self.spec.raw_frames_per_chunk
        frames = (len(self.stream.reports) - self._turn_start) * per_chunk + len(self._frames)
        if self._partial_tail:
            want = int(round(frames / self.spec.fps * self.spec.sample_rate))   # audio to the video's length
        else:
            if self._frames and len(self._frames) % per_chunk:
                self._frames.extend([self._frames[-1]] * (per_chunk - len(self._frames) % per_chunk))
            want = -(-frames // per_chunk) * self.spec.samples_per_chunk
        windows = []
        start = time.perf_counter()
        if want > self._samples:
            windows += self._mel.push(np.zeros(want - self._samples, np.float32))
        windows += self._mel.finish()
        self._preprocess += time.perf_counter() - start
        reports = self._drain(windows)
        start = time.perf_counter()
        self.stream.flush()                 # a grouped prefill's last call: the media ended
        if reports and self.stream.prefill_chunks > 1:
            reports[-1].seconds["prefill"] += time.perf_counter() - start
        return reports

    @property
    def _partial_tail(self) -> bool:
        """Whether the backend takes a short last chunk (PyTorch) or only whole ones (graphs, engines)."""
        if self.cfg.pad_tail is not None:
            return not self.cfg.pad_tail
        return getattr(self.stream, "takes_short_chunks", True)   # torch, and graphs with valid-length inputs

    def _drain(self, windows) -> list[ChunkReport]:
        from omnisift_edge.model.preprocess import video_patches

        reports = []
        per_chunk = self.spec.raw_frames_per_chunk
        self._windows.extend(windows)
        while self._windows and (len(self._frames) >= per_chunk or (self._finished and self._frames)):
            start = time.perf_counter()
            frames = np.stack([self._frames.popleft() for _ in range(min(per_chunk, len(self._frames)))])
            pixels, grid_thw = video_patches(frames, self.spec, size=self.resolution)
            self._preprocess += time.perf_counter() - start
            if self.stream.closed:          # the first chunk after an answer opens a new user turn
                from omnisift_edge.model.prompt import turn_pieces

                self.stream.open_turn(turn_pieces(self.tokenizer, "", self.spec).prefix_ids)
                self._turn += 1
            report = self.stream.push(pixels, int(grid_thw[0]), self._windows.popleft().features)
            report.seconds["preprocess"] = self._preprocess       # the log-mel and patches this chunk waited for
            self._preprocess = 0.0
            reports.append(report)
        if self._finished:
            self._windows.clear()   # audio beyond the video is dropped (docs/streaming.md)
        return reports

    # -- questions out ---------------------------------------------------------------------------
    def ask_ids(self, question: str, *, max_new_tokens: int = 64) -> Iterator[int]:
        """Greedy answer token ids for `question` (it ends this turn's media; more media opens a new turn)."""
        from omnisift_edge.model.prompt import build_prompt, followup_ids, turn_pieces

        if not isinstance(question, str):
            raise UsageError(f"the question must be a str; got {type(question).__name__}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be a whole number of tokens >= 1 (got {max_new_tokens!r})")
        self._check_open()
        if not question.strip():
            raise UsageError("the question is empty; ask something about the video")
        if not self._finished:
            self.finish()
        if self._questions == 0 and self._turn == 0:
            ids = build_prompt(self.tokenizer, question, system=self.cfg.system_prompt, spec=self.spec).suffix_ids
        elif not self.stream.closed:        # this turn has new media: the question closes its video span
            ids = turn_pieces(self.tokenizer, question, self.spec).suffix_ids
        else:
            ids = followup_ids(self.tokenizer, question, self.spec)
        asked = False
        for token in self.stream.ask(ids, max_new_tokens=max_new_tokens, stop_ids=self.stop_ids):
            if not asked:               # a question the stream refused leaves the turn as it was
                self._questions, asked = self._questions + 1, True
            yield token

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

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this session was closed; open a new one (open_session) to stream again")

    def close(self) -> None:
        """End the session: release the backend; later appends and questions are refused."""
        self._closed = True
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()


def load_export_model(cfg: RuntimeConfig, manifest):
    """The torch backend's model: the one the export was made from (`cfg.model`, else the folder the
    manifest records), its dtype and compressor, on `cfg.device`; refused if its config changed since.
    One session loads it for itself, a stream pool (runtime/pool_torch.py) once for all its streams."""
    from omnisift_edge.model.load import ModelSource, load_model

    source = manifest.section("export_config", {})["source"]
    path = cfg.model if cfg.model is not None else source["path"]   # resolved at export
    model = load_model(ModelSource(path=path, compressor=source["compressor"], seed=source["seed"],
                                   dtype=manifest.dtype, selector_heads=source["selector_heads"],
                                   default_chat_template=source.get("default_chat_template", False),
                                   device=cfg.device))
    if model.identity.get("config_sha256") != manifest.section("model", {}).get("config_sha256"):
        raise UsageError("the model folder changed since the export (config hash differs); export again")
    return model


def torch_stream_options(manifest, plan) -> dict:
    """`TorchStream`'s export-given arguments: the patch grid and the ratio's drop fractions."""
    from omnisift_edge.runtime.torch_pipeline import CompressionConfig

    return {"grid_hw": (manifest.dims.grid_h, manifest.dims.grid_w),
            "compression": CompressionConfig(plan.rho_video, plan.rho_audio)}


def _check_context_limit(cfg: RuntimeConfig, manifest) -> None:
    """--max-context within what the export's graphs were made for (their caches are sized at export;
    the torch backend runs the model itself: up to its positions)."""
    from omnisift_edge.artifact.limits import check_max_context

    if cfg.max_context is None:
        return
    positions = (manifest.rope and manifest.rope.max_position_embeddings) or 32768
    exported = manifest.max_context
    if cfg.backend == "torch":
        check_max_context(cfg.max_context, most=positions, fix="the model's max_position_embeddings")
    else:
        check_max_context(cfg.max_context, most=exported,
                          fix=f"this export's graphs hold {exported} tokens; use at most that, or export again with "
                              f"--max-context up to {positions} (the model's positions)")


def check_window(policy, *, spec, prompt_tokens: int, chunk_tokens: int, max_context: int) -> None:
    """Refuse at open a sliding window that cannot hold its chunks beside the prompt, or spans more
    positions than the model was trained on: one line with the longest window that fits."""
    if policy.policy != "sliding":
        return
    fit = (max_context - prompt_tokens) // chunk_tokens       # whole chunks max_context holds beside the prompt
    if fit < 1:
        raise UsageError(f"max_context {max_context} cannot hold the prompt ({prompt_tokens} tokens) and one chunk "
                         f"({chunk_tokens}); raise --max-context or lower --ratio")
    chunks = policy.window_chunks(spec.seconds_per_chunk)
    if chunks is not None and chunks > fit:
        raise UsageError(f"--window-seconds {policy.window_seconds:g} needs {chunks} chunks of {chunk_tokens} tokens "
                         f"beside the {prompt_tokens}-token prompt, more than max_context {max_context} holds; use "
                         f"--window-seconds {fit * spec.seconds_per_chunk:g} or less, or raise --max-context")


def _pick_ratio(manifest, ratio: float | None) -> float:
    """The ratio to run: the one asked for, else the export's only one; several need a choice."""
    have = list(manifest.ratio_values)
    if ratio is None and len(have) > 1:
        raise UsageError(f"this export has ratios {', '.join(f'{r:g}' for r in have)}; pick one with --ratio "
                         f"(e.g. --ratio {min(have):g})")
    return have[0] if ratio is None else ratio


def open_session(cfg: RuntimeConfig) -> OmniSession:
    return OmniSession(cfg)
