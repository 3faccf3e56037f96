"""Streaming OmniSIFT through the exported ONNX graphs in ONNX Runtime (numpy only, no torch).

The same loop as `TorchStream` (`runtime.stream.ChunkStream`), driven entirely by the export
folder: tensor names, shapes, token ids and layout constants come from `manifest.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.model.spec import OmniSpec, TokenIds
from omnisift_edge.runtime.context import DEFAULT_POSITION_LIMIT, ContextPolicy, drop_tokens, inv_freq, rotate_keys
from omnisift_edge.runtime.stream import ChunkStream


def spec_from_manifest(manifest: dict) -> OmniSpec:
    layout = dict(manifest["layout"])
    return OmniSpec(**{**layout, "tokens": TokenIds(**layout["tokens"])})


def compressor_graph_name(manifest: dict, ratio: float) -> str:
    """The manifest's compressor graph for `ratio`, or a UsageError listing the ratios it has."""
    for entry in manifest["ratios"]:
        if abs(entry["ratio"] - ratio) < 1e-9:
            return entry["graph"]
    have = ", ".join(f"{e['ratio']:g}" for e in manifest["ratios"])
    raise UsageError(f"this export has no compressor for ratio {ratio:g} (it has {have}); "
                     "export again with --ratios including it")


def load_export_tables(stream, folder: Path, manifest: dict, decoder: dict) -> None:
    """Set what every exported-graph backend needs on `stream`: the text embedding table, the
    dims, the float type, the decoder's past/present names and an empty KV cache [1, kv, 0, hd]."""
    embeddings = manifest["text_embeddings"]
    stream.embed_table = require("safetensors.numpy").load_file(
        str(folder / embeddings["file"]))[embeddings["tensor"]]                        # [V, D]
    stream.dims = dims = manifest["dims"]
    stream.float_type = np.float16 if manifest["dtype"] == "fp16" else np.float32
    stream.past_names = [t["name"] for t in decoder["inputs"] if t["name"].startswith("past_key_values.")]
    stream.present_names = [t["name"] for t in decoder["outputs"] if t["name"].startswith("present.")]
    stream.past = {name: np.zeros((1, dims["kv_heads"], 0, dims["head_dim"]), stream.float_type)
                   for name in stream.past_names}
    rope = manifest.get("rope") or {}
    stream.rope_freqs = inv_freq(rope.get("rope_theta") or 1e6, dims["head_dim"])                  # [hd/2]
    stream.position_limit = int(rope.get("max_position_embeddings") or DEFAULT_POSITION_LIMIT)


def drop_past(stream, start: int, stop: int) -> None:
    """`_drop_kv` on a numpy past (ONNX Runtime, TensorRT): tokens [start, stop) leave every layer."""
    stream.past = {name: drop_tokens(cache, start, stop) for name, cache in stream.past.items()}


def rotate_past(stream, delta: int) -> None:
    """`_rotate_kv` on a numpy past: every cached key re-based by -delta positions (values unchanged)."""
    stream.past = {name: rotate_keys(cache, delta, stream.rope_freqs) if name.endswith(".key") else cache
                   for name, cache in stream.past.items()}


def check_whole_chunk(dims: dict, n_grids: int, mel, what: str) -> None:
    """Exported graphs and engines take whole 2-second chunks; the session pads the last one."""
    if n_grids != dims["grids_per_chunk"] or mel.shape[1] != dims["window_frames"]:
        raise UsageError(f"{what} take whole 2-second chunks ({dims['grids_per_chunk']} grid steps, "
                         f"{dims['window_frames']} log-mel frames; got {n_grids} and {mel.shape[1]}); "
                         "pad the last chunk (omnisift_edge.runtime.session does)")


class OrtStream(ChunkStream):
    """Push whole 2-second chunks (pixel patches, log-mel window), then ask questions."""

    def __init__(self, folder: Path, manifest: dict, ratio: float, prefix_ids: Sequence[int], *,
                 providers: Sequence[str] = ("CPUExecutionProvider",), max_context: int | None = None,
                 context: ContextPolicy | None = None):
        from omnisift_edge.export.onnx_io import ort_session

        self.folder, self.manifest = Path(folder), manifest
        graphs = manifest["graphs"]
        self.graphs = {name: graphs[name] for name in ("vision_encoder", "audio_encoder", "decoder")}
        self.graphs["compressor"] = graphs[compressor_graph_name(manifest, ratio)]
        self.sessions = {name: ort_session(self.folder / g["file"], providers=providers)
                         for name, g in self.graphs.items()}
        load_export_tables(self, self.folder, manifest, self.graphs["decoder"])
        dims = self.dims
        super().__init__(spec_from_manifest(manifest), prefix_ids, (dims["grid_h"], dims["grid_w"]),
                         max_context=max_context or manifest["max_context"], context=context,
                         position_limit=self.position_limit)

    def _drop_kv(self, start, stop):
        drop_past(self, start, stop)

    def _rotate_kv(self, delta):
        rotate_past(self, delta)

    def _embed(self, ids):
        return self.embed_table[np.asarray(ids, dtype=np.int64)][None].astype(self.float_type)   # [1, n, D]

    def _step(self, embeds, positions):
        n = embeds.shape[1]
        feeds = {"inputs_embeds": embeds, "position_ids": positions.reshape(3, 1, n),
                 "attention_mask": np.ones((1, self.kv_length() + n), dtype=np.int64), **self.past}
        outputs = self.sessions["decoder"].run(["logits", *self.present_names], feeds)
        self.past = dict(zip(self.past_names, outputs[1:]))
        return outputs[0][0, -1].astype(np.float32)                                      # [V]

    def _check_chunk(self, pixel_values, n_grids, mel):
        super()._check_chunk(pixel_values, n_grids, mel)
        check_whole_chunk(self.dims, n_grids, mel, "the exported graphs")

    def _encode_video(self, pixel_values, n_grids):
        feeds = {"pixel_values": pixel_values.astype(self.float_type)}
        return self.sessions["vision_encoder"].run(None, feeds)[0]                       # [2*n_p, D]

    def _encode_audio(self, mel):
        return self.sessions["audio_encoder"].run(None, {"input_features": mel.astype(self.float_type)})[0]

    def _compress(self, video, audio, n_grids, chunk_positions):
        kept, _, index = self.sessions["compressor"].run(None, {
            "video_embeds": video.reshape(1, n_grids, self.tokens_per_frame, -1),
            "audio_embeds": audio[None],
            "chunk_position_ids": chunk_positions.astype(np.int64)})
        return kept, index[0]

    def kv_length(self) -> int:
        return next(iter(self.past.values())).shape[2]
