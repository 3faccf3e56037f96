"""The stand-in streams of cpp/tools/golden.py: Python's runtime over C++'s StubBackend rule.

`StubStream` is a `ChunkStream` backend that follows `StubBackend` (cpp/include/omnisift/stub_backend.h)
and logs every backend call on the KV cache; `StubSession` is the real `OmniSession` (media buffering,
log-mel, padding, prompts, new user turns) over it. `schedule_cases` and `stream_cases` record what
they do for schedule.json, which cpp/tests/test_session.cpp replays call for call. The generated
media (`golden_frames`, `golden_pcm`) is rebuilt bit for bit in C++ (cpp/tests/golden_media.h).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.model.spec import OmniSpec, TokenIds
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig
from omnisift_edge.runtime.stream import ChunkStream

MINI_RESOLUTION = (112, 84)        # H, W of the mini export: grid 8x6 patches, 12 tokens per frame


def golden_frames(n: int, height: int, width: int) -> np.ndarray:
    """uint8 [n, H, W, 3]: (37t + 11y + 7x + 101c + (x*y mod 13)) mod 256 (C++ builds the same)."""
    t, y, x, c = np.meshgrid(np.arange(n), np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((37 * t + 11 * y + 7 * x + 101 * c + (x * y) % 13) % 256).astype(np.uint8)


# per 0.5 s segment, cycling every 6 s: quiet, loud, then quieter again (the running max matters)
GOLDEN_AMPS = (0.0, 1e-5, 1e-4, 2e-6, 5e-4, 3e-5, 0.0, 1e-5, 2e-5, 1e-6, 3e-5, 0.0)


def golden_pcm(n: int) -> np.ndarray:
    """float32 [n]: an LCG's integers in [-1000, 1000] times a piecewise amplitude (C++ builds the same)."""
    state, out = 12345, np.empty(n, np.float32)
    amps = np.asarray(GOLDEN_AMPS, np.float32)
    for i in range(n):
        state = (1103515245 * state + 12345) % (1 << 31)
        out[i] = np.float32((state >> 8) % 2001 - 1000) * amps[(i // 8000) % len(amps)]
    return out


class StubStream(ChunkStream):
    """A backend with C++'s StubBackend rule (cpp/include/omnisift/stub_backend.h): zero embeddings,
    a first-K "compressor", scripted logits; it logs what the shared stream code asks of it: every
    decoder call (whether logits were asked for), every eviction (`_drop_kv`) and re-basing (`_rotate_kv`)."""

    def __init__(self, manifest: dict, ratio: float, prefix_ids, log: dict, script: list, *,
                 max_context: int | None = None, context=None):
        d = self.d = manifest["dims"]
        self.kept = next(p["kept_per_chunk"]["total"] for p in manifest["ratios"] if p["ratio"] == ratio)
        self.log, self.script, self.length = log, script, 0
        # as runtime.exported.ExportedStream: graphs with valid-length inputs take a short last chunk as it is
        self.takes_short_chunks = len(manifest["graphs"]["audio_encoder"]["inputs"]) > 1
        layout = manifest["layout"]
        spec = OmniSpec(**{**layout, "tokens": TokenIds(**layout["tokens"])})
        super().__init__(spec, prefix_ids, (d["grid_h"], d["grid_w"]), max_context=max_context or manifest["max_context"],
                         context=context)

    def _embed(self, ids):
        return np.zeros((1, len(ids), self.d["hidden"]), np.float32)

    def _check_chunk(self, pixel_values, n_grids, mel):
        super()._check_chunk(pixel_values, n_grids, mel)
        whole = n_grids == self.d["grids_per_chunk"] and mel.shape[1] == self.d["window_frames"]
        if not (whole or self.takes_short_chunks):
            raise UsageError("the stub backend takes whole chunks, as the exported graphs do")

    def _encode_video(self, pixel_values, n_grids):
        # what the vision graph is fed (runtime.exported.ExportedStream.video_feed): a one-step chunk repeated
        x = np.ascontiguousarray(np.tile(pixel_values, (self.d["grids_per_chunk"] // n_grids, 1)), "<f4")
        self.log["chunks"].append({"pixel_sha256": hashlib.sha256(x.tobytes()).hexdigest()})
        return np.zeros((n_grids * self.tokens_per_frame, self.d["hidden"]), np.float32)

    def _encode_audio(self, mel):
        mel = mel.astype(np.float32).astype(np.float64)
        self.log["chunks"][-1].update(mel_sum=float(mel.sum()), mel_first_frame=mel[:, 0].tolist(),
                                      mel_last_frame=mel[:, -1].tolist())
        return np.zeros((((mel.shape[1] - 1) // 2 + 1) // 2, self.d["hidden"]), np.float32)   # a short window: fewer

    def _compress(self, video, audio, n_grids, chunk_positions):
        k = min(self.kept, video.shape[0] + audio.shape[0])     # a short last chunk: the first of its real tokens
        return np.zeros((1, k, self.d["hidden"]), np.float32), np.arange(k)

    def _step(self, embeds, positions, want_logits=True):
        n, log = embeds.shape[1], self.log
        log["calls"].append({"op": "decode", "n": n, "past_length": self.length, "attention_mask_length": self.length + n,
                             "positions": np.asarray(positions).reshape(3, n).tolist(), "logits": bool(want_logits)})
        log["since_prefill"] = 0 if n > 1 else log["since_prefill"]
        k = log["since_prefill"]
        log["since_prefill"] += 1
        self.length += n
        if not want_logits:
            return None
        logits = np.zeros(self.d["vocab"], np.float32)
        logits[self.script[k % len(self.script)]] = 1
        return logits

    def _drop_kv(self, start, stop):
        assert 0 <= start <= stop <= self.length
        self.log["calls"].append({"op": "drop", "start": start, "stop": stop})
        self.length -= stop - start

    def _rotate_kv(self, delta):
        self.log["calls"].append({"op": "rotate", "delta": delta})

    def kv_length(self) -> int:
        return self.length


class StubSession(OmniSession):
    """The real session (media buffering, log-mel, padding, prompts) over a `StubStream`."""

    def __init__(self, cfg: RuntimeConfig, log: dict, script: list):
        self._log, self._script = log, script
        super().__init__(cfg)

    def _open_backend(self, prefix_ids):
        return StubStream(self.manifest.to_dict(), self.ratio, prefix_ids, self._log, self._script,
                          max_context=self.cfg.max_context, context=self.cfg.context)


SCHEDULE_QUESTIONS = ("What is happening in this video?", "And then?")
MEDIA_FRAMES, MEDIA_SAMPLES = 9, 68800     # 4.5 s of video, 4.3 s of audio: the third chunk is short (a tail)
MEDIA_SPLITS = ((0, 3, 0, 20000), (3, 7, 20000, 50000), (7, 9, 50000, MEDIA_SAMPLES))   # frames, samples per append


def schedule_cases(folder: Path, manifest: dict) -> list[dict]:
    """What the Python runtime does, recorded through stand-in sessions: the decoder calls of an
    OrtStream fed whole chunks, and of an OmniSession fed frames + PCM with a partial last chunk."""
    from omnisift_edge.model.prompt import build_prompt, followup_ids
    from omnisift_edge.model.tokenizer import load_tokenizer

    mini = folder / "export_mini"
    tok = load_tokenizer(mini / "tokenizer")
    pieces = build_prompt(tok, SCHEDULE_QUESTIONS[0])
    follow = list(followup_ids(tok, SCHEDULE_QUESTIONS[1]))
    d, stops = manifest["dims"], manifest["stop_token_ids"]
    out = []
    # whole chunks straight into the stream (push_chunk in C++)
    script, log = [111, 107, 33, 151645, 104], {"calls": [], "chunks": [], "since_prefill": 0}
    stream = StubStream(manifest, 0.25, pieces.prefix_ids, log, script)
    for _ in range(3):
        stream.push(np.zeros((d["grids_per_chunk"] * d["grid_h"] * d["grid_w"], d["patch_dim"]), np.float32),
                    d["grids_per_chunk"], np.zeros((d["n_mels"], d["window_frames"]), np.float32))
    answers = [list(stream.ask(list(pieces.suffix_ids), max_new_tokens=8, stop_ids=stops)),
               list(stream.ask(follow, max_new_tokens=8, stop_ids=stops))]
    out.append({"name": "chunks", "ratio": 0.25, "chunks": 3, "script": script, "max_new_tokens": 8,
                "prefix_ids": list(pieces.prefix_ids), "question_ids": [list(pieces.suffix_ids), follow],
                "answers": answers, "calls": log["calls"]})
    # frames + PCM through the session API (push_frame/push_audio/ask in C++)
    script, log = [104, 105, 0xE6, 0x97, 0xA5], {"calls": [], "chunks": [], "since_prefill": 0}
    frames, pcm = golden_frames(MEDIA_FRAMES, *MINI_RESOLUTION), golden_pcm(MEDIA_SAMPLES)
    session = StubSession(RuntimeConfig(mini, ratio=1.0), log, script)
    for f0, f1, s0, s1 in MEDIA_SPLITS:
        session.append_chunk(frames[f0:f1], pcm[s0:s1])
    texts, answers = [], []
    for q in SCHEDULE_QUESTIONS:
        texts.append("".join(session.ask(q, max_new_tokens=4)))
        answers.append(session.last_answer_ids)
    out.append({"name": "media", "ratio": 1.0, "script": script, "max_new_tokens": 4, "frames": MEDIA_FRAMES,
                "samples": MEDIA_SAMPLES, "splits": [list(x) for x in MEDIA_SPLITS], "questions": list(SCHEDULE_QUESTIONS),
                "answers": answers, "answer_texts": texts, "chunk_inputs": log["chunks"], "calls": log["calls"]})
    return out


# Streams replayed op by op through StubSession (Python) and Session (C++): media appends ["media",
# frame0, frame1, sample0, sample1] of golden_frames/golden_pcm, ["finish"], ["ask", question].
SAMPLES_PER_FRAME = 8000          # 16 kHz at 2 fps
STREAMS = (
    # questions while the video goes on: a new user turn per media after an answer, a follow-up,
    # an explicit finish() that pads the turn's last chunk
    {"name": "turns", "ratio": 0.25, "system": None, "max_new_tokens": 3, "script": [72, 105, 151645],
     "context": {"policy": "error"}, "max_context": None, "frames": 22,
     "ops": [["media", 0, 6], ["ask", "What happens?"], ["media", 6, 11], ["media", 11, 15], ["ask", "And now?"],
             ["ask", "Anything else?"], ["media", 15, 22], ["finish"], ["ask", "Last one?"]]},
    # sliding window of 2 chunks under max_context 256: chunks evicted by the window, then by the
    # answer's tokens (max_context), then the question/answer run by the next turn's chunks
    {"name": "sliding", "ratio": 0.25, "system": "Be brief.", "max_new_tokens": 180, "script": [104, 105, 32],
     "context": {"policy": "sliding", "window_seconds": 4.0}, "max_context": 256, "frames": 40,
     "ops": [["media", 0, 12], ["media", 12, 24], ["ask", "What is happening?"], ["media", 24, 40],
             ["ask", "Why?"]]},
    # positions past a (small) trained range: re-based while the window slides, across turns
    {"name": "rebase", "ratio": 1.0, "system": "Be brief.", "max_new_tokens": 6, "script": [111, 107, 33],
     "context": {"policy": "sliding", "window_seconds": 4.0, "position_limit": 200}, "max_context": None, "frames": 44,
     "ops": [["media", 0, 20], ["ask", "What now?"], ["media", 20, 44], ["ask", "And then?"], ["ask", "Sure?"]]},
)


def stream_cases(folder: Path, manifest: dict) -> list[dict]:
    """Each of STREAMS through the real session over StubStream: every backend call and the answers."""
    from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT
    from omnisift_edge.runtime.context import inv_freq

    out = []
    for case in STREAMS:
        ctx = case["context"]
        log = {"calls": [], "chunks": [], "since_prefill": 0}
        cfg = RuntimeConfig(folder / "export_mini", ratio=case["ratio"], max_context=case["max_context"],
                            system_prompt=case["system"] or DEFAULT_SYSTEM_PROMPT, context_policy=ctx["policy"],
                            window_seconds=ctx.get("window_seconds"), position_limit=ctx.get("position_limit"))
        session = StubSession(cfg, log, case["script"])
        frames = golden_frames(case["frames"], *MINI_RESOLUTION)
        pcm = golden_pcm(case["frames"] * SAMPLES_PER_FRAME)
        answers, texts = [], []
        for op in case["ops"]:
            if op[0] == "media":
                session.append_chunk(frames[op[1]:op[2]], pcm[op[1] * SAMPLES_PER_FRAME:op[2] * SAMPLES_PER_FRAME])
            elif op[0] == "finish":
                session.finish()
            else:
                texts.append("".join(session.ask(op[1], max_new_tokens=case["max_new_tokens"])))
                answers.append(session.last_answer_ids)
        stream = session.stream
        out.append({**case, "answers": answers, "answer_texts": texts, "kv_length": stream.kv_length(),
                    "evicted_chunks": stream.window.evicted_chunks, "base": stream.window.base,
                    "chunks": len(stream.layout.chunks), "next_position": stream.layout.next_position,
                    "inv_freq": inv_freq(manifest["rope"]["rope_theta"], manifest["dims"]["head_dim"]).tolist(),
                    "calls": log["calls"], **({"chunk_inputs": log["chunks"]} if case["name"] == "turns" else {})})
    return out
