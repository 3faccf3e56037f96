"""Streaming OmniSIFT through the exported ONNX graphs in ONNX Runtime (numpy only, no torch).

The same loop as `TorchStream` (`runtime.stream.ChunkStream`), driven entirely by the export
folder (`artifact.ExportFolder`): tensor names (in the order artifact.tensors declares them),
shapes, token ids and layout constants come from `manifest.json`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omnisift_edge.artifact.folder import ExportFolder
from omnisift_edge.runtime.context import ContextPolicy
from omnisift_edge.runtime.exported import ExportedStream


class OrtStream(ExportedStream):
    """Push whole 2-second chunks (pixel patches, log-mel window), then ask questions."""

    def __init__(self, export: ExportFolder, ratio: float | None, prefix_ids: Sequence[int], *,
                 providers: Sequence[str] = ("CPUExecutionProvider",), max_context: int | None = None,
                 context: ContextPolicy | None = None, open_graph=None):
        from omnisift_edge.artifact.onnx_runtime import ort_session

        open_graph = open_graph or ort_session
        graphs = export.graphs_for(ratio)
        self.sessions = {role: open_graph(export.file(g.file), providers=providers) for role, g in graphs.items()}
        super().__init__(export, ratio, prefix_ids, what="the exported graphs", max_context=max_context,
                         context=context)

    def _step(self, embeds, positions):
        n = embeds.shape[1]
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
