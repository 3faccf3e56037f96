"""The stream pool's ONNX Runtime backend: one session per graph, KV slots of `decoder_gqa` on the host.

`OrtPoolBackend` is what `runtime.pool.StreamPool` asks of a backend (see `PoolBackend` there):
it loads each graph once (`graph`), preallocates the slots (runtime/slots.py: one buffer
[max_streams, kv_heads, max_context + 1, head_dim] per layer and kind), opens a stream's backend
(`SlotStream`: an `OrtStream` on the pool's sessions and its slot, every model call through the
pool's scheduler) and runs batches of calls across streams:

- decode steps: one `decoder_gqa` call (`run_decodes`, slots.decode_rows);
- prompt prefixes of new streams: one `decoder_gqa` call per run of consecutive slots (empty caches);
- with chunk batching (`open_pool(..., batch_chunks=True)`; off by default here: on this CPU it gained
  nothing and cost memory, docs/benchmarks.md), the chunks that arrive together, at most `max_batch`
  a call: their vision encoder, audio encoder and compressor calls as one call of the export's
  batched forms (`vision_encoder_batch`, `audio_encoder_batch`, `compressor_batch_r{ratio}`; loaded
  INSTEAD of the one-chunk graphs, so their weights are resident once; a chunk alone is a batch of 1),
  keyed by their padded shapes (a clip's short last chunk rides along with its valid counts). Exports
  without the batched forms run one encoder and compressor call per chunk;
- with `batch_prefill=True` too, their prefills (equal kept counts: one key; a short last chunk keeps
  fewer, its own key) as one `decoder_scatter` call per run of consecutive slots (slots.scatter_rows:
  TensorScatter with a write index per row, in place; a run of one slot is its own `decoder_gqa`
  call), loaded once per pool (its weights are shared_weights.data, as decoder_gqa's). Off by default:
  slower than one `decoder_gqa` call per chunk on the CPU (runtime/pool.py, docs/runtime.md). Without
  it, or on exports whose `decoder_scatter` takes one write index, one prefill call per chunk.
- not batched: questions and other text (one stream's rows with logits), cache edits (drop, rotate).

With `batch_chunks=False` (the default) every chunk call runs alone, on the one-chunk graphs.
The keys, rows and splits both pool backends share are runtime/chunk_batch.py's.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from omnisift_edge.artifact.manifest import DECODER_GQA, DECODER_SCATTER
from omnisift_edge.errors import UsageError
from omnisift_edge.runtime import chunk_batch as cb
from omnisift_edge.runtime.ort_pipeline import OrtStream
from omnisift_edge.runtime.slots import SlotBuffers, SlotCache, decode_rows, prefill_rows, scatter_rows


class _SharedExport:
    """The pool's export folder with its embedding table loaded once (every stream reads the same array)."""

    def __init__(self, export):
        self._export = export
        self._table = export.embed_table()                   # [V, D]

    def embed_table(self) -> np.ndarray:
        return self._table

    def __getattr__(self, name):
        return getattr(self._export, name)


class SlotStream(cb.PoolChunkCalls, OrtStream):
    """An `OrtStream` on the pool's graphs and KV slot; its model calls go through the pool's scheduler."""

    def __init__(self, pool, slot: int, prefix_ids: Sequence[int]):
        self.pool, self.slot = pool, slot
        super().__init__(pool.export, pool.ratio, prefix_ids, max_context=pool.max_context,
                         context=pool.cfg.context, kv_form="shared_buffer", threads=pool.cfg.ort_threads)

    def _open_graph(self, path, role, providers, threads):
        if role in self.pool.backend.batched:                # the batched form serves this role
            return None
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
        if not want_logits and self.pool.backend.scatter is not None:   # a chunk: batched with equal ones
            self.kv.reserve(n)
            return self.pool.scheduler.prefill(cb.prefill_key(n), self.kv, embeds, positions.reshape(3, 1, n),
                                               rank=self._rank)
        # GroupQueryAttention takes S > 1 new rows over a past only at batch 1: without decoder_scatter, alone
        return self.pool.scheduler.call(lambda: OrtStream._step(self, embeds, positions, want_logits), rank=self._rank)

    def close(self) -> None:
        self.kv.close()


class OrtPoolBackend:
    """ONNX Runtime on the CPU, the in-place decoder (`decoder_gqa`) with one KV slot per stream."""

    name = "onnxruntime"
    batch_chunks_default = False    # measured on the CPU: batched chunk calls gain nothing, cost RSS (docs/benchmarks.md)
    max_batch = 4                   # rows of one batched chunk call: the arena grows to the largest call's activations

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
        chunks = getattr(pool, "batch_chunks", False)
        self.batched = cb.batch_graphs(self.export, pool.ratio) if chunks else {}    # role -> batched GraphInfo
        self.sessions = {role: self.graph(self.export.file(g.file), role, cfg.ort_threads)
                         for role, g in self.batched.items()}
        self.scatter, self.scatter_names = self._scatter(cfg) if getattr(pool, "batch_prefill", False) else (None, ())

    def _allocate(self, manifest, max_streams: int, max_context: int) -> SlotBuffers:
        from omnisift_edge.artifact.tensors import decoder_gqa_graph

        dims = manifest.dims
        names = decoder_gqa_graph(dims.num_layers).input_names[5:]
        return SlotBuffers(names, max_streams, dims.kv_heads, max_context, dims.head_dim, self.export.float_type)

    def _scatter(self, cfg):
        """(the `decoder_scatter` session, its embeds/positions/write_index/logits_index names), or (None, ()):
        chunk prefills batch only on a form whose write index is per batch row (exports since issue 23)."""
        form = self.export.manifest.kv_cache.get(DECODER_SCATTER)
        entry = form.entry if form is not None else None
        if entry is None or form.file is None or list(entry.inputs[2].shape) != [cb.BATCH_AXIS]:
            return None, ()
        return self.graph(self.export.file(form.file), "decoder", cfg.ort_threads), tuple(entry.input_names[:4])

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
        """A batch of the calls `Scheduler.batch` gathered (equal keys), each call's result in order:
        "prefill": prompt prefixes of new streams (empty caches: `decoder_gqa`, slots.prefill_rows) or chunk
        prefills over pasts (`decoder_scatter`, slots.scatter_rows), one call per run of consecutive slots;
        "vision_encoder" / "audio_encoder" / "compressor": the batched form once on the stacked rows, its
        outputs split per row (runtime/chunk_batch.py)."""
        if kind == "prefill":
            caches, embeds, positions = zip(*items)
            if self.scatter is None or not any(c.length for c in caches):
                return prefill_rows(self.slots, caches, embeds, positions)
            return scatter_rows(self.slots, self.scatter, self.scatter_names, caches, embeds, positions)
        graph = self.batched.get(kind)
        if graph is None:
            raise ValueError(f"the onnxruntime pool batches no {kind!r} calls")
        rows = [row for (row,) in items]
        outputs = self.sessions[kind].run(None, cb.stack_rows(graph, rows))       # each [B, ...] (or [3, B, ...])
        return cb.split_rows(graph, outputs, len(rows))
