"""Streaming OmniSIFT through the exported ONNX graphs in ONNX Runtime (numpy only, no torch).

The same loop as `TorchStream` (`runtime.stream.ChunkStream`), driven entirely by the export
folder (`artifact.ExportFolder`): tensor names (in the order artifact.tensors declares them),
shapes, token ids and layout constants come from `manifest.json`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omnisift_edge.artifact.manifest import DECODER_GQA, Rope
from omnisift_edge.artifact.folder import ExportFolder
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.context import ContextPolicy
from omnisift_edge.runtime.exported import ExportedStream


class OrtStream(ExportedStream):
    """Push whole 2-second chunks (pixel patches, log-mel window), then ask questions."""

    def __init__(self, export: ExportFolder, ratio: float | None, prefix_ids: Sequence[int], *,
                 providers: Sequence[str] = ("CPUExecutionProvider",), max_context: int | None = None,
                 context: ContextPolicy | None = None, kv_form: str = "auto", open_graph=None):
        """kv_form: "shared_buffer" (decoder_gqa: a cache allocated once, written in place), "past_present"
        (decoder: the cache copied in and out on every call; exports before the in-place form), or "auto"
        (shared_buffer when the manifest declares it)."""
        from omnisift_edge.artifact.onnx_runtime import ort_session

        open_graph = open_graph or ort_session
        inplace = export.manifest.kv_cache.get(DECODER_GQA)
        if kv_form not in ("auto", "shared_buffer", "past_present"):
            raise UsageError(f"kv_form must be auto, shared_buffer or past_present (got {kv_form!r})")
        if kv_form == "shared_buffer" and inplace is None:
            raise UsageError(f"{export.path} has no in-place decoder (decoder_gqa); export again with this omnisift-edge")
        use_inplace = inplace is not None and kv_form != "past_present"
        files = {role: g.file for role, g in export.graphs_for(ratio).items()}
        if use_inplace:
            files["decoder"] = inplace.entry.file
        self.sessions = {role: open_graph(export.file(file), providers=providers) for role, file in files.items()}
        max_context = max_context or export.manifest.max_context
        self.kv = None
        if use_inplace:
            from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache

            device = "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"
            self.kv = OrtInPlaceCache(self.sessions["decoder"], inplace.entry.to_dict(), max_context,
                                      (export.manifest.rope or Rope()).to_dict(), device=device)   # [1, kv, max_context, hd] per layer
        super().__init__(export, ratio, prefix_ids, what="the exported graphs", max_context=max_context,
                         context=context)

    def _step(self, embeds, positions, want_logits=True):
        n = embeds.shape[1]
        if self.kv is not None:   # in place: only the new rows are written, no copy of the cache
            return self.kv.step(embeds, positions.reshape(3, 1, n), want_logits)
        embeds_name, positions_name, mask_name = self.decoder_inputs
        feeds = {embeds_name: embeds, positions_name: positions.reshape(3, 1, n),
                 mask_name: np.ones((1, self.kv_length() + n), dtype=np.int64), **self.past}
        outputs = self.sessions["decoder"].run([self.logits_name, *self.present_names], feeds)
        self.past = dict(zip(self.past_names, outputs[1:]))
        return outputs[0][0, -1].astype(np.float32)                                      # [V]

    def _encode_video(self, pixel_values, n_grids):
        g = self.graphs["vision_encoder"]
        feeds = {g.inputs[0].name: pixel_values.astype(self.float_type)}
        return self.sessions["vision_encoder"].run(None, feeds)[0]                       # [2*n_p, D]

    def _encode_audio(self, mel):
        g = self.graphs["audio_encoder"]
        return self.sessions["audio_encoder"].run(None, {g.inputs[0].name: mel.astype(self.float_type)})[0]   # [La, D]

    def _compress(self, video, audio, n_grids, chunk_positions):
        kept, _, index = self.sessions["compressor"].run(None, self.compressor_feeds(video, audio, n_grids, chunk_positions))
        return kept, index[0]                                                             # [1, K, D], [K]

    def kv_length(self) -> int:
        if self.kv is not None:
            return self.kv.length
        return next(iter(self.past.values())).shape[2]

    def _drop_kv(self, start: int, stop: int) -> None:
        """Remove cached tokens [start, stop); later ones move down (in place for the shared buffers)."""
        if self.kv is not None:
            self.kv.drop(start, stop)
        else:
            super()._drop_kv(start, stop)

    def _rotate_kv(self, delta: int) -> None:
        """Re-base every cached key's position by -delta (RoPE rotation, rope settings from the manifest)."""
        if self.kv is not None:
            self.kv.rotate(delta)
        else:
            super()._rotate_kv(delta)
