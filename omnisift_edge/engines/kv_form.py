"""Which decoder form a build gets, and how the in-place form is parsed.

An export holds two TensorRT decoder forms (the manifest's `kv_cache`): `decoder` (past in, present
out: every TensorRT; the runtime copies the presents back into its cache on the device) and
`decoder_scatter` (ONNX TensorScatter, opset 24: TensorRT's ONNX parser makes each one an
IKVCacheUpdateLayer whose output aliases the cache input, so a call writes only its new rows). The
second needs the KVCacheUpdate layer: TensorRT-RTX (1.7 builds it on this CPU) and TensorRT >= 10.15.
JetPack 6 ships TensorRT 10.3, so Jetson builds keep the past/present fallback. A build holds one of
the two, never both.

TensorRT refuses a KV cache whose sequence axis is dynamic in the network ("The KV cache tensor must
have a static sequence length dimension", TensorRT-RTX 1.7), while the ONNX graph keeps
`cache_length` dynamic so one export serves any `--max-context`. So the build parses a copy of the
graph proto with the cache axis (and the batch) fixed at the build's sizes, serialized in memory;
the external data is read from beside the original file (`OnnxParser.parse(bytes, path)`), never copied.
"""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.artifact.manifest import DECODER, GraphInfo, Manifest, as_manifest
from omnisift_edge.engines.profiles import SCATTER

FALLBACK = DECODER
KV_CACHE_UPDATE_TENSORRT = (10, 15)      # the first TensorRT with IKVCacheUpdateLayer and its ONNX TensorScatter import


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(".")[:2])
    except ValueError:
        return (0,)


def decoder_form(manifest: Manifest, flavour: str, tensorrt: str) -> tuple[str, str]:
    """(graph, why): `decoder_scatter` where this TensorRT has KVCacheUpdate and the export has the graph,
    else `decoder`."""
    need = ".".join(map(str, KV_CACHE_UPDATE_TENSORRT))
    if SCATTER not in as_manifest(manifest).kv_cache:
        return FALLBACK, ("past/present: this export has no decoder_scatter (made before the in-place TensorRT form); "
                          "export again for an in-place KV cache")
    if flavour == "tensorrt_rtx":
        return SCATTER, "in place: TensorRT-RTX has the KVCacheUpdate layer (present aliases past, no copy per call)"
    if _version(tensorrt) >= KV_CACHE_UPDATE_TENSORRT:
        return SCATTER, f"in place: TensorRT {tensorrt} >= {need} has the KVCacheUpdate layer (present aliases past)"
    return FALLBACK, (f"past/present: TensorRT {tensorrt} has no KVCacheUpdate layer (needs >= {need}; JetPack 6 "
                      "ships 10.3); the runtime copies the presents back into its cache on the device")


def build_graphs(manifest: Manifest, form: str) -> dict[str, GraphInfo]:
    """graph -> manifest entry of everything a build holds: `graphs`, with `decoder` swapped for `form`."""
    from omnisift_edge.engines.profiles import graph_entry

    return {(form if graph == FALLBACK else graph): graph_entry(manifest, form if graph == FALLBACK else graph)
            for graph in as_manifest(manifest).graphs}


def static_sizes(graph: str, max_context: int) -> dict[str, int]:
    """Axes fixed in the network before parsing: the static cache of the in-place form (none for others)."""
    return {"batch_size": 1, "cache_length": int(max_context)} if graph == SCATTER else {}


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
