"""decoder_scatter.onnx: the thinker LLM on a static KV cache updated in place (TensorRT's form of the decoder).

`tensors.decoder_scatter_graph`: inputs_embeds [1, S, D], position_ids [3, 1, S], write_index int64 [1],
logits_index int64 [L], past_key_values.{i}.key/value [1, kv, cache_length, hd] -> logits [1, L, V],
present.{i}.key/value [1, kv, cache_length, hd]. Each layer's cache update is ONNX `TensorScatter`
(opset 24, axis 2, mode linear) followed by plain-op attention over the valid rows [0, write_index + S);
TensorRT's ONNX parser (>= 10.15, TensorRT-RTX 1.7) turns the scatter into an IKVCacheUpdateLayer whose
output aliases its cache input, so a call writes the new rows and copies nothing else.

Exported through Optimum as the other decoder forms are (`export.decoder.trace.export_staged`, our OnnxConfig,
Optimum's ModelPatcher); the attention patch is `model.scatter_kv`. The TorchScript exporter cannot emit
opset 24, so the traced graph holds one custom-domain node per update and `to_tensor_scatter` (a graph
pass on the staged file, weights never loaded) converts the graph to opset 24 and renames those nodes
to the standard op. `validate_decoder_scatter` runs it in ONNX Runtime (whose CPU TensorScatter copies
the cache: fine for numerics) call by call against PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.artifact.tensors import Dims
from omnisift_edge.errors import require
from omnisift_edge.export.decoder.checks import InPlaceCheck, check_capacity, check_export, check_in_place
from omnisift_edge.export.decoder.forms import SCATTER
from omnisift_edge.export.decoder.trace import export_staged, metadata, module_in_dtype, set_metadata

GRAPH = SCATTER.graph
SCATTER_OPSET = SCATTER.opset     # the first opset with TensorScatter
RUNTIMES = list(SCATTER.runtimes)


def kv_cache_record(max_context: int, file: str, entry: dict) -> dict:
    """The manifest's `kv_cache.decoder_scatter` (contract: docs/export-decoder.md)."""
    return SCATTER.kv_cache_entry(
        file=file, max_context=max_context, write_index=entry["inputs"][2]["name"],
        logits_index=entry["inputs"][3]["name"],
        update=f"ONNX TensorScatter (opset {SCATTER_OPSET}, axis 2, mode linear); present aliases past",
        logits=SCATTER.logits, entry=entry)


def to_tensor_scatter(path: Path) -> None:
    """The graph pass: opset 17 + our custom-domain scatter nodes -> opset 24 `TensorScatter` (axis 2, linear).

    Works on the graph alone (loaded without external data; initializers keep their references to
    `<name>.onnx.data`, which is neither read nor rewritten), so a 7B decoder converts in seconds."""
    onnx = require("onnx", extra="export")
    from onnx import helper, version_converter

    from omnisift_edge.model.scatter_kv import CACHE_AXIS, SCATTER_DOMAIN

    model = onnx.load(str(path), load_external_data=False)
    model = version_converter.convert_version(model, SCATTER_OPSET)
    found = 0
    for node in model.graph.node:
        if node.domain == SCATTER_DOMAIN and node.op_type == "TensorScatter":
            node.domain = ""
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("axis", CACHE_AXIS), helper.make_attribute("mode", "linear")])
            found += 1
    if found != 2 * len([i for i in model.graph.input if i.name.endswith(".key")]):
        raise RuntimeError(f"expected one TensorScatter per layer and kind, found {found}")
    kept = [o for o in model.opset_import if o.domain != SCATTER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import), True))
    set_metadata(model, {**metadata(model), "opset": str(SCATTER_OPSET)})
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))     # by path: external data is checked where it lies, never loaded


def export_decoder_scatter(thinker, dims: Dims, path, *, dtype: str = "fp32", max_context: int | None = None,
                           external_data: bool | None = None) -> Path:
    """Export the scatter form to `path` through Optimum, then the opset-24 pass; atomic (staged beside `path`)."""
    for module in ("onnx", "onnxruntime", "optimum.exporters.onnx"):
        require(module, extra="export")
    from omnisift_edge.export.decoder.scatter_config import onnx_config_for
    from omnisift_edge.model.scatter_kv import ScatterDecoder

    path = Path(path)
    max_context = check_export(thinker, dims, dtype, max_context)
    module = module_in_dtype(ScatterDecoder(thinker), thinker, dtype)
    return export_staged(module, onnx_config_for(thinker, dtype), path, graph=GRAPH, dtype=dtype, opset=17,
                         max_context=max_context, external_data=external_data, rewrite=to_tensor_scatter)


class OrtScatterCache:
    """TensorRT's aliasing, emulated in ONNX Runtime for the check: one array per layer and kind, fed as
    the past; the present (ONNX Runtime's copy) replaces it after the call."""

    def __init__(self, session, entry: dict, capacity: int):
        names = [t["name"] for t in entry["inputs"]]
        self.session, self.capacity = session, int(capacity)
        self.embeds, self.positions, self.write_index, self.logits_index = names[:4]
        self.past_names = names[4:]
        first = entry["inputs"][4]
        self.float_type = np.float16 if first["dtype"] == "float16" else np.float32
        shape = (1, first["shape"][1], self.capacity, first["shape"][3])                 # [1, kv, M, hd]
        self.arrays = {name: np.zeros(shape, self.float_type) for name in self.past_names}
        self.length, self.logits_rows = 0, 0

    def step(self, embeds: np.ndarray, positions: np.ndarray, want_logits: bool) -> np.ndarray | None:
        n = int(embeds.shape[1])
        feeds = {self.embeds: embeds.astype(self.float_type), self.positions: positions.astype(np.int64),
                 self.write_index: np.array([self.length], np.int64),
                 self.logits_index: np.array([n - 1] if want_logits else [], np.int64), **self.arrays}
        logits, *presents = self.session.run(None, feeds)                                # [1, L, V], [1, kv, M, hd]
        self.arrays = dict(zip(self.past_names, presents))
        self.length += n
        self.logits_rows = logits.shape[1]
        return logits[0, -1].astype(np.float32) if want_logits else None

    def valid(self) -> list[np.ndarray]:
        return [self.arrays[n][:, :, :self.length].copy() for n in self.past_names]


def validate_decoder_scatter(onnx_path, thinker, manifest_entry: dict, *, capacity: int = 48,
                             chunk_lengths: tuple[int, ...] = (12, 7), decode_steps: int = 3, seed: int = 0,
                             atol: float | None = None, rtol: float | None = None) -> InPlaceCheck:
    """Chunk prefills without logits, a question (logits of its last row), greedy decode steps, through
    `decoder_scatter.onnx` in ONNX Runtime on a `capacity`-row cache and through PyTorch on a DynamicCache:
    logits and valid cache rows after every call, and the rows past the valid length untouched."""
    from omnisift_edge.export.memory_trace import mark

    mark("decoder_scatter: ONNX Runtime check")
    check_capacity(capacity, chunk_lengths, decode_steps)
    cache = OrtScatterCache(ort_session(Path(onnx_path)), manifest_entry, capacity)
    return check_in_place(cache, thinker, manifest_entry, lambda: cache.logits_rows, capacity=capacity,
                          chunk_lengths=chunk_lengths, decode_steps=decode_steps, seed=seed, atol=atol, rtol=rtol)


def graph_entry_for(dims: Dims, file: str, dtype: str, external_data: bool) -> dict:
    """The graph entry (names, shapes, dtypes from the declaration) of the scatter form, always opset 24."""
    from omnisift_edge.artifact.manifest import graph_entry

    return graph_entry(SCATTER.spec(dims.num_layers), dims, file, SCATTER_OPSET, dtype,
                       external_data=external_data)
