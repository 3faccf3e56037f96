"""Streaming OmniSIFT through the exported ONNX graphs in ONNX Runtime (numpy only, no torch).

The same loop as `TorchStream` (`runtime.stream.ChunkStream`), driven entirely by the export
folder (`artifact.ExportFolder`): tensor names (in the order artifact.tensors declares them),
shapes, token ids and layout constants come from `manifest.json`.
"""

from __future__ import annotations

from typing import Sequence


from omnisift_edge.artifact.manifest import DECODER_GQA, Rope
from omnisift_edge.artifact.folder import ExportFolder
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.context import ContextPolicy
from omnisift_edge.runtime.exported import ExportedStream, rope_freqs


class OrtStream(ExportedStream):
    """Push whole 2-second chunks (pixel patches, log-mel window), then ask questions."""

    def __init__(self, export: ExportFolder, ratio: float | None, prefix_ids: Sequence[int], *,
                 providers: Sequence[str] = ("CPUExecutionProvider",), max_context: int | None = None,
                 context: ContextPolicy | None = None, kv_form: str = "auto", threads: str = "quiet"):
        """kv_form: "shared_buffer" (decoder_gqa: a cache allocated once, written in place), "past_present"
        (decoder: the cache copied in and out on every call; exports before the in-place form), or "auto"
        (shared_buffer when the manifest declares it). threads: how the sessions share the CPU
        (artifact.onnx_runtime.THREAD_POLICIES; the decoder is the session that may keep spinning)."""
        inplace = export.manifest.kv_cache.get(DECODER_GQA)
        if kv_form not in ("auto", "shared_buffer", "past_present"):
            raise UsageError(f"kv_form must be auto, shared_buffer or past_present (got {kv_form!r})")
        if kv_form == "shared_buffer" and inplace is None:
            raise UsageError(f"{export.path} has no in-place decoder (decoder_gqa); export again with this omnisift-edge")
        entry = inplace.entry if inplace is not None and kv_form != "past_present" else None
        files = {role: g.file for role, g in export.graphs_for(ratio).items()}
        if entry is not None:
            files["decoder"] = entry.file
        self.sessions = {role: self._open_graph(export.file(file), role, providers, threads)
                         for role, file in files.items()}
        max_context = max_context or export.manifest.max_context
        kv = self._open_cache(export, entry, max_context, providers)
        super().__init__(export, ratio, prefix_ids, what="the exported graphs", kv=kv, max_context=max_context,
                         context=context)

    def _open_graph(self, path, role: str, providers, threads: str):
        """The ONNX Runtime session of one graph (a stream pool hands out its shared ones instead)."""
        from omnisift_edge.artifact.onnx_runtime import ort_session

        return ort_session(path, providers=providers, threads=threads, spins=role == "decoder")

    def _open_cache(self, export: ExportFolder, inplace_entry, max_context: int, providers):
        """The decoder's KV cache: in place ([1, kv, max_context, hd] per layer, decoder_gqa) or packed (decoder)."""
        from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache, OrtPastPresentCache

        session, dims = self.sessions["decoder"], export.manifest.dims
        if inplace_entry is not None:
            device = "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"
            return OrtInPlaceCache(session, inplace_entry.to_dict(), max_context, (export.manifest.rope or Rope()).to_dict(),
                                   device=device)
        return OrtPastPresentCache(session, dims.num_layers, dims.kv_heads, dims.head_dim, export.float_type,
                                   rope_freqs(export))

    def _step(self, embeds, positions, want_logits=True):
        return self.kv.step(embeds, positions.reshape(3, 1, embeds.shape[1]), want_logits)

    def _encode_video(self, pixel_values, n_grids):
        g = self.graphs["vision_encoder"]
        out = self.sessions["vision_encoder"].run(None, {g.inputs[0].name: self.video_feed(pixel_values, n_grids)})[0]
        return out[:n_grids * self.tokens_per_frame]                                     # [n_grids*n_p, D]

    def _encode_audio(self, mel):
        feeds, tokens = self.audio_feeds(mel)
        return self.sessions["audio_encoder"].run(None, feeds)[0][:tokens]               # [La, D]

    def _compress(self, video, audio, n_grids, chunk_positions):
        out = self.sessions["compressor"].run(None, self.compressor_feeds(video, audio, n_grids, chunk_positions))
        kept, index = out[0], out[2][0]                                                   # [1, K, D], [K]
        if len(out) > 3:                                                                  # the real rows first
            kept, index = kept[:, :int(out[3][0])], index[:int(out[3][0])]
        return kept, index
