"""Which decoder form a build gets, and how the in-place form is parsed.

An export holds two TensorRT decoder forms (the manifest's `kv_cache`): `decoder` (past in, present
out: every TensorRT; the runtime copies the presents back into its cache on the device) and
`decoder_scatter` (ONNX TensorScatter, opset 24: TensorRT's ONNX parser makes each one an
IKVCacheUpdateLayer whose output aliases the cache input, so a call writes only its new rows). The
second needs the KVCacheUpdate layer: TensorRT-RTX (1.7 builds it on this CPU) and TensorRT >= 10.15.
JetPack 6 ships TensorRT 10.3, so Jetson builds keep the past/present fallback. A build holds one of
the two, never both.

A weight-only int8/int4 export adds a third: `decoder_trt10` (export/decoder/trt_int4.py), the past/present
decoder with TensorRT's own INT4 node at opset 17, for TensorRT 10.0-10.5, whose parsers cannot read
the opset-21 Q/DQ `decoder`. It has `decoder`'s inputs and outputs and is built as the `decoder` engine.

TensorRT refuses a KV cache whose sequence axis is dynamic in the network ("The KV cache tensor must
have a static sequence length dimension", TensorRT-RTX 1.7), while the ONNX graph keeps
`cache_length` dynamic so one export serves any `--max-context`. So the build parses a copy of the
graph proto with the cache axis (and the batch) fixed at the build's sizes, serialized in memory;
the external data is read from beside the original file (`OnnxParser.parse(bytes, path)`), never copied.
"""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.artifact.manifest import DECODER, DECODER_TRT10, GraphInfo, Manifest, as_manifest
from omnisift_edge.engines.profiles import SCATTER

FALLBACK = DECODER
TRT10 = DECODER_TRT10                    # export/decoder/trt_int4.GRAPH: quantized past/present form before opset 21
QDQ_TENSORRT = (10, 6)                   # the first TensorRT that parses the opset-21 Q/DQ decoder
TRT_INT4_TENSORRT = (10, 0)              # the first TensorRT that imports TRT_INT4DequantizeLinear
KV_CACHE_UPDATE_TENSORRT = (10, 15)      # the first TensorRT with IKVCacheUpdateLayer and its ONNX TensorScatter import


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(".")[:2])
    except ValueError:
        return (0,)


def decoder_form(manifest: Manifest, flavour: str, tensorrt: str) -> tuple[str, str]:
    """(graph, why): `decoder_scatter` where this TensorRT has KVCacheUpdate and the export has the graph,
    `decoder_trt10` for a quantized export on TensorRT 10.0-10.5, else `decoder`."""
    need = ".".join(map(str, KV_CACHE_UPDATE_TENSORRT))
    manifest = as_manifest(manifest)
    if flavour != "tensorrt_rtx" and trt10_form_applies(manifest, tensorrt):
        return TRT10, (f"past/present with TensorRT's INT4 node at opset 17: TensorRT {tensorrt} parses neither the "
                       "opset-21 Q/DQ decoder (needs >= 10.6) nor KVCacheUpdate (needs >= "
                       f"{need}); the runtime copies the presents back into its cache on the device")
    if SCATTER not in manifest.kv_cache:
        return FALLBACK, ("past/present: this export has no decoder_scatter (made before the in-place TensorRT form); "
                          "export again for an in-place KV cache")
    if flavour == "tensorrt_rtx":
        return SCATTER, "in place: TensorRT-RTX has the KVCacheUpdate layer (present aliases past, no copy per call)"
    if _version(tensorrt) >= KV_CACHE_UPDATE_TENSORRT:
        return SCATTER, f"in place: TensorRT {tensorrt} >= {need} has the KVCacheUpdate layer (present aliases past)"
    return FALLBACK, (f"past/present: TensorRT {tensorrt} has no KVCacheUpdate layer (needs >= {need}; JetPack 6 "
                      "ships 10.3); the runtime copies the presents back into its cache on the device")


def trt10_form_applies(manifest: Manifest, tensorrt: str) -> bool:
    """A quantized (Q/DQ) export with a `decoder_trt10` form, on a TensorRT 10.0-10.5."""
    manifest = as_manifest(manifest)
    quantized = manifest.weights is not None and manifest.weights.form == "qdq"
    return quantized and TRT10 in manifest.kv_cache and TRT_INT4_TENSORRT <= _version(tensorrt) < QDQ_TENSORRT


def build_graphs(manifest: Manifest, form: str, max_streams: int = 1) -> dict[str, GraphInfo]:
    """graph -> manifest entry of everything a build holds: `graphs`, with `decoder` swapped for `form`
    (`decoder_trt10` keeps the engine name `decoder`: same inputs and outputs, other weight nodes); the
    batched encoders and compressors (artifact/tensors.py BATCH_FORMS) only for a stream pool (`max_streams` > 1)."""
    from omnisift_edge.artifact.tensors import is_batch_form
    from omnisift_edge.engines.profiles import graph_entry

    manifest = as_manifest(manifest)
    graphs = [graph for graph in manifest.graphs if max_streams > 1 or not is_batch_form(graph)]
    if form == TRT10:
        return {graph: graph_entry(manifest, TRT10 if graph == FALLBACK else graph) for graph in graphs}
    return {(form if graph == FALLBACK else graph): graph_entry(manifest, form if graph == FALLBACK else graph)
            for graph in graphs}


def static_sizes(graph: str, max_context: int, max_streams: int = 1) -> dict[str, int]:
    """Axes fixed in the network before parsing: the static cache of the in-place form (none for others),
    and its batch of 1 unless a stream pool's batched decode needs 1 .. `max_streams` (then a profile axis:
    TensorRT-RTX 1.7 builds KVCacheUpdate with a dynamic batch and per-row write indices, checked)."""
    if graph != SCATTER:
        return {}
    return {**({"batch_size": 1} if max_streams == 1 else {}), "cache_length": int(max_context)}


def parse_static(trt, polygraphy_trt, onnx_path: Path, strongly_typed: bool, sizes: dict[str, int]):
    """(builder, network, parser) of `onnx_path` with the axes in `sizes` fixed (Polygraphy's network tuple)."""
    import onnx
    from polygraphy.backend.trt import util as trt_util
    from polygraphy.exception import PolygraphyException

    model = onnx.load(str(onnx_path), load_external_data=False)         # the graph; weights stay where they are
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in sizes:
                size = sizes[dim.dim_param]
                dim.Clear()
                dim.dim_value = size
    builder, network = polygraphy_trt.create_network(strongly_typed=strongly_typed)
    parser = trt.OnnxParser(network, trt_util.get_trt_logger())
    ok = parser.parse(model.SerializeToString(), str(onnx_path))       # path: where the external data lies
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PolygraphyException(f"the ONNX parser could not parse {onnx_path.name}: {errors}")
    return builder, network, parser


def kv_cache_updates(trt, network) -> list[dict]:
    """The network's KV_CACHE_UPDATE layers: which network input each updates and which output it becomes."""
    found = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == getattr(trt.LayerType, "KV_CACHE_UPDATE", None):
            found.append({"layer": layer.name, "cache": layer.get_input(0).name, "output": layer.get_output(0).name})
    return found


def shape_inputs(network) -> set[str]:
    """Network inputs TensorRT takes as shape tensors (host memory; their profile gives value ranges)."""
    return {network.get_input(i).name for i in range(network.num_inputs) if network.get_input(i).is_shape_tensor}
