"""What the TensorRT 10.3 ONNX parser accepts, as data, plus the table's restrictions as checks.

Source: onnx/onnx-tensorrt `docs/operators.md` (the parser's own support matrix). No stored copy of
the 10.3-GA file was available, so the 10.3 table is derived, not copied:

* start from the 10.6-GA table (onnx-tensorrt commit 0137504e2b25fe5253bd85d26b073378fb67805b);
* remove what `docs/Changelog.md` says arrived after 10.3: `BlackmanWindow`, `HammingWindow`,
  `HannWindow` and tensor `axes` for `Pad` (10.4), `STFT` (10.5); 10.6 only added plugin kinds;
* opset range 9..20: the 10.0 table says "opset 9 to opset 20" and the first header that raises it
  (to 22) is 10.6, which moved the parser's ONNX submodule to 1.17; 20 is the conservative bound;
* TopK, Squeeze, Unsqueeze behaviour cross-checked against the 10.6 importer source
  (`onnxOpImporters.cpp`, same commit): K may be a runtime tensor (since 8.6), `largest=0` maps to
  TopKOperation::kMIN, `sorted` is never read (output is always sorted);
* plugin names from NVIDIA/TensorRT `plugin/README.md` (10.x); details and limits in docs/lint.md.

Checks take a node and a graph view with `attr(node, name, default)`, `const(name)` (an initializer
or a `Constant` output as a numpy array, else None: what the parser calls "weights") and
`elem_type(name)` (ONNX dtype int or None); they yield (severity, message) pairs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

TRT_VERSION = "10.3"
OPSET_MIN, OPSET_MAX = 9, 20
IR_VERSION_MAX = 10           # ONNX 1.16, current at 10.3 (torch's dynamo exporter writes IR 10 at opset 20)
TOPK_MAX_K = 3840             # ITopKLayer limit in TensorRT 10.x
PROTOBUF_LIMIT_BYTES = 2**31  # one protobuf message (the .onnx file) cannot exceed 2 GB

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# listed "N" in the table (for the message; anything not in SUPPORTED_OPS is an error anyway)
UNSUPPORTED_OPS = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad
Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger
MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer
Unique
""".split())

# supported by a later TensorRT than 10.3 (Changelog / later tables)
ADDED_LATER = {"BlackmanWindow": "10.4", "HammingWindow": "10.4", "HannWindow": "10.4",
               "STFT": "10.5", "Attention": "10.x after 10.6", "RMSNormalization": "10.15",
               "RotaryEmbedding": "10.15", "TensorScatter": "10.15"}

# weight-only forms of the decoder's linear layers (export --weights int8|int4) and what builds them;
# measured/probed 2026-12-02, docs/quantization.md. The Q/DQ form needs opset 21 (int4 tensors,
# DequantizeLinear block_size): outside 10.3's opset range; TensorRT's parser takes opset 21 from
# 10.6 (see OPSET_MAX above) and TensorRT-RTX 1.7 builds it. MatMulNBits parses in neither TensorRT
# (plugin not shipped); ONNX Runtime's CPU provider fuses the Q/DQ form into MatMulNBits itself.
WEIGHT_FORMS = {
    "qdq": {"opset": 21, "onnxruntime": True, "tensorrt_min": "10.6", "tensorrt_rtx": True},
    "matmulnbits": {"opset": None, "onnxruntime": True, "tensorrt_min": None, "tensorrt_rtx": False},
    # TensorRT's own INT4 weight node at opset 17 (export/decoder/trt_int4.py): what TensorRT 10.0-10.5 build
    "trt_int4": {"opset": 17, "onnxruntime": False, "tensorrt_min": "10.0", "tensorrt_rtx": True},
}

# TensorRT's INT4 Q/DQ nodes (onnx-tensorrt onnxOpImporters.cpp, 10.0 GA on; any domain): an INT4
# initializer, scales whose shape gives the block along one axis, zero point zero, even last dimension
TRT_INT4_OPS = frozenset({"TRT_INT4DequantizeLinear", "TRT_INT4QuantizeLinear"})


def trt_int4_check(node, g, opset: int) -> Iterator[Issue]:
    """What the parser needs of a TRT_INT4DequantizeLinear over a weight (the form export writes)."""
    q, scale = g.const(_input(node, 0)), g.const(_input(node, 1))
    if node.op_type == "TRT_INT4DequantizeLinear" and g.elem_type(_input(node, 0)) not in (None, 22):
        yield ("error", f"{node.op_type} input must be an INT4 initializer (got {dtype_name(g.elem_type(_input(node, 0)))})")
    if len(node.input) > 2 and node.input[2]:
        zero = g.const(node.input[2])
        if zero is None or zero.any():
            yield ("error", f"{node.op_type} zero point must be a constant 0 (symmetric INT4 only)")
    if q is not None and scale is not None:
        if q.ndim != scale.ndim or any(a % b for a, b in zip(q.shape, scale.shape)) or \
                sum(a != b for a, b in zip(q.shape, scale.shape)) > 1:
            yield ("error", f"{node.op_type} scale shape {list(scale.shape)} must match the weight {list(q.shape)} "
                   "but on one blocked axis, whose size it divides")
        if q.shape[-1] % 2:
            yield ("error", f"{node.op_type} weight's last dimension {q.shape[-1]} must be even (INT4 packs two a byte)")

# data-dependent output shapes: forbidden in our static per-chunk engines (docs/architecture.md)
DATA_DEPENDENT_OPS = frozenset({"NonZero", "Unique", "NonMaxSuppression", "Compress"})
CONTROL_FLOW_OPS = frozenset({"Loop", "If", "Scan"})

# creator names in libnvinfer_plugin (NVIDIA/TensorRT plugin/README.md); the parser falls back to
# the plugin registry for an op_type it has no importer for, whatever the node's domain
TRT_PLUGINS = frozenset("""
BatchTilePlugin_TRT BatchedNMS_TRT BatchedNMSDynamic_TRT CustomQKVToContextPluginDynamic Clip_TRT
CoordConvAC CropAndResize CropAndResizeDynamic DecodeBbox3DPlugin DetectionLayer_TRT
DisentangledAttention_TRT EfficientNMS_TRT EfficientNMS_ONNX_TRT CustomEmbLayerNormPluginDynamic
CustomFCPluginDynamic FlattenConcat_TRT CustomGeluPluginDynamic GenerateDetection_TRT
GridAnchor_TRT GridAnchorRect_TRT GroupNormalizationPlugin InstanceNormalization_TRT LReLU_TRT
ModulatedDeformConv2d MultilevelCropAndResize_TRT MultilevelProposeROI_TRT
MultiscaleDeformableAttnPlugin_TRT NMS_TRT NMSDynamic_TRT Normalize_TRT RPROI_TRT
PillarScatterPlugin PriorBox_TRT ProposalLayer_TRT Proposal ProposalDynamic PyramidROIAlign_TRT
Region_TRT Reorg_TRT ROIAlign_TRT ResizeNearest_TRT ScatterElements ScatterND
CustomSkipLayerNormPluginDynamic SpecialSlice_TRT Split VoxelGeneratorPlugin
""".split())

# ONNX TensorProto data types TensorRT 10.3 has (DOUBLE is down-cast with clamping, never kept)
DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32",
               13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
               17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
               21: "uint4", 22: "int4", 23: "float4e2m1"}
SUPPORTED_DTYPES = frozenset({1, 2, 3, 6, 7, 9, 10, 16, 17, 22})
CAST_TO_DTYPES = frozenset({1, 2, 6, 7, 9, 10, 16})   # the Cast row: FP32 FP16 BF16 INT32 INT64 UINT8 BOOL
FLOAT_DTYPES = frozenset({1, 10, 16})

RESIZE_COORD_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                "asymmetric", "align_corners"})
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
PAD_MODES = frozenset({"constant", "reflect", "edge", "wrap"})

Issue = tuple[str, str]   # (severity, message)
FOLD = "fold it to a constant (polygraphy surgeon sanitize --fold-constants) or export it as a Python int"


def dtype_name(dtype: int) -> str:
    return DTYPE_NAMES.get(dtype, f"dtype {dtype}")


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _topk(node, g, opset: int) -> Iterator[Issue]:
    if opset < 10:
        k = g.attr(node, "k", None)
    else:
        value = g.const(_input(node, 1))
        if value is None:
            yield ("error", "TopK K is a runtime tensor: TensorRT 10.3 then checks K <= 3840 only at run "
                   "time and the output shape depends on data, and the per-chunk engines need K fixed per "
                   f"engine; {FOLD} (torch.topk(x, k=<int>))")
            k = None
        else:
            k = int(value.reshape(-1)[0])
    if k is not None and not 1 <= k <= TOPK_MAX_K:
        yield ("error", f"TopK K={k} is outside [1, {TOPK_MAX_K}], the TensorRT 10.x ITopKLayer limit; "
               f"keep K <= {TOPK_MAX_K} (split the selection into chunks or rank by comparison)")
    if g.attr(node, "sorted", 1) == 0:
        yield ("warning", "TopK sorted=0: operators.md says `sorted` must be 1 and the 10.x importer "
               "ignores the attribute (its output is always sorted, largest or smallest first); "
               "export torch.topk(..., sorted=True) so ONNX Runtime and TensorRT agree on order")


def _resize(node, g, opset: int) -> Iterator[Issue]:
    mode = g.attr(node, "mode", "nearest")
    coord = g.attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = g.attr(node, "nearest_mode", "round_prefer_floor")
    if mode not in RESIZE_MODES:
        yield ("error", f"Resize mode={mode!r} is unsupported; use one of {sorted(RESIZE_MODES)}")
    if coord not in RESIZE_COORD_MODES:
        yield ("error", f"Resize coordinate_transformation_mode={coord!r} is unsupported; use one of "
               f"{sorted(RESIZE_COORD_MODES)}")
    if mode == "nearest" and nearest not in RESIZE_NEAREST_MODES:
        yield ("error", f"Resize nearest_mode={nearest!r} is unsupported; use one of "
               f"{sorted(RESIZE_NEAREST_MODES)}")
    if g.attr(node, "antialias", 0):
        yield ("error", "Resize antialias=1 is unsupported; export with antialias=False")
    if g.attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        yield ("error", "Resize keep_aspect_ratio_policy must be 'stretch'; pass explicit sizes")
    axes = g.attr(node, "axes", None)
    if axes and list(axes) != list(range(len(axes))) and g.const(_input(node, 2)) is None:
        yield ("error", "Resize with tensor scales needs `axes` to be 0..rank-1; drop `axes`")


def _einsum(node, g, opset: int) -> Iterator[Issue]:
    equation = g.attr(node, "equation", "")
    if any(c.isupper() for c in equation):
        yield ("error", f"Einsum equation {equation!r} uses upper-case subscripts; IEinsumLayer takes "
               "ASCII lower-case letters only: rename them")
    types = {g.elem_type(name) for name in node.input if name}
    if types - FLOAT_DTYPES - {None}:
        yield ("error", "Einsum on non-float inputs is unsupported (IEinsumLayer: float32/16, bfloat16); "
               "cast to float first or use MatMul")


def _cast(node, g, opset: int) -> Iterator[Issue]:
    to = g.attr(node, "to", None) if node.op_type == "Cast" else g.elem_type(_input(node, 1))
    if to is not None and to not in CAST_TO_DTYPES:
        yield ("error", f"{node.op_type} to {dtype_name(to)} is unsupported; TensorRT casts to "
               f"{', '.join(dtype_name(t) for t in sorted(CAST_TO_DTYPES))} only")


def _pad(node, g, opset: int) -> Iterator[Issue]:
    if g.attr(node, "mode", "constant") not in PAD_MODES:
        yield ("error", f"Pad mode must be one of {sorted(PAD_MODES)}")
    if _input(node, 3) and g.const(_input(node, 3)) is None:
        yield ("error", f"Pad `axes` is a runtime tensor: tensor axes arrived in TensorRT 10.4; {FOLD}")


def _const_input(index: int, what: str, since: int = 0) -> Callable[..., Iterator[Issue]]:
    def check(node, g, opset: int) -> Iterator[Issue]:
        name = _input(node, index)
        if opset >= since and name and g.const(name) is None:
            yield ("error", f"{node.op_type} `{what}` must be an initializer or Constant in TensorRT "
                   f"{TRT_VERSION}; {FOLD}")
    return check


def _squeeze(node, g, opset: int) -> Iterator[Issue]:
    yield from _const_input(1, "axes", since=13)(node, g, opset)
    if opset >= 13 and not _input(node, 1) or opset < 13 and g.attr(node, "axes", None) is None:
        yield ("warning", "Squeeze without axes: TensorRT 10.3 can infer them only from a fully static "
               "input shape; pass the axes explicitly")


def _dropout(node, g, opset: int) -> Iterator[Issue]:
    name = _input(node, 2)
    value = g.const(name) if name else None
    if name and (value is None or bool(value.reshape(-1)[0])):
        yield ("error", "Dropout `training_mode` must be a constant False; export in eval() mode")


def _layernorm(node, g, opset: int) -> Iterator[Issue]:
    if any(node.output[1:]):
        yield ("error", "LayerNormalization: only the first output Y is supported; drop Mean/InvStdDev")


def _pool(node, g, opset: int) -> Iterator[Issue]:
    if any(d != 1 for d in g.attr(node, "dilations", []) or []):
        yield ("error", f"{node.op_type} `dilations` must be empty or all ones")
    if node.op_type == "MaxPool" and any(node.output[1:]):
        yield ("error", "MaxPool `Indices` output is unsupported; do not request the indices")


def _attr_equals(attr: str, allowed: Any, why: str) -> Callable[..., Iterator[Issue]]:
    def check(node, g, opset: int) -> Iterator[Issue]:
        value = g.attr(node, attr, allowed)
        if value != allowed:
            yield ("error", f"{node.op_type} {attr}={value!r} is unsupported; {why}")
    return check


def _zero_point(index: int) -> Callable[..., Iterator[Issue]]:
    def check(node, g, opset: int) -> Iterator[Issue]:
        value = g.const(_input(node, index))
        if value is not None and value.any():
            yield ("error", f"{node.op_type} zero point must be 0 (symmetric quantization only)")
    return check


def _constant(node, g, opset: int) -> Iterator[Issue]:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    if bad:
        yield ("error", f"Constant `{bad[0]}` is unsupported; use a dense numeric `value`")


def _lstm(node, g, opset: int) -> Iterator[Issue]:
    for attr in ("input_forget", "layout"):
        if g.attr(node, attr, 0) != 0:
            yield ("error", f"LSTM {attr} must be 0")


_REDUCE = [f"Reduce{r}" for r in ("L1 L2 LogSum LogSumExp Max Mean Min Prod Sum SumSquare".split())]

RESTRICTIONS: dict[str, Callable[..., Iterable[Issue]]] = {
    "TopK": _topk, "Resize": _resize, "Einsum": _einsum, "Cast": _cast, "CastLike": _cast,
    "Pad": _pad, "Squeeze": _squeeze, "Unsqueeze": _const_input(1, "axes", since=13),
    "CumSum": _const_input(1, "axis"), "OneHot": _const_input(1, "depth"),
    "Dropout": _dropout, "LayerNormalization": _layernorm, "MaxPool": _pool, "AveragePool": _pool,
    "LpPool": _pool, "Constant": _constant, "LSTM": _lstm,
    "ScatterND": _attr_equals("reduction", "none", "use reduction='none' (plain assignment)"),
    "QuantizeLinear": _zero_point(2), "DequantizeLinear": _zero_point(2),
    **{op: _const_input(1, "axes", since=18 if op != "ReduceSum" else 13) for op in _REDUCE},
}
