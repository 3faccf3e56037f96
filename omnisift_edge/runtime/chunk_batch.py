"""A chunk's calls batched across the streams of a pool: what every pool backend shares (numpy only).

When several cameras' chunks arrive together, their vision encoder, audio encoder and compressor
calls can run as ONE call of the export's batched forms (artifact/tensors.py `BATCH_FORMS`:
`vision_encoder_batch`, `audio_encoder_batch`, `compressor_batch_r{ratio}`, a leading `batch_size`
axis; row b of every output is the one-chunk graph on row b of every input). This module holds the
pieces the ONNX Runtime pool (runtime/pool_ort.py) and the TensorRT pool (runtime/pool_trt.py) share:

- `batch_graphs(export, ratio)`: the batched forms an export has (all three, or none: exports
  without them run one call per chunk);
- the batch keys (`Scheduler.batch(kind, key, ...)`: calls of one kind and key run together): a
  row's feeds padded to a whole chunk have the same shapes for every stream (a clip's short last chunk
  rides along with its valid counts per row), so `shape_key(row)` is one key per graph; a chunk's
  prefill keys on its kept rows (`prefill_key`: a short last chunk keeps fewer and is its own key);
- `vision_row` / `audio_row` / `compressor_row`: one stream's inputs as the batched graph's feeds at
  batch 1 (the one-chunk feeds of `runtime.exported.ExportedStream`, with the batch axis added);
- `stack_rows` / `split_rows`: rows -> one batch's feeds (concatenated on each input's batch axis)
  and a batch's outputs -> each row's, at batch 1;
- `video_of` / `audio_of` / `kept_of`: a row's outputs cut to what the stream's hooks return;
- `PoolChunkCalls`: the pool streams' chunk hooks built on the above (both backends' streams mix it in).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from omnisift_edge.artifact.tensors import batch_form_key

BATCH_ROLES = ("vision_encoder", "audio_encoder", "compressor")
BATCH_AXIS = "batch_size"


def batch_graphs(export, ratio: float | None) -> dict[str, Any]:
    """role -> GraphInfo of the export's batched forms for `ratio`: all three, or {} (then one call per chunk).
    Their manifest keys come from the one-chunk graphs' (artifact/tensors.py `batch_form_key`)."""
    one_chunk = {"vision_encoder": "vision_encoder", "audio_encoder": "audio_encoder",
                 "compressor": export.manifest.ratio_plan(ratio).graph}
    graphs = export.manifest.graphs
    found = {role: graphs.get(batch_form_key(graph)) for role, graph in one_chunk.items()}
    return found if all(found.values()) else {}


def shape_key(row: dict) -> tuple:
    """The batch key of one row's feeds: its input shapes (rows of equal shapes stack)."""
    return tuple((name, tuple(np.shape(a))) for name, a in row.items())


def prefill_key(rows: int) -> tuple:
    """The batch key of a chunk prefill of `rows` kept tokens over a past (prompt prefixes key on their length)."""
    return ("chunk", int(rows))


def _axis(tensor) -> int:
    return list(tensor.axes).index(BATCH_AXIS)


def vision_row(graph, stream, pixel_values, n_grids: int) -> dict:
    """`vision_encoder_batch`'s feeds at batch 1: pixel patches [1, chunk_patches, patch_dim]."""
    return {graph.input_names[0]: stream.video_feed(pixel_values, n_grids)[None]}


def audio_row(graph, stream, mel) -> tuple[dict, int]:
    """(`audio_encoder_batch`'s feeds at batch 1: log-mel [1, n_mels, window_frames], valid_frames [1];
    the audio tokens the row yields)."""
    feeds, tokens = stream.audio_feeds(mel)
    frames, valid = graph.input_names
    one = list(feeds.values())
    return {frames: one[0][None], valid: np.array([mel.shape[1]], np.int64)}, tokens


def compressor_row(graph, stream, video, audio, n_grids: int, chunk_positions) -> dict:
    """`compressor_batch`'s feeds at batch 1 (the one-chunk compressor's, padded to a whole chunk): video
    [1, grids, n_p, D], audio [1, La, D], positions [3, 1, chunk_tokens], valid_grids [1], valid_audio [1]."""
    one = list(stream.compressor_feeds(video, audio, n_grids, chunk_positions).values())
    if len(one) != 5:
        raise ValueError("a batched compressor needs the one-chunk graph's valid-count inputs (exports since issue 25)")
    rows = {}
    for tensor, array in zip(graph.inputs, one):
        rows[tensor.name] = array[:, None] if _axis(tensor) == 1 else array.reshape(1, *array.shape[1:])
    return rows


def stack_rows(graph, rows: Sequence[dict]) -> dict:
    """The batch's feeds: each input's rows concatenated on its batch axis (row i of the batch is rows[i])."""
    return {t.name: np.ascontiguousarray(np.concatenate([r[t.name] for r in rows], axis=_axis(t)))
            for t in graph.inputs}


def split_rows(graph, outputs: Sequence[np.ndarray], n: int) -> list[list[np.ndarray]]:
    """Each row's outputs at batch 1 (views), from the batch's outputs in the graph's output order."""
    parts = [np.split(out, n, axis=_axis(t)) for t, out in zip(graph.outputs, outputs)]
    return [[part[i] for part in parts] for i in range(n)]


def video_of(outputs: Sequence[np.ndarray], n_grids: int, tokens_per_frame: int) -> np.ndarray:
    """A vision row's embeddings [n_grids * n_p, D] (a one-step chunk's first half)."""
    return outputs[0][0, :n_grids * tokens_per_frame]


def audio_of(outputs: Sequence[np.ndarray], tokens: int) -> np.ndarray:
    """An audio row's embeddings [La, D] (its real tokens)."""
    return outputs[0][0, :tokens]


def kept_of(outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A compressor row's (kept [1, k, D], kept_index [k]): its first kept_count rows are the real ones."""
    count = int(outputs[3].reshape(-1)[0])
    return np.ascontiguousarray(outputs[0][:, :count]), outputs[2][0, :count]


class PoolChunkCalls:
    """A pool stream's chunk calls through the pool's scheduler, for both pool backends' streams (mixed in before
    `OrtStream` / `TrtStream`): a chunk's calls rank as its push (served in arrival order), its encoder and
    compressor calls are `Scheduler.batch` rows of the backend's batched forms (`pool.backend.batched`; without
    them, the stream's own one-chunk call in its turn), and its cache edits wait their turn (a slot's rows must
    not move under a batched call). Needs `self.pool` and `self.tokens_per_frame`."""

    _rank: float | None = None                     # when the chunk being pushed began (None: none)

    def push(self, pixel_values, n_grids, mel):
        """`ChunkStream.push`, its model calls ranked by when it began."""
        self._rank = time.monotonic()
        try:
            return super().push(pixel_values, n_grids, mel)
        finally:
            self._rank = None

    def _call(self, fn):
        return self.pool.scheduler.call(fn, rank=self._rank)

    def _batch(self, role: str, row: dict):
        """This stream's row of a batched `role` call: its outputs at batch 1."""
        return self.pool.scheduler.batch(role, shape_key(row), row, rank=self._rank)

    def _encode_video(self, pixel_values, n_grids):
        graph = self.pool.backend.batched.get("vision_encoder")
        if graph is None:
            own = super()._encode_video
            return self._call(lambda: own(pixel_values, n_grids))
        out = self._batch("vision_encoder", vision_row(graph, self, pixel_values, n_grids))
        return video_of(out, n_grids, self.tokens_per_frame)                             # [n_grids*n_p, D]

    def _encode_audio(self, mel):
        graph = self.pool.backend.batched.get("audio_encoder")
        if graph is None:
            own = super()._encode_audio
            return self._call(lambda: own(mel))
        row, tokens = audio_row(graph, self, mel)
        return audio_of(self._batch("audio_encoder", row), tokens)                       # [La, D]

    def _compress(self, video, audio, n_grids, chunk_positions):
        graph = self.pool.backend.batched.get("compressor")
        if graph is None:
            own = super()._compress
            return self._call(lambda: own(video, audio, n_grids, chunk_positions))
        row = compressor_row(graph, self, video, audio, n_grids, chunk_positions)
        return kept_of(self._batch("compressor", row))                                   # [1, k, D], [k]

    def _drop_kv(self, start, stop):
        own = super()._drop_kv
        self._call(lambda: own(start, stop))

    def _rotate_kv(self, delta):
        own = super()._rotate_kv
        self._call(lambda: own(delta))
