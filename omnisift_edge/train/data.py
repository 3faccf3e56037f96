"""Training data: JSONL lines -> checked records -> model inputs (ids, labels, positions, features).

One line per example: `{"video": path, "audio": optional path, "question": str, "answer": str}`,
paths relative to the JSONL file's folder. `read_records` checks what it can without decoding
(JSON, keys, types, files present); `prepare_example` decodes and preprocesses with the package's
own functions (the demo's rules: audio trimmed or zero-padded to the video's duration). Either
failure is a `BadLine` with the 1-based line number. No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.train.config import BadLine

from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT as DEFAULT_SYSTEM

IGNORE = -100                                    # label of tokens without loss (torch's ignore_index)
REQUIRED = ("video", "question", "answer")


@dataclass(frozen=True)
class Record:
    """One checked JSONL line."""

    line: int
    video: Path
    audio: Path | None
    question: str
    answer: str


@dataclass(frozen=True, eq=False)
class Example:
    """Model inputs of one record: the full layout of prompt + media + answer, before compression."""

    line: int
    input_ids: np.ndarray            # [L] int64
    labels: np.ndarray               # [L] int64: the answer's ids (with <|im_end|>), IGNORE elsewhere
    position_ids: np.ndarray         # [3, L] int64 TMRoPE
    pixel_values: np.ndarray         # [grid_t * grid_h * grid_w, 1176] float32
    grid_thw: tuple[int, int, int]
    mel: np.ndarray                  # [n_mels, n_frames] float32
    event_mask: np.ndarray | None = None   # [L] bool, optional: tokens a test marks (analysis only)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def read_records(path: Path) -> tuple[list[Record], list[BadLine]]:
    """Parse and check every line of the JSONL at `path`; blank lines are ignored."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--data {path} is a folder; pass the JSONL file inside it, with one "
                         '{"video", "audio"?, "question", "answer"} object per line')
    if not path.is_file():
        raise UsageError(f"training data {path} does not exist; pass a JSONL file with one "
                         '{"video", "audio"?, "question", "answer"} object per line')
    base = path.resolve().parent
    records, bad = [], []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.append(BadLine(number, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
            if not text.strip():
                continue
            try:
                records.append(_record(number, text, base))
            except UsageError as exc:
                bad.append(BadLine(number, str(exc)))
    return records, bad


def _record(number: int, text: str, base: Path) -> Record:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise UsageError("JSON nested too deeply; each line is one flat object") from None
    if not isinstance(obj, dict):
        raise UsageError(f"a JSON {type(obj).__name__}, expected an object with keys {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise UsageError(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}")
    for key in REQUIRED:
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise UsageError(f"{key!r} must be a non-empty string (got {obj[key]!r})")
    audio = obj.get("audio")
    if audio is not None and (not isinstance(audio, str) or not audio.strip()):
        raise UsageError(f"'audio' must be a path string or null (got {audio!r})")
    video_path = _media_path(base, obj["video"], "video")
    audio_path = _media_path(base, audio, "audio") if audio is not None else None
    return Record(number, video_path, audio_path, obj["question"], obj["answer"])


def _media_path(base: Path, value: str, what: str) -> Path:
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:          # "~nosuchuser/...": no such home folder
        raise UsageError(f"{what} path {value!r}: {exc}") from None
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise UsageError(f"{what} file {value!r} not found (looked for {path})")
    return path


def answer_ids(tokenizer, question: str, answer: str, suffix_ids, spec, system=DEFAULT_SYSTEM) -> tuple[int, ...]:
    """Ids of the assistant turn `answer<|im_end|>` as the chat template renders the whole conversation.

    The text after the video part is tokenized in one piece (prompt suffix + answer), as a processor
    tokenizes the whole conversation, and must start with the prompt's `suffix_ids`.
    """
    from omnisift_edge.model.prompt import _encode, _render, messages, video_part

    text = _render(tokenizer, messages(question, system=system, answers_and_followups=(answer,)), False)
    after = text.split(video_part(tokenizer, spec), 1)[1]
    ids = _encode(tokenizer, after)
    n = len(suffix_ids)
    if tuple(ids[:n]) != tuple(suffix_ids):
        raise UsageError("the answer changes how the prompt before it tokenizes; start the answer with a "
                         "plain word")
    tail = ids[n:]
    t = spec.tokens
    if t.im_end not in tail:
        raise UsageError("the chat template did not close the answer with <|im_end|>; use Qwen2.5-Omni's template")
    tail = tail[:len(tail) - tail[::-1].index(t.im_end)]          # through the template's closing <|im_end|>
    special = {t.endoftext, t.im_start, t.audio, t.audio_bos, t.audio_eos, t.vision_bos, t.vision_eos,
               t.image, t.video}
    if len(tail) < 2 or special & set(tail[:-1]) or t.im_end in tail[:-1]:
        raise UsageError("the answer is empty or contains special tokens such as <|im_end|>; give plain text")
    return tuple(tail)


def prepare_example(model, record: Record, resolution: tuple[int, int], *,
                    max_seconds: float | None = None, system=DEFAULT_SYSTEM) -> Example:
    """Decode and preprocess one record for `model` (an OmniModel: its spec and tokenizer)."""
    from omnisift_edge.model.media import load_media

    try:
        media = load_media(record.video, model.spec, audio_path=record.audio, max_seconds=max_seconds)
    except UsageError as exc:    # the loader speaks to the command line; here the fix is the line's "audio" key
        raise UsageError(str(exc).replace("to --audio", 'as the line\'s "audio"')
                         .replace("pass --audio FILE", 'give the soundtrack as the line\'s "audio"')) from None
    return example_from_arrays(model, record.line, media.frames, media.pcm, record.question, record.answer,
                               resolution, system=system)


def example_from_arrays(model, line: int, frames: np.ndarray, pcm: np.ndarray, question: str, answer: str,
                        resolution: tuple[int, int], *, system=DEFAULT_SYSTEM) -> Example:
    """`prepare_example` from decoded frames [T, H, W, 3] uint8 at 2 fps and mono PCM at 16 kHz."""
    from omnisift_edge.model.layout import build_layout
    from omnisift_edge.model.media import fit_audio_to_video
    from omnisift_edge.model.preprocess import log_mel, video_patches
    from omnisift_edge.model.prompt import build_prompt

    spec = model.spec
    pcm = fit_audio_to_video(pcm, len(frames), spec)
    pixel_values, grid = video_patches(frames, spec, size=resolution)         # [n, 1176], [3]
    mel = log_mel(pcm, spec)                                                  # [n_mels, n_frames]
    pieces = build_prompt(model.tokenizer, question, system=system, spec=spec)
    answer = answer_ids(model.tokenizer, question, answer, pieces.suffix_ids, spec, system)
    t, h, w = (int(v) for v in grid)
    n_audio = spec.audio_tokens_for_mel_frames(mel.shape[1])
    layout = build_layout(spec, pieces.prefix_ids, pieces.suffix_ids + answer, n_grids=t, grid_hw=(h, w),
                          n_audio=n_audio)
    labels = np.full(layout.length, IGNORE, np.int64)                         # [L]
    labels[layout.length - len(answer):] = answer
    return Example(line=line, input_ids=np.array(layout.input_ids), labels=labels,
                   position_ids=np.array(layout.position_ids), pixel_values=pixel_values,
                   grid_thw=(t, h, w), mel=mel)
