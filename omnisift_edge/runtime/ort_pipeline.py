"""Streaming OmniSIFT through the exported ONNX graphs in ONNX Runtime (numpy only, no torch).

The same loop as `TorchStream` (encode, compress and prefill one 2-second chunk at a time, then
the question, then greedy decode), driven entirely by the export folder: tensor names, shapes,
token ids and layout constants come from `manifest.json`. Used by the export stage to validate
the graphs end to end; the runtime stage builds its backends on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.model.spec import OmniSpec, TokenIds


def spec_from_manifest(manifest: dict) -> OmniSpec:
    layout = dict(manifest["layout"])
    return OmniSpec(**{**layout, "tokens": TokenIds(**layout["tokens"])})


class OrtStream:
    """Push whole 2-second chunks (pixel patches, log-mel window), then ask questions."""

    def __init__(self, folder: Path, manifest: dict, ratio: float, prefix_ids: Sequence[int]):
        from omnisift_edge.export.onnx_io import ort_session
        from omnisift_edge.model.layout import StreamingLayout

        self.folder, self.manifest = Path(folder), manifest
        graphs = manifest["graphs"]
        key = f"compressor_r{ratio:g}"
        if key not in graphs:
            have = ", ".join(sorted(g.removeprefix("compressor_r") for g in graphs if g.startswith("compressor_r")))
            raise UsageError(f"this export has no compressor for ratio {ratio:g} (it has {have}); "
                             "export again with --ratios including it")
        self.spec = spec_from_manifest(manifest)
        self.graphs = {name: graphs[name] for name in ("vision_encoder", "audio_encoder", "decoder")}
        self.graphs["compressor"] = graphs[key]
        self.sessions = {name: ort_session(self.folder / g["file"]) for name, g in self.graphs.items()}
        safetensors_numpy = require("safetensors.numpy")
        self.embed_table = safetensors_numpy.load_file(str(self.folder / manifest["text_embeddings"]["file"]))[
            manifest["text_embeddings"]["tensor"]]                                   # [V, D]
        dims = manifest["dims"]
        self.grid_hw = (dims["grid_h"], dims["grid_w"])
        self.float_type = np.float16 if manifest["dtype"] == "fp16" else np.float32
        self.layout = StreamingLayout(self.spec, list(prefix_ids), grid_hw=self.grid_hw)
        dec = self.graphs["decoder"]
        self.past_names = [t["name"] for t in dec["inputs"] if t["name"].startswith("past_key_values.")]
        self.present_names = [t["name"] for t in dec["outputs"] if t["name"].startswith("present.")]
        self.past = {name: np.zeros((1, dims["kv_heads"], 0, dims["head_dim"]), self.float_type)
                     for name in self.past_names}
        self.closed = False
        self.kept_positions: list[np.ndarray] = []
        ids, pos = self.layout.prefix()
        self._step(self._embed(ids), pos)

    def _embed(self, ids: Sequence[int]) -> np.ndarray:
        return self.embed_table[np.asarray(ids, dtype=np.int64)][None].astype(self.float_type)   # [1, n, D]

    def _step(self, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Append `embeds` [1, n, D] at `positions` [3, n] (or [3, 1, n]) to the KV cache; logits [V]."""
        n = embeds.shape[1]
        past_len = next(iter(self.past.values())).shape[2]
        feeds = {"inputs_embeds": embeds,
                 "position_ids": np.asarray(positions, dtype=np.int64).reshape(3, 1, n),
                 "attention_mask": np.ones((1, past_len + n), dtype=np.int64), **self.past}
        outputs = self.sessions["decoder"].run(["logits", *self.present_names], feeds)
        self.past = dict(zip(self.past_names, outputs[1:]))
        return outputs[0][0, -1].astype(np.float32)

    def push(self, pixel_values: np.ndarray, n_grids: int, mel: np.ndarray) -> int:
        """Encode, compress and prefill one whole chunk; returns the number of tokens kept."""
        if self.closed:
            raise UsageError("the video span is closed once a question was asked; start a new stream")
        dims = self.manifest["dims"]
        want_pixels = dims["grids_per_chunk"] * dims["grid_h"] * dims["grid_w"]
        if n_grids != dims["grids_per_chunk"] or pixel_values.shape != (want_pixels, dims["patch_dim"]):
            raise UsageError(f"the exported graphs take whole chunks: pixel patches [{want_pixels}, {dims['patch_dim']}] "
                             f"of {dims['grids_per_chunk']} grid steps (got {list(pixel_values.shape)}, {n_grids})")
        if mel.shape != (dims["n_mels"], dims["window_frames"]):
            raise UsageError(f"the audio graph takes whole windows [{dims['n_mels']}, {dims['window_frames']}] "
                             f"(got {list(mel.shape)})")
        video = self.sessions["vision_encoder"].run(None, {"pixel_values": pixel_values.astype(self.float_type)})[0]
        audio = self.sessions["audio_encoder"].run(None, {"input_features": mel.astype(self.float_type)})[0]
        chunk = self.layout.chunk(n_grids, audio.shape[0])
        n_p = video.shape[0] // n_grids
        kept, positions, _ = self.sessions["compressor"].run(None, {
            "video_embeds": video.reshape(1, n_grids, n_p, -1),
            "audio_embeds": audio[None],
            "chunk_position_ids": np.asarray(chunk.position_ids, dtype=np.int64)})
        self.kept_positions.append(positions[:, 0])
        self._step(kept, positions)
        return kept.shape[1]

    def ask(self, question_ids: Sequence[int], *, max_new_tokens: int = 32,
            stop_ids: Sequence[int] = ()) -> Iterator[int]:
        """Greedy answer tokens for a question (the first one closes the video span)."""
        if not self.closed:
            ids, pos = self.layout.close(list(question_ids))
            self.closed = True
        else:
            ids = list(question_ids)
            pos = self.layout.text(ids)
        logits = self._step(self._embed(ids), pos)
        position = self.layout.next_position
        answer = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            answer.append(token)
            yield token
            if token in stop_ids:
                break
            logits = self._step(self._embed([token]), np.full((3, 1), position))
            position += 1
        self.layout.text(answer[:-1] if answer and answer[-1] in stop_ids else answer)
