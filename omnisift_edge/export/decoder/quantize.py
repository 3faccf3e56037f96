"""Weight-only INT8/INT4 decoder: a pass over an exported decoder.onnx's linear-layer weights.

The pass does not care how the graph computes attention (SDPA decomposition, GroupQueryAttention,
...): it rewrites every `MatMul` whose second input is a 2-D float initializer W [K, N] (a
`nn.Linear` as the exporter writes it, x [.., K] @ W -> [.., N]) into

    q [K, N] (int4 / int8 initializer) -> DequantizeLinear(q, scale) -> W' [K, N] -> MatMul

in the portable weight-only Q/DQ form, opset 21 (int4 initializers, `block_size`):
- int4: block-wise along K (axis 0), `block_size` rows share one scale: scale [K / block, N];
- int8: per output channel (axis 1): scale [N].
Symmetric round-to-nearest (RTN): scale = max|w| / qmax over the group, q = clip(round(w / scale)),
no zero point. Scales have the graph's float dtype. ONNX Runtime runs this form (its CPU provider
fuses int4 DQ + MatMul into MatMulNBits), TensorRT-RTX and TensorRT >= 10.6 build it; see
docs/quantization.md for which target takes which form.

The LM head (the `MatMul` producing `logits`) stays in float unless `lm_head=True`. The exact
dequantized weights W' are returned per layer, so the check can run PyTorch with the same weights
(`dequantized_weights`): the graph must then agree with PyTorch as closely as an unquantized export.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnisift_edge.errors import UsageError, require

WEIGHTS = ("fp32", "fp16", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
QMAX = {8: 127, 4: 7}                 # symmetric: int8 [-127, 127], int4 [-7, 7] (-8 unused)
QDQ_OPSET = 21                        # DequantizeLinear with int4 inputs and block_size
INT4_IR_VERSION = 10                  # int4 tensors need IR version 10
FORM = "qdq"                          # the portable weight-only Q/DQ form (one graph for ORT and TensorRT)
METHOD = "rtn"                        # round-to-nearest of the weights as given (awq/gptq: export/decoder/awq.py calibrates)
METHOD_STEPS = {"rtn": "rtn", "awq": "awq+clip", "gptq": "awq+clip+gptq"}   # --calibration -> what ran (manifest)
DEFAULT_BLOCK = 32
EMBED_LIMIT = 2**31 - 2**26           # graphs this big or bigger keep their weights in <name>.onnx.data


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize: `weights` int8 | int4, int4's `block_size`, and whether the LM head too."""

    weights: str = "int4"
    block_size: int = DEFAULT_BLOCK       # int4 only: rows of W [K, N] sharing one scale; must divide K
    lm_head: bool = False
    method: str = METHOD                  # --calibration: rtn, awq or gptq (export/decoder/awq.py calibrates first)

    def __post_init__(self):
        if self.weights not in BITS:
            raise UsageError(f"--weights must be one of {', '.join(WEIGHTS)} (got {self.weights!r}); "
                             "only int8 and int4 are quantized")
        if self.weights == "int4" and (self.block_size < 16 or self.block_size & (self.block_size - 1)):
            raise UsageError(f"--block-size must be a power of two >= 16 (got {self.block_size}); try {DEFAULT_BLOCK}")

    @property
    def bits(self) -> int:
        return BITS[self.weights]

    def record(self) -> dict:
        """The manifest's `weights` entry (without the per-graph sizes)."""
        return {"mode": self.weights, "bits": self.bits, "form": FORM, "method": METHOD_STEPS.get(self.method, self.method),
                "calibration_option": self.method,
                "granularity": "block-wise along K (axis 0)" if self.bits == 4 else "per output channel (axis 1)",
                "block_size": self.block_size if self.bits == 4 else None, "symmetric": True,
                "lm_head_quantized": self.lm_head, "opset": QDQ_OPSET}


@dataclass(frozen=True)
class QuantizedLayer:
    node: str                  # the MatMul node name, e.g. /model/layers.0/mlp/up_proj/MatMul
    weight: str                # its weight initializer's name in the float graph
    shape: tuple[int, int]     # W [K, N]


@dataclass(frozen=True)
class QuantReport:
    config: QuantConfig
    layers: tuple[QuantizedLayer, ...]
    float_weight_bytes: int    # the quantized weights as they were (float)
    quant_weight_bytes: int    # the same weights quantized: packed ints + scales
    kept_float: tuple[str, ...]   # 2-D MatMul weights left in float (the LM head unless lm_head)
    ints: dict | None = field(default=None, repr=False, compare=False)   # calibrated: module path -> (q, scale)

    def record(self) -> dict:
        return {**self.config.record(), "quantized_matmuls": len(self.layers), "kept_float": list(self.kept_float),
                "float_weight_bytes": self.float_weight_bytes, "quantized_weight_bytes": self.quant_weight_bytes}


def quantize_weight(w: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric RTN of W [K, N]: (q int8-valued [K, N], scale); int4 scale [K / block, N], int8 [N]."""
    k, n = w.shape
    w32 = w.astype(np.float32)
    qmax = QMAX[bits]
    if bits == 4:
        if k % block_size:
            raise UsageError(f"int4 block size {block_size} does not divide the layer width {k}; "
                             f"pass a --block-size that divides {k} (e.g. {_divisor_hint(k)})")
        amax = np.abs(w32.reshape(k // block_size, block_size, n)).max(axis=1)                  # [K/B, N]
        scale = np.where(amax > 0, amax / qmax, 1.0).astype(w.dtype)                           # [K/B, N]
        full = np.repeat(scale.astype(np.float32), block_size, axis=0)                         # [K, N]
    else:
        amax = np.abs(w32).max(axis=0)                                                         # [N]
        scale = np.where(amax > 0, amax / qmax, 1.0).astype(w.dtype)                           # [N]
        full = scale.astype(np.float32)[None, :]                                               # [1, N]
    q = np.clip(np.rint(w32 / full), -qmax, qmax).astype(np.int8)                              # [K, N]
    return q, scale


def layer_ints(w: np.ndarray, cfg: QuantConfig, node: str, ints: dict | None,
               held=None) -> tuple[np.ndarray, np.ndarray]:
    """(q [K, N], scale) of the MatMul `node` reading W [K, N]: the calibrated ints when the export has them
    (export/decoder/awq.py: module path -> (q [K, N] int8, scale [K/B, N] float32), scale cast to W's dtype),
    else RTN of W. Every decoder form and the PyTorch reference take their ints from here, so they agree.

    held: the numpy dtype the model holds its weights in (the graph's float dtype, `graph_float_dtype`).
    An fp16 graph can hold a weight in float32 (o_proj: the exporter runs attention's output in float32
    and folds the fp16 weight's Cast): its ints and scale are then computed in fp16, as the PyTorch
    reference (`dequantized_weights`, from the fp16 module) computes them, and the scale is returned in
    W's dtype; quantized in float32 instead, some ints and every scale differ from the reference's."""
    scale_dtype = w.dtype
    if held is not None and w.dtype != held:
        w = _as_held(w, held, node)
    if ints is None:
        q, scale = quantize_weight(w, cfg.bits, cfg.block_size)
        return q, scale.astype(scale_dtype)
    path = _module_path(node)
    if path not in ints:
        raise RuntimeError(f"{node}: no calibrated int4 weights for {path}; the calibration and the graph disagree")
    q, scale = ints[path]
    if q.shape != w.shape or scale.shape != (w.shape[0] // cfg.block_size, w.shape[1]):
        raise RuntimeError(f"{node}: calibrated ints {q.shape} / scales {scale.shape} do not fit the weight {w.shape}")
    return q, scale.astype(w.dtype).astype(scale_dtype)


def _as_held(w: np.ndarray, held, node: str) -> np.ndarray:
    """W [K, N] in the dtype the model holds it in; it must be an exact upcast of that (a folded Cast)."""
    back = w.astype(held)
    if not np.array_equal(back.astype(w.dtype), w):
        raise RuntimeError(f"{node}: its {w.dtype} weight is not the model's {np.dtype(held)} weight cast up; "
                           "the graph and the PyTorch reference would quantize different weights")
    return back


def graph_float_dtype(graph):
    """The numpy float dtype of `graph`'s first float input (inputs_embeds): the dtype of the model's weights."""
    from onnx import TensorProto

    for value in graph.input:
        elem = value.type.tensor_type.elem_type
        if elem in (TensorProto.FLOAT16, TensorProto.FLOAT):
            return np.float16 if elem == TensorProto.FLOAT16 else np.float32
    return None


def dequantize_weight(q: np.ndarray, scale: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """W' [K, N] float32 as DequantizeLinear computes it (q * scale, in the scale's dtype)."""
    if bits == 4:
        full = np.repeat(scale, block_size, axis=0)                                            # [K, N]
    else:
        full = scale[None, :]                                                                  # [1, N]
    return (q.astype(scale.dtype) * full).astype(np.float32)


def check_widths(thinker_config: dict, cfg: QuantConfig) -> None:
    """Before exporting anything: int4's block size must divide every linear layer's K (one line if not)."""
    from omnisift_edge.model.shape import ThinkerShape, decoder_linear_shapes

    if cfg.bits != 4:
        return
    text = ThinkerShape.from_config(thinker_config).text
    widths = sorted({k for k, _ in decoder_linear_shapes(text)} | ({text.hidden} if cfg.lm_head else set()))
    bad = [k for k in widths if k % cfg.block_size]
    if bad:
        raise UsageError(f"int4 block size {cfg.block_size} does not divide the layer width {bad[0]}; "
                         f"pass a --block-size that divides {', '.join(map(str, widths))} (e.g. {_divisor_hint(bad[0])})")


def _divisor_hint(k: int) -> int:
    return next((b for b in (128, 64, 32, 16) if k % b == 0), 16)


def quantize_model(model, cfg: QuantConfig, *, logits: str = "logits", ints: dict | None = None) -> QuantReport:
    """Rewrite `model` (an onnx ModelProto with its weights loaded) in place; see the module docstring.
    `ints`: the calibrated int4 weights per module path (`layer_ints`), else RTN."""
    onnx = require("onnx", extra="export")
    from onnx import helper, numpy_helper, version_converter

    if cfg.bits == 4:
        require("ml_dtypes", extra="export")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < QDQ_OPSET:
        _convert_without_weights(model, version_converter)   # e.g. ReduceMean's axes move to an input
    model.ir_version = max(model.ir_version, INT4_IR_VERSION)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    head, held = _lm_head_matmul(graph, logits), graph_float_dtype(graph)
    layers, kept, new_nodes, before, after = [], [], [], 0, 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        if len(init.dims) != 2 or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        if node.name == head and not cfg.lm_head:
            kept.append(node.name)
            continue
        if consumers[init.name] != 1:
            raise RuntimeError(f"weight {init.name} feeds {consumers[init.name]} nodes; the pass expects one MatMul each")
        w = numpy_helper.to_array(init)                                                         # [K, N]
        q, scale = layer_ints(w, cfg, node.name, ints, held)                                    # [K, N], [K/B, N] | [N]
        base = init.name
        q_tensor = _int_tensor(q, cfg.bits, f"{base}_q")
        s_tensor = numpy_helper.from_array(scale, f"{base}_scale")
        attrs = {"axis": 0, "block_size": cfg.block_size} if cfg.bits == 4 else {"axis": 1}
        new_nodes.append(helper.make_node("DequantizeLinear", [q_tensor.name, s_tensor.name], [f"{base}_dq"],
                                          name=f"{node.name}/DequantizeLinear", **attrs))
        graph.initializer.remove(init)
        graph.initializer.extend([q_tensor, s_tensor])
        node.input[1] = f"{base}_dq"
        before += w.nbytes
        after += q.size * cfg.bits // 8 + scale.nbytes
        layers.append(QuantizedLayer(node.name, base, tuple(w.shape)))
    if not layers:
        raise UsageError("the decoder graph has no MatMul with a 2-D float weight to quantize; "
                         "is this an exported decoder.onnx?")
    for i, dq in enumerate(new_nodes):   # DQ nodes read only initializers: put them first (topological order)
        graph.node.insert(i, dq)
    return QuantReport(cfg, tuple(layers), before, after, tuple(kept), ints)


def _convert_without_weights(model, version_converter) -> None:
    """Move `model` to opset QDQ_OPSET in place. The converter serializes the model (a 2 GB protobuf
    limit), so the initializers' bytes are set aside while it runs and put back by name after."""
    from onnx import TensorProto

    stash = {}
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) > 1024:
            stash[t.name] = t.raw_data
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            entry = t.external_data.add()
            entry.key, entry.value = "location", "set-aside"
    converted = version_converter.convert_version(model, QDQ_OPSET)
    for t in converted.graph.initializer:
        if t.name in stash:
            del t.external_data[:]
            t.data_location = TensorProto.DEFAULT
            t.raw_data = stash.pop(t.name)
    if stash:
        raise RuntimeError(f"the opset converter dropped initializers: {sorted(stash)[:3]}")
    model.CopyFrom(converted)


def _lm_head_matmul(graph, logits: str) -> str | None:
    """The MatMul node whose output reaches `logits` through shape-only ops (the LM head), if any."""
    producer = {o: n for n in graph.node for o in n.output}
    name, hops = logits, 0
    while name in producer and hops < 8:
        node = producer[name]
        if node.op_type == "MatMul":
            return node.name
        name, hops = node.input[0], hops + 1
    return None


def _int_tensor(q: np.ndarray, bits: int, name: str):
    from onnx import numpy_helper

    if bits == 4:
        import ml_dtypes

        return numpy_helper.from_array(q.astype(ml_dtypes.int4), name)   # packed two per byte
    return numpy_helper.from_array(q, name)


def quantize_decoder(src: Path, dst: Path, cfg: QuantConfig, *, metadata: dict[str, str] | None = None,
                     ints: dict | None = None) -> QuantReport:
    """Quantize the decoder graph at `src` into `dst` (may be the same path); files appear whole.

    External data (graphs over 2 GB) goes to `<dst>.data`, written before the graph that names it.
    """
    onnx = require("onnx", extra="export")
    from omnisift_edge.export.decoder.trace import set_metadata
    from omnisift_edge.export.onnx_io import staged_graph, write_graph

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    report = quantize_model(model, cfg, ints=ints)
    meta = {"weights": cfg.weights, "weights_form": FORM, "opset": str(QDQ_OPSET),
            **({"block_size": str(cfg.block_size)} if cfg.bits == 4 else {}), **(metadata or {})}
    set_metadata(model, meta)
    with staged_graph(dst) as staged:     # a float graph's data file that is no longer named goes
        write_graph(model, staged, external_data=model.ByteSize() >= EMBED_LIMIT)
    return report


@contextlib.contextmanager
def dequantized_weights(thinker, report: QuantReport):
    """Swap the thinker's quantized Linear weights for W'^T while inside; restored on exit.

    Maps a MatMul node name (/model/layers.0/mlp/up_proj/MatMul) to its module (model.layers.0.mlp.up_proj)
    and recomputes W' from that module's weight with the same RTN (deterministic; one layer at a
    time, so a 7B needs no second copy), or takes the calibrated ints the graph was written with
    (`layer_ints`): if the graph's weight was not that module's, the ORT-vs-PyTorch check that follows fails.
    """
    torch = require("torch")
    _NUMPY.update({torch.float32: np.float32, torch.float16: np.float16})
    saved = []
    try:
        with torch.no_grad():
            for layer in report.layers:
                module = thinker.get_submodule(_module_path(layer.node))
                weight = module.weight                                                           # [N, K]
                if tuple(weight.shape[::-1]) != layer.shape:
                    raise RuntimeError(f"{layer.node}: graph weight {layer.shape} is not {_module_path(layer.node)}'s "
                                       f"{tuple(weight.shape)} transposed")
                w = weight.detach().float().cpu().numpy().T.astype(_NUMPY[weight.dtype])           # [K, N]
                q, scale = layer_ints(w, report.config, layer.node, report.ints)
                back = dequantize_weight(q, scale, report.config.bits, report.config.block_size)  # [K, N]
                new = torch.from_numpy(np.ascontiguousarray(back.T)).to(weight.device, weight.dtype)  # [N, K]
                saved.append((weight, weight.detach().clone()))
                weight.copy_(new)
        yield thinker
    finally:
        with torch.no_grad():
            for weight, old in saved:
                weight.copy_(old)


_NUMPY: dict = {}   # torch dtype -> the numpy dtype the graph held that weight in (filled lazily: no torch import)


def _module_path(node: str) -> str:
    parts = [p for p in node.split("/") if p]
    if len(parts) < 2:
        raise RuntimeError(f"cannot map MatMul node {node!r} to a torch module (expected /module/path/MatMul)")
    return ".".join(parts[:-1])


def backend_graphs(file: str) -> dict:
    """Which graph file each backend uses: one Q/DQ graph serves both (measured, docs/quantization.md).

    ONNX Runtime's CPU provider fuses each int4/int8 DequantizeLinear + MatMul pair into its
    MatMulNBits kernel when the session is created, so a separate MatMulNBits graph would only
    duplicate the weights on disk; TensorRT-RTX (and TensorRT >= 10.6) take the Q/DQ form as is and
    cannot parse MatMulNBits (no plugin shipped).
    """
    return {"onnxruntime": file, "tensorrt": file,
            "onnxruntime_executes_as": "com.microsoft.MatMulNBits (DQ + MatMul fused at session creation)"}
