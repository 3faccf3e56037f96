"""The stream pool's ONNX Runtime backend: one session per graph, KV slots of `decoder_gqa` on the host.

`OrtPoolBackend` is what `runtime.pool.StreamPool` asks of a backend (see `PoolBackend` there):
it loads each graph once (`graph`), preallocates the slots (runtime/slots.py: one buffer
[max_streams, kv_heads, max_context + 1, head_dim] per layer and kind), opens a stream's backend
(`SlotStream`: an `OrtStream` on the pool's sessions and its slot, every model call through the
pool's scheduler) and runs a batch of decode steps as one decoder call (`run_decodes`).
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from omnisift_edge.artifact.manifest import DECODER_GQA
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.ort_pipeline import OrtStream
from omnisift_edge.runtime.slots import SlotBuffers, SlotCache, decode_rows, prefill_rows


class _SharedExport:
    """The pool's export folder with its embedding table loaded once (every stream reads the same array)."""

    def __init__(self, export):
        self._export = export
        self._table = export.embed_table()                   # [V, D]

    def embed_table(self) -> np.ndarray:
        return self._table

    def __getattr__(self, name):
        return getattr(self._export, name)


class SlotStream(OrtStream):
    """An `OrtStream` on the pool's graphs and KV slot; its model calls go through the pool's scheduler."""

    def __init__(self, pool, slot: int, prefix_ids: Sequence[int]):
        self.pool, self.slot = pool, slot
        self._rank: float | None = None                      # when the chunk being pushed began (None: none)
        super().__init__(pool.export, pool.ratio, prefix_ids, max_context=pool.max_context,
                         context=pool.cfg.context, kv_form="shared_buffer", threads=pool.cfg.ort_threads)

    def _open_graph(self, path, role, providers, threads):
        return self.pool.backend.graph(path, role, threads)

    def _open_cache(self, export, inplace_entry, max_context, providers):
        """The slot's cache, zeroed between two model calls (a batched call may span a free slot)."""
        from omnisift_edge.artifact.manifest import Rope

        rope = (export.manifest.rope or Rope()).to_dict()
        return self.pool.scheduler.call(lambda: SlotCache(self.pool.backend.slots, self.slot, self.sessions["decoder"],
                                                          inplace_entry.to_dict(), rope))

    def _step(self, embeds, positions, want_logits=True):
        n = embeds.shape[1]
        if want_logits and n == 1:                           # one answer token: batched with the others'
            self.kv.reserve(1)
            return self.pool.scheduler.decode(self.kv, embeds, positions.reshape(3, 1, 1))
        if not want_logits and n > 1 and self.kv.length == 0:   # the prompt prefix: batched with equal ones
            self.kv.reserve(n)                               # (checked per stream, before any batching)
            return self.pool.scheduler.prefill(n, self.kv, embeds, positions.reshape(3, 1, n), rank=self._rank)
        # GroupQueryAttention takes S > 1 new rows over a past only at batch 1: a chunk's prefill runs alone
        return self.pool.scheduler.call(lambda: OrtStream._step(self, embeds, positions, want_logits), rank=self._rank)

    def push(self, pixel_values, n_grids, mel):
        """`ChunkStream.push`, its model calls ranked by when it began (the scheduler serves chunks in order)."""
        self._rank = time.monotonic()
        try:
            return super().push(pixel_values, n_grids, mel)
        finally:
            self._rank = None

    def _call(self, fn):
        return self.pool.scheduler.call(fn, rank=self._rank)

    def _encode_video(self, pixel_values, n_grids):
        return self._call(lambda: OrtStream._encode_video(self, pixel_values, n_grids))

    def _encode_audio(self, mel):
        return self._call(lambda: OrtStream._encode_audio(self, mel))

    def _compress(self, video, audio, n_grids, chunk_positions):
        return self._call(lambda: OrtStream._compress(self, video, audio, n_grids, chunk_positions))

    def _drop_kv(self, start, stop):          # the slot's rows must not move under a batched call
        self._call(lambda: OrtStream._drop_kv(self, start, stop))

    def _rotate_kv(self, delta):
        self._call(lambda: OrtStream._rotate_kv(self, delta))

    def close(self) -> None:
        self.kv.close()


class OrtPoolBackend:
    """ONNX Runtime on the CPU, the in-place decoder (`decoder_gqa`) with one KV slot per stream."""

    name = "onnxruntime"

    def __init__(self, pool, template):
        cfg = pool.cfg
        if cfg.device != "cpu":
            raise UsageError(f"an onnxruntime stream pool runs on the cpu for now (got {cfg.device}); use --device "
                             "cpu, or one session per stream")
        if template.export.manifest.kv_cache.get(DECODER_GQA) is None:
            raise UsageError(f"{cfg.folder} has no in-place decoder (decoder_gqa) for a pool; export again")
        self.pool = pool
        self.export = template.export = _SharedExport(template.export)
        self._graphs: dict[str, object] = {}
        self._lock = threading.Lock()
        self.slots = self._allocate(template.export.manifest, pool.max_streams, pool.max_context)

    def _allocate(self, manifest, max_streams: int, max_context: int) -> SlotBuffers:
        from omnisift_edge.artifact.tensors import decoder_gqa_graph

        dims = manifest.dims
        names = decoder_gqa_graph(dims.num_layers).input_names[5:]
        return SlotBuffers(names, max_streams, dims.kv_heads, max_context, dims.head_dim, self.export.float_type)

    def graph(self, path, role: str, threads: str):
        """The pool's one ONNX Runtime session of the graph at `path` (opened on first use)."""
        from omnisift_edge.artifact.onnx_runtime import ort_session

        key = str(path)
        with self._lock:
            if key not in self._graphs:
                self._graphs[key] = ort_session(path, threads=threads, spins=role == "decoder")
            return self._graphs[key]

    def open_stream(self, slot: int, prefix_ids: Sequence[int]) -> SlotStream:
        return SlotStream(self.pool, slot, prefix_ids)

    def run_decodes(self, steps):
        caches, embeds, positions = zip(*steps)
        return decode_rows(self.slots, caches, embeds, positions)

    def run_batch(self, kind: str, items):
        """A batch of the calls `Scheduler.batch` gathered: "prefill": prompt prefixes of several new streams
        (empty caches), equal lengths: one decoder call per run of consecutive slots (GroupQueryAttention
        batches S > 1 rows only without a past)."""
        if kind != "prefill":
            raise ValueError(f"the onnxruntime pool batches no {kind!r} calls")
        caches, embeds, positions = zip(*items)
        return prefill_rows(self.slots, caches, embeds, positions)
