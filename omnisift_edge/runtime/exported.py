"""What the backends that run an export's graphs or engines share (ONNX Runtime, TensorRT).

`ExportedStream` reads everything from an `artifact.ExportFolder`: the graph of each role, the
tensor names in the order `artifact.tensors` declares them (inputs_embeds, position_ids,
attention_mask, then the past; logits, then the presents), the text embedding table, the dims and
float type, and an empty KV cache. Backends subclass it with the calls into their runtime; they
never import each other.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omnisift_edge.artifact.folder import ExportFolder
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.context import DEFAULT_POSITION_LIMIT, ContextPolicy, drop_tokens, inv_freq, rotate_keys
from omnisift_edge.runtime.stream import ChunkStream


def spec_from_layout(layout):
    """The manifest's `layout` section (artifact.records.Layout, or its dict) as an OmniSpec."""
    from omnisift_edge.artifact.records import Layout
    from omnisift_edge.model.spec import OmniSpec, TokenIds

    fields = (layout if isinstance(layout, Layout) else Layout.from_dict(layout)).spec_fields()
    try:
        return OmniSpec(**{**fields, "tokens": TokenIds(**fields["tokens"])})
    except TypeError as exc:   # a token name this version does not know
        raise UsageError(f"manifest.json: layout.tokens does not match this version ({exc}); export again") from None


class ExportedStream(ChunkStream):
    """A ChunkStream over an export folder's graphs (or their engines); subclasses run them."""

    def __init__(self, export: ExportFolder, ratio: float | None, prefix_ids: Sequence[int], *, what: str,
                 max_context: int | None = None, context: ContextPolicy | None = None):
        self.export = export
        self.what = what                                   # "the exported graphs" | "the engines" (for messages)
        self.graphs = export.graphs_for(ratio)             # role -> artifact.manifest.GraphInfo
        self.dims = export.manifest.dims
        self.float_type = export.float_type
        self.embed_table = export.embed_table()            # [V, D]
        decoder = self.graphs["decoder"]
        self.decoder_inputs = decoder.input_names[:3]      # inputs_embeds, position_ids, attention_mask
        self.past_names = decoder.input_names[3:]          # past_key_values.{i}.key/value
        self.logits_name = decoder.output_names[0]
        self.present_names = decoder.output_names[1:]      # present.{i}.key/value, same order as the past
        self.past = {name: np.zeros((1, self.dims.kv_heads, 0, self.dims.head_dim), self.float_type)
                     for name in self.past_names}          # [1, kv, 0, hd]
        rope = export.manifest.rope
        self.rope_freqs = inv_freq((rope and rope.rope_theta) or 1e6, self.dims.head_dim)              # [hd/2]
        self.position_limit = (rope and rope.max_position_embeddings) or DEFAULT_POSITION_LIMIT
        super().__init__(spec_from_layout(export.manifest.layout), prefix_ids, (self.dims.grid_h, self.dims.grid_w),
                         max_context=max_context or export.manifest.max_context, context=context,
                         position_limit=self.position_limit)

    def _drop_kv(self, start: int, stop: int) -> None:
        """Cached tokens [start, stop) leave every layer of the numpy past."""
        self.past = {name: drop_tokens(cache, start, stop) for name, cache in self.past.items()}

    def _rotate_kv(self, delta: int) -> None:
        """Every cached key re-based by -delta positions (values unchanged)."""
        self.past = {name: rotate_keys(cache, delta, self.rope_freqs) if name.endswith(".key") else cache
                     for name, cache in self.past.items()}

    def _embed(self, ids):
        return self.embed_table[np.asarray(ids, dtype=np.int64)][None]                  # [1, n, D]

    def _check_chunk(self, pixel_values, n_grids, mel):
        super()._check_chunk(pixel_values, n_grids, mel)
        dims = self.dims
        if n_grids != dims.grids_per_chunk or mel.shape[1] != dims.window_frames:
            raise UsageError(f"{self.what} take whole 2-second chunks ({dims.grids_per_chunk} grid steps, "
                             f"{dims.window_frames} log-mel frames; got {n_grids} and {mel.shape[1]}); "
                             "pad the last chunk (omnisift_edge.runtime.session does)")

    def compressor_feeds(self, video, audio, n_grids: int, chunk_positions) -> dict:
        """The compressor graph's inputs: video [1, grids, n_p, D], audio [1, La, D], positions [3, n]."""
        video_name, audio_name, positions_name = self.graphs["compressor"].input_names
        return {video_name: np.ascontiguousarray(video.reshape(1, n_grids, self.tokens_per_frame, -1)),
                audio_name: np.ascontiguousarray(audio[None]),
                positions_name: np.ascontiguousarray(chunk_positions, dtype=np.int64)}

    def kv_length(self) -> int:
        return next(iter(self.past.values())).shape[2]
