"""The batched forms of the per-chunk graphs (artifact/tensors.py BATCH_FORMS), backend-neutral numpy.

A stream pool runs the chunks of several streams that arrived together through `vision_encoder_batch`,
`audio_encoder_batch` and `compressor_batch_r{ratio}` (same computation, a leading dynamic
`batch_size` axis; row b of each output is the one-chunk graph on row b of each input). Each stream
builds its one-chunk feeds as ever (`ExportedStream.video_feed`, `audio_feeds`, `compressor_feeds`:
padded to a whole chunk, real counts beside them), so every chunk has the same shapes; `stack_rows`
puts them on the batch axis the manifest declares for each input, `split_rows` takes row b of every
output back, with the batch axis kept at size 1 (the one-chunk graphs' `chunk_batch` axis).
Nothing here knows a tensor name: the manifest's entries say where the batch axis is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BATCH_AXIS = "batch_size"


def batch_graph_keys(manifest, compressor_key: str) -> dict[str, str]:
    """role -> the manifest key of its batched graph, for the roles whose batched graph the export holds
    (`compressor_key` is the one-chunk compressor's, `compressor_r{ratio}`)."""
    wanted = {"vision_encoder": "vision_encoder_batch", "audio_encoder": "audio_encoder_batch",
              "compressor": compressor_key.replace("compressor_", "compressor_batch_", 1)}
    return {role: key for role, key in wanted.items() if key in manifest.graphs}


def _axis(tensor) -> int:
    return list(tensor.axes).index(BATCH_AXIS)


def stack_rows(inputs, rows: Sequence[Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
    """The batched graph's feeds from B chunks' one-chunk feeds (`rows[b]`: that chunk's inputs in graph
    order): input i is the rows' input i, each reshaped to the batched input's shape without its batch
    axis, stacked on that axis (e.g. chunk_position_ids [3, n] -> [3, B, n]; valid counts [1] -> [B])."""
    feeds = {}
    for i, tensor in enumerate(inputs):
        axis = _axis(tensor)
        row_shape = tuple(d if isinstance(d, int) else -1 for j, d in enumerate(tensor.shape) if j != axis)
        feeds[tensor.name] = np.ascontiguousarray(np.stack([np.asarray(r[i]).reshape(row_shape) for r in rows],
                                                           axis=axis))
    return feeds


def split_rows(outputs, out: dict, batch: int) -> list[list[np.ndarray]]:
    """Row b of every output of a batched call (in graph order), its batch axis kept at size 1."""
    found = [(np.asarray(out[tensor.name]), _axis(tensor)) for tensor in outputs]
    return [[np.take(value, [b], axis=axis) for value, axis in found] for b in range(batch)]


def engine_batch_limit(entry) -> int:
    """The most rows an engine's profiles take on their batch axis (1: no batch axis, or a build without it)."""
    most = 1
    for profile in getattr(entry, "profiles", None) or []:
        batch = profile.get("axes", {}).get(BATCH_AXIS)
        if batch is not None:
            most = max(most, int(batch[2]))
    return most


def chunk_feeds(role: str, stream, *args) -> tuple[list[np.ndarray], int | None]:
    """(one chunk's inputs to `role`'s graph in graph order, the audio tokens it yields) from the stream's own
    feeds; `args` are the stream hook's (`_encode_video`: pixel_values, n_grids; `_encode_audio`: mel;
    `_compress`: video, audio, n_grids, chunk_positions)."""
    if role == "vision_encoder":
        return [stream.video_feed(*args)], None
    if role == "audio_encoder":
        feeds, tokens = stream.audio_feeds(*args)
    else:
        feeds, tokens = stream.compressor_feeds(*args), None
    return [feeds[name] for name in stream.graphs[role].input_names], tokens


def chunk_result(role: str, stream, args: tuple, row: list[np.ndarray], tokens: int | None):
    """What the stream's hook returns for one chunk, from its row of the batched outputs (`split_rows`)."""
    if role == "vision_encoder":
        return row[0][0][:args[1] * stream.tokens_per_frame]                        # [n_grids * n_p, D]
    if role == "audio_encoder":
        return row[0][0][:tokens]                                                   # [La, D]
    kept, index = row[0], row[2][0].astype(np.int64)                                # [1, K, D], [K]
    if len(row) > 3:                                                                # the real rows first
        count = int(row[3].reshape(-1)[0])
        kept, index = kept[:, :count], index[:count]
    return kept, index


def run_chunks(role: str, entry, items: Sequence[tuple], run) -> list:
    """B chunks of (stream, *hook args) through `role`'s batched graph (`entry`: its manifest entry) in one
    `run(feeds) -> {output name: host array}` call; each chunk's hook result, as the one-chunk graph gives."""
    rows, tokens = zip(*(chunk_feeds(role, stream, *args) for stream, *args in items))
    outputs = split_rows(entry.outputs, run(stack_rows(entry.inputs, rows)), len(items))
    return [chunk_result(role, stream, tuple(args), row, n) for (stream, *args), row, n in zip(items, outputs, tokens)]
