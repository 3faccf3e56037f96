"""The decoder's TensorRT-10.3 weight-only form (`decoder_trt10.onnx`): INT4/INT8 before opset 21.

The portable Q/DQ form (export/decoder/quantize.py) needs opset 21 (int4 tensors, `block_size`), which the
TensorRT parsers before 10.6 do not take, so JetPack 6 (TensorRT 10.3) could not build an int4
decoder. TensorRT's ONNX parser has imported its own INT4 node since 10.0 GA
(`TRT_INT4DequantizeLinear`: INT4 initializer, block-wise scales whose shape gives the block, one
blocked axis, zero point zero; NVIDIA ModelOpt writes the same node). This module writes that form
from the *float* past/present decoder (before the Q/DQ pass rewrites it), at the float graph's own
opset (17 by default), every linear layer W [K, N] as

    int4: q [K, N] int4 -> trt::TRT_INT4DequantizeLinear(q, scale [K/B, N], axis 0) -> W' -> MatMul
    int8: q [K, N] int8 -> DequantizeLinear(q, scale [N], axis 1)            (opset 13+) -> W' -> MatMul

with the same `quantize.layer_ints` as the Q/DQ pass (RTN or the calibrated ints), so q and scale are the same bytes as in
`decoder.onnx`: `shared_weights.data` stores them once (export/shared_weights.py). The graph's
inputs and outputs are `decoder`'s (the same contract; the engines stage builds it as the `decoder`
engine on TensorRT < 10.6, engines/kv_form.py). ONNX Runtime does not know the node: this form is
TensorRT-only, checked here by `dequantized_copy` (the numpy dequantization of the same weights put
back as float initializers, runnable in ONNX Runtime next to the Q/DQ form).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnisift_edge.artifact.records import DECODER, KvForm
from omnisift_edge.errors import UsageError, require
from omnisift_edge.export.decoder.forms import TRT10

GRAPH = TRT10.graph                     # decoder_trt10: the manifest's kv_cache key and the file's stem
FILE = TRT10.file
OP = "TRT_INT4DequantizeLinear"         # TensorRT's INT4 DQ node (onnx-tensorrt onnxOpImporters.cpp, 10.0 GA on)
DOMAIN = "trt"                          # ModelOpt's domain; the parser imports it in any domain (probed on RTX 1.7)
TENSORRT_MIN = "10.0"                   # first TensorRT that imports OP
QDQ_TENSORRT_MIN = "10.6"               # first TensorRT that parses the opset-21 Q/DQ form (trt_ops.WEIGHT_FORMS)
FORM = "trt_int4"                       # metadata `weights_form` of this graph (the lint keys on it)


@dataclass(frozen=True)
class TrtFormReport:
    """What `write_trt_form` wrote: the file, its opset and how many MatMuls now read quantized weights."""

    file: str
    opset: int
    quantized_matmuls: int
    node: str                            # trt::TRT_INT4DequantizeLinear | DequantizeLinear (int8)

    def record(self, entry: dict) -> KvForm:
        """The manifest's `kv_cache.decoder_trt10` (contract: docs/quantization.md), from the form's record."""
        raw = TRT10.kv_cache_entry(file=self.file, weights_node=self.node, opset=self.opset,
                                   quantized_matmuls=self.quantized_matmuls, logits=TRT10.logits, entry=entry)
        return KvForm.from_dict(GRAPH, {**raw, "replaces": DECODER}, f"kv_cache.{GRAPH}")


def tensorrt_forms(file_qdq: str, scatter: bool) -> list[dict]:
    """The manifest's `weights.tensorrt_forms`: which TensorRT builds which decoder file."""
    newest = "decoder_scatter.onnx" if scatter else file_qdq
    return [{"tensorrt": "TensorRT-RTX", "graph": newest},
            {"tensorrt": f">= {QDQ_TENSORRT_MIN}", "graph": f"{file_qdq} (>= 10.15: {newest})"},
            {"tensorrt": f">= {TENSORRT_MIN}, < {QDQ_TENSORRT_MIN} (JetPack 6: 10.3)", "graph": FILE}]


def write_trt_form(float_graph: Path, dst: Path, cfg, ints: dict | None = None) -> TrtFormReport:
    """Write `dst` (TensorRT-10.3 form) from the float past/present decoder at `float_graph`.

    `cfg` is the export's `quantize.QuantConfig`; the LM head stays float unless `cfg.lm_head`, as in
    the Q/DQ pass; `ints`: the calibrated int4 weights (`quantize.layer_ints`), as the Q/DQ pass gets
    them. Large graphs keep their weights in `<dst>.data` (onnx's external data)."""
    onnx = require("onnx", extra="export")
    from omnisift_edge.export import trt_ops
    from omnisift_edge.export.decoder import quantize
    from omnisift_edge.export.onnx_io import staged_graph, write_graph

    model = onnx.load(str(float_graph))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > trt_ops.OPSET_MAX:
        raise UsageError(f"the float decoder is at opset {opset}; TensorRT 10.3 parses up to "
                         f"{trt_ops.OPSET_MAX}: export with --opset 17")
    count = _rewrite(model, cfg, ints)
    if cfg.bits == 4:
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    model.ir_version = max(model.ir_version, quantize.INT4_IR_VERSION)   # int4 tensors need IR 10
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({"omnisift_edge.weights": cfg.weights, "omnisift_edge.weights_form": FORM,
                 "omnisift_edge.opset": str(opset), "omnisift_edge.graph": GRAPH})
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    with staged_graph(dst) as staged:     # weights in <dst>.data when the graph is too big to embed
        write_graph(model, staged, external_data=model.ByteSize() >= quantize.EMBED_LIMIT)
    return TrtFormReport(Path(dst).name, opset, count, f"{DOMAIN}::{OP}" if cfg.bits == 4 else "DequantizeLinear")


def _rewrite(model, cfg, ints: dict | None = None) -> int:
    """Every MatMul with a 2-D float initializer (not the LM head unless cfg.lm_head): W -> q + DQ node."""
    from onnx import TensorProto, helper, numpy_helper

    from omnisift_edge.export.decoder import quantize

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    head, held = quantize._lm_head_matmul(graph, "logits"), quantize.graph_float_dtype(graph)
    new_nodes = []
    for node in graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if init is None or len(init.dims) != 2 or init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue
        if node.name == head and not cfg.lm_head:
            continue
        w = numpy_helper.to_array(init)                                                          # [K, N]
        q, scale = quantize.layer_ints(w, cfg, node.name, ints, held)                            # [K, N], [K/B, N] | [N]
        base = init.name
        q_tensor = quantize._int_tensor(q, cfg.bits, f"{base}_q")
        s_tensor = numpy_helper.from_array(scale, f"{base}_scale")
        if cfg.bits == 4:   # block size from the scale's shape: K / scale.shape[0]
            dq = helper.make_node(OP, [q_tensor.name, s_tensor.name], [f"{base}_dq"], domain=DOMAIN,
                                  name=f"{node.name}/{OP}", axis=0)
        else:
            dq = helper.make_node("DequantizeLinear", [q_tensor.name, s_tensor.name], [f"{base}_dq"],
                                  name=f"{node.name}/DequantizeLinear", axis=1)
        graph.initializer.remove(init)
        graph.initializer.extend([q_tensor, s_tensor])
        node.input[1] = f"{base}_dq"
        new_nodes.append(dq)
    if not new_nodes:
        raise UsageError("the decoder graph has no MatMul with a 2-D float weight to quantize; "
                         "is this an exported decoder.onnx?")
    for i, dq in enumerate(new_nodes):   # DQ nodes read only initializers: first keeps the order topological
        graph.node.insert(i, dq)
    return len(new_nodes)


def dequantized_copy(path: Path):
    """An in-memory ModelProto of the TensorRT form at `path` that ONNX Runtime can run: each
    TRT_INT4DequantizeLinear / DequantizeLinear replaced by its numpy dequantization (q * scale,
    repeated over the block the scale's shape gives) as a float initializer. Used to check that the
    form computes what the Q/DQ form does (tests, docs/quantization.md)."""
    onnx = require("onnx", extra="export")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type in (OP, "DequantizeLinear") and n.input[0] in inits]:
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)                     # [K, N]
        scale = numpy_helper.to_array(inits[node.input[1]])                                    # [K/B, N] | [N]
        full = np.repeat(scale, q.shape[0] // scale.shape[0], axis=0) if scale.ndim == 2 else scale[None, :]
        w = (q.astype(scale.dtype) * full).astype(scale.dtype)                                 # [K, N]
        graph.initializer.extend([numpy_helper.from_array(w, node.output[0])])
        graph.node.remove(node)
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", next(
        (int(p.value) for p in model.metadata_props if p.key == "omnisift_edge.opset"), 17)))
    return model


def dequantize_layers(trt, network) -> list[tuple[str, str]]:
    """(layer name, input dtype) of every DEQUANTIZE layer of a parsed TensorRT network."""
    return [(network.get_layer(i).name, network.get_layer(i).get_input(0).dtype.name)
            for i in range(network.num_layers) if network.get_layer(i).type == trt.LayerType.DEQUANTIZE]


def export_decoder_trt10(folder: Path, float_graph: Path, cfg, dims, dtype: str,
                         ints: dict | None = None) -> dict[str, KvForm]:
    """Write `decoder_trt10.onnx` beside the float `decoder.onnx` (before the Q/DQ pass rewrites it);
    the manifest's `kv_cache` entry for it, with its graph entry (decoder's inputs and outputs)."""
    from omnisift_edge.artifact.manifest import graph_entry
    from omnisift_edge.artifact.tensors import decoder_graph

    report = write_trt_form(float_graph, Path(folder) / FILE, cfg, ints)
    entry = graph_entry(decoder_graph(dims.num_layers), dims, FILE, report.opset, dtype,
                        external_data=(Path(folder) / f"{FILE}.data").exists())
    return {GRAPH: report.record(entry)}

