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
                 kv_form: str = "auto"):
        """kv_form: "shared_buffer" (decoder_gqa: a cache allocated once, written in place), "past_present"
        (decoder: the cache copied in and out on every call; exports before the in-place form), or "auto"
        (shared_buffer when the manifest declares it)."""
        from omnisift_edge.export.onnx_io import ort_session

        self.folder, self.manifest = Path(folder), manifest
        graphs = manifest["graphs"]
        inplace = manifest.get("kv_cache", {}).get("decoder_gqa")
        if kv_form not in ("auto", "shared_buffer", "past_present"):
            raise UsageError(f"kv_form must be auto, shared_buffer or past_present (got {kv_form!r})")
        if kv_form == "shared_buffer" and inplace is None:
            raise UsageError(f"{folder} has no in-place decoder (decoder_gqa); export again with this omnisift-edge")
        use_inplace = inplace is not None and kv_form != "past_present"
        self.graphs = {name: graphs[name] for name in ("vision_encoder", "audio_encoder")}
        self.graphs["decoder"] = inplace["entry"] if use_inplace else graphs["decoder"]
        self.graphs["compressor"] = graphs[compressor_graph_name(manifest, ratio)]
        self.sessions = {name: ort_session(self.folder / g["file"], providers=providers)
                         for name, g in self.graphs.items()}
        load_export_tables(self, self.folder, manifest, self.graphs["decoder"])
        dims = self.dims
        max_context = max_context or manifest["max_context"]
        self.kv = None
        if use_inplace:
            from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache

            device = "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"
            self.kv = OrtInPlaceCache(self.sessions["decoder"], self.graphs["decoder"], max_context,
                                      manifest["rope"], device=device)        # [1, kv, max_context, hd] per layer
        super().__init__(spec_from_manifest(manifest), prefix_ids, (dims["grid_h"], dims["grid_w"]),
                         max_context=max_context)

    def _embed(self, ids):
        return self.embed_table[np.asarray(ids, dtype=np.int64)][None].astype(self.float_type)   # [1, n, D]

    def _step(self, embeds, positions, want_logits=True):
        n = embeds.shape[1]
        if self.kv is not None:   # in place: only the new rows are written, no copy of the cache
            return self.kv.step(embeds, positions.reshape(3, 1, n), want_logits)
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
        if self.kv is not None:
            return self.kv.length
        return next(iter(self.past.values())).shape[2]

    def _drop_kv(self, start: int, stop: int) -> None:
        """Remove cached tokens [start, stop); later ones move down (in place for the shared buffers)."""
        if self.kv is not None:
            self.kv.drop(start, stop)
            return
        if not 0 <= start <= stop <= self.kv_length():
            raise UsageError(f"cannot drop cached tokens [{start}, {stop}) of {self.kv_length()}")
        self.past = {name: np.delete(value, np.s_[start:stop], axis=2) for name, value in self.past.items()}

    def _rotate_kv(self, delta: int) -> None:
        """Re-base every cached key's position by -delta (RoPE rotation, rope settings from the manifest)."""
        if self.kv is not None:
            self.kv.rotate(delta)
            return
        from omnisift_edge.runtime.kv_buffers import inverse_frequencies, rotate_keys

        inv_freq = inverse_frequencies(self.manifest["rope"]["rope_theta"], self.dims["head_dim"])
        for name, value in self.past.items():
            if name.endswith(".key"):
                rotate_keys(value, delta, inv_freq)
