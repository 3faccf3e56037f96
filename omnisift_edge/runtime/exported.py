"""What the backends that run an export's graphs or engines share (ONNX Runtime, TensorRT).

`ExportedStream` reads everything from an `artifact.ExportFolder`: the graph of each role, the
tensor names in the order `artifact.tensors` declares them (inputs_embeds, position_ids,
attention_mask, then the past; logits, then the presents), the text embedding table, the dims and
float type. Backends subclass it with the calls into their runtime and hand it their KV cache
(runtime/kv_cache.py's protocol); they never import each other.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omnisift_edge.artifact.folder import ExportFolder
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.context import DEFAULT_POSITION_LIMIT, ContextPolicy, inv_freq
from omnisift_edge.runtime.kv_cache import KVCache
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


def rope_freqs(export: ExportFolder) -> np.ndarray:
    """The thinker's RoPE inverse frequencies [hd/2] from the manifest (what `KVCache.rotate` turns keys by)."""
    rope = export.manifest.rope
    return inv_freq((rope and rope.rope_theta) or 1e6, export.manifest.dims.head_dim)


class ExportedStream(ChunkStream):
    """A ChunkStream over an export folder's graphs (or their engines); subclasses run them."""

    def __init__(self, export: ExportFolder, ratio: float | None, prefix_ids: Sequence[int], *, what: str,
                 kv: KVCache, max_context: int | None = None, context: ContextPolicy | None = None):
        self.export = export
        self.what = what                                   # "the exported graphs" | "the engines" (for messages)
        self.graphs = export.graphs_for(ratio)             # role -> artifact.manifest.GraphInfo
        self.dims = export.manifest.dims
        self.float_type = export.float_type
        self.embed_table = export.embed_table()            # [V, D]
        decoder = self.graphs["decoder"]
        self.decoder_inputs = decoder.input_names[:3]      # inputs_embeds, position_ids, attention_mask
        self.logits_name = decoder.output_names[0]         # (the past/present names: the KV cache's)
        # graphs with valid-length inputs take a clip's short last chunk as it is (exports since issue 25)
        self.takes_short_chunks = (len(self.graphs["audio_encoder"].input_names) > 1
                                   and len(self.graphs["compressor"].input_names) > 3)
        rope = export.manifest.rope
        self.position_limit = (rope and rope.max_position_embeddings) or DEFAULT_POSITION_LIMIT
        super().__init__(spec_from_layout(export.manifest.layout), prefix_ids, (self.dims.grid_h, self.dims.grid_w),
                         max_context=max_context or export.manifest.max_context, context=context,
                         position_limit=self.position_limit, kv=kv)

    def _embed(self, ids):
        return self.embed_table[np.asarray(ids, dtype=np.int64)][None]                  # [1, n, D]

    def _check_chunk(self, pixel_values, n_grids, mel):
        super()._check_chunk(pixel_values, n_grids, mel)
        dims = self.dims
        if self.takes_short_chunks:
            return
        if n_grids != dims.grids_per_chunk or mel.shape[1] != dims.window_frames:
            raise UsageError(f"{self.what} take whole 2-second chunks ({dims.grids_per_chunk} grid steps, "
                             f"{dims.window_frames} log-mel frames; got {n_grids} and {mel.shape[1]}); "
                             "pad the last chunk (omnisift_edge.runtime.session does), or export again")

    def video_feed(self, pixel_values, n_grids: int) -> np.ndarray:
        """The vision graph's [chunk_patches, patch_dim] input: a one-step chunk's patches repeated.

        The tower attends within one temporal grid step, so the first step's embeddings do not see
        the second: a short chunk's rows of the output are its own (take the first n_grids * n_p)."""
        pixels = np.ascontiguousarray(pixel_values, dtype=self.float_type)       # [n_grids * h * w, patch_dim]
        return np.ascontiguousarray(np.tile(pixels, (self.dims.grids_per_chunk // n_grids, 1)))

    def audio_feeds(self, mel) -> tuple[dict, int]:
        """(the audio graph's feeds: log-mel zero-padded to a window + its valid frames, audio tokens it yields)."""
        names, n, full = self.graphs["audio_encoder"].input_names, mel.shape[1], self.dims.window_frames
        padded = np.zeros((mel.shape[0], full), self.float_type)                 # [n_mels, 200]
        padded[:, :n] = mel
        feeds = {names[0]: padded}
        if len(names) > 1:
            feeds[names[1]] = np.array([n], np.int64)
        return feeds, ((n - 1) // 2 + 1) // 2                                    # conv2 stride 2, then pairs

    def compressor_feeds(self, video, audio, n_grids: int, chunk_positions) -> dict:
        """The compressor graph's inputs: video [1, grids, n_p, D], audio [1, La, D], positions [3, n],
        padded to a whole chunk with the real counts beside them (graphs with valid-length inputs)."""
        names, dims = self.graphs["compressor"].input_names, self.dims
        frames = video.reshape(1, n_grids, self.tokens_per_frame, -1)
        la, n = audio.shape[0], chunk_positions.shape[1]
        if len(names) > 3:
            frames = np.tile(frames, (1, dims.grids_per_chunk // n_grids, 1, 1))  # [1, 2, n_p, D]
            audio = np.concatenate([audio, np.zeros((dims.window_audio_tokens - la, audio.shape[1]), audio.dtype)])
            chunk_positions = np.pad(chunk_positions, ((0, 0), (0, dims.size("chunk_tokens") - n)))
        feeds = {names[0]: np.ascontiguousarray(frames), names[1]: np.ascontiguousarray(audio[None]),
                 names[2]: np.ascontiguousarray(chunk_positions, dtype=np.int64)}
        if len(names) > 3:
            feeds[names[3]], feeds[names[4]] = np.array([n_grids], np.int64), np.array([la], np.int64)
        return feeds

