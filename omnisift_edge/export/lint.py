"""Lint ONNX graphs against what the TensorRT 10.3 ONNX parser (JetPack 6) accepts, without TensorRT.

    findings = lint_model("artifacts/compressor.onnx")      # -> list[Finding]
    by_graph = lint_folder("artifacts/")                     # -> {"compressor": [...], ...}
    print(format_findings(by_graph)); sys.exit(has_errors(by_graph))

Checks (table and sources in `trt_ops.py`, the why in docs/lint.md): every op is one the 10.3 parser
imports (other domains only as TensorRT plugins), the operator table's restrictions (TopK K
constant and <= 3840, Resize modes, constant axes, ...), no data-dependent-shape ops (NonZero,
Unique, NonMaxSuppression, Compress: errors) and no control flow (Loop/If/Scan: warnings), tensor
dtypes TensorRT has, graph inputs whose dynamic dims are named in `DYNAMIC_AXES`, embedded weights
under the 2 GB protobuf limit, external data files present, and an opset the parser handles.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.export import trt_ops
from omnisift_edge.artifact.tensors import DYNAMIC_AXES, decoder_gqa_graph, decoder_scatter_graph

DEFAULT_DOMAINS = ("", "ai.onnx")
_EXTERNAL = 1   # onnx.TensorProto.EXTERNAL


@dataclass(frozen=True)
class Finding:
    severity: str   # "error": TensorRT 10.3 will reject it (or our static per-chunk design forbids it); "warning": builds, but check
    graph: str      # graph name (the file's stem for a path)
    node: str       # node name, or the tensor/input name the finding is about ("" for the model)
    op_type: str    # "" when not about a node
    message: str    # what is wrong and how to fix it

    def __str__(self) -> str:
        where = f"{self.graph}/{self.node}" if self.node else self.graph
        return f"{self.severity}: {where}" + (f" [{self.op_type}]" if self.op_type else "") + f": {self.message}"


Findings = Union[Iterable[Finding], Mapping[str, Iterable[Finding]]]


def _onnx():
    return require("onnx", extra="export")


def _load(path: Path):
    """Load a model's proto (never its external data) or raise a one-line UsageError."""
    onnx = _onnx()
    if not path.exists():
        raise UsageError(f"no such file: {path}; run `omnisift-edge export -o DIR` first or check the path")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; lint one .onnx file, or use lint_folder({str(path)!r})")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"{path} is not an ONNX model ({type(exc).__name__}); "
                         "pass a .onnx file written by torch.onnx.export / onnx.save") from None


def lint_model(path_or_proto: Any, *, graph_name: str | None = None) -> list[Finding]:
    """Lint one model (a path to a .onnx file or an onnx.ModelProto) for TensorRT 10.3."""
    base_dir = None
    if isinstance(path_or_proto, (str, os.PathLike)):
        path = Path(path_or_proto)
        name = graph_name or path.stem
        if path.is_file() and path.stat().st_size >= trt_ops.PROTOBUF_LIMIT_BYTES:
            return [Finding("error", name, "", "", f"{path.name} is {path.stat().st_size / 2**30:.2f} GiB: "
                            "protobuf cannot parse a file over 2 GB; re-save with external data "
                            "(onnx.save(model, path, save_as_external_data=True))")]
        model, base_dir = _load(path), path.parent
    elif hasattr(path_or_proto, "graph") and hasattr(path_or_proto, "opset_import"):
        model = path_or_proto
        name = graph_name or model.graph.name or "model"
    else:
        raise UsageError(f"lint_model takes a .onnx path or an onnx.ModelProto, not "
                         f"{type(path_or_proto).__name__}")
    return _Linter(model, name, base_dir).run()


def lint_folder(folder: str | os.PathLike) -> dict[str, list[Finding]]:
    """Lint every `*.onnx` file in a folder (not recursive) for TensorRT 10.3, but the decoder forms it never
    builds: decoder_gqa (ONNX Runtime only) and decoder_scatter (TensorRT >= 10.15 / TensorRT-RTX); keys are stems."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file; lint takes the export folder that holds it "
                         f"(omnisift-edge lint {folder.parent})")
    if not folder.is_dir():
        raise UsageError(f"no such folder: {folder}; pass the export directory (omnisift-edge export -o DIR)")
    files = sorted(folder.glob("*.onnx"))
    if not files:
        raise UsageError(f"no *.onnx files in {folder}; run `omnisift-edge export -o {folder}` first")
    # GroupQueryAttention: ONNX Runtime's form; TensorScatter (opset 24): built only where KVCacheUpdate exists
    not_for_10_3 = {decoder_gqa_graph(1).name, decoder_scatter_graph(1).name}
    return {p.stem: lint_model(p) for p in files if p.stem not in not_for_10_3}


def lint_export(folder: str | os.PathLike) -> dict[str, list[Finding]]:
    """`lint_folder` for an export: a manifest that is present must be readable and every graph it
    lists present (its `graphs` and the decoder forms in `kv_cache`), and the shared weights file they point into (a UsageError otherwise, so `lint`
    never says "no findings" about a broken export, nor one finding per weight of a missing file)."""
    from omnisift_edge.artifact.manifest import MANIFEST, load_manifest

    folder = Path(folder)
    if (folder / MANIFEST).exists():   # validated, every path inside the folder and covered by the checksums
        manifest = load_manifest(folder, verify=False)
        files = [g.file for g in manifest.graphs.values()]
        files += [k.file for k in manifest.kv_cache.values() if k.file is not None and k.file not in files]
        files += [manifest.shared_weights.file] if manifest.shared_weights is not None else []
        missing = [file for file in files if not (folder / file).is_file()]
        if missing:
            raise UsageError(f"{folder} lacks {', '.join(missing)} listed in its {MANIFEST}; "
                             "copy the whole export folder or export again")
    return lint_folder(folder)


def _flatten(findings: Findings) -> list[Finding]:
    if isinstance(findings, Mapping):
        return [f for group in findings.values() for f in group]
    return list(findings)


def has_errors(findings: Findings) -> bool:
    """True if any finding (a list, or lint_folder's dict) is an error."""
    return any(f.severity == "error" for f in _flatten(findings))


def format_findings(findings_by_graph: Findings) -> str:
    """One line per finding, errors first (`error: graph/node [Op]: message`); a summary if none."""
    findings = _flatten(findings_by_graph)
    if not findings:
        n = len(findings_by_graph) if isinstance(findings_by_graph, Mapping) else 1
        return f"no findings: {n} graph(s) fit TensorRT {trt_ops.TRT_VERSION}"
    findings.sort(key=lambda f: f.severity != "error")
    return "\n".join(str(f) for f in findings)


class _Linter:
    """One pass over a model; `attr`, `const` and `elem_type` are the view trt_ops checks use."""

    def __init__(self, model, graph: str, base_dir: Path | None):
        self.onnx = _onnx()
        self.model, self.graph, self.base_dir = model, graph, base_dir
        self.findings: list[Finding] = []
        self.consts: dict[str, Any] = {}
        self.types: dict[str, int] = {}
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)

    def add(self, severity: str, node: str, op_type: str, message: str) -> None:
        finding = Finding(severity, self.graph, node, op_type, message)
        if finding not in self.findings:
            self.findings.append(finding)

    def run(self) -> list[Finding]:
        self._check_opset()
        self._collect(self.model.graph)
        self._check_inputs(self.model.graph)
        self._check_weights()
        self._check_nodes(self.model.graph.node, prefix="")
        return self.findings

    # ---- the graph view used by trt_ops checks -------------------------------------------------
    def attr(self, node, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                value = self.onnx.helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def const(self, name: str):
        """An initializer or a Constant node's value (what the parser treats as weights), else None."""
        tensor = self.consts.get(name) if name else None
        if tensor is None or getattr(tensor, "data_location", 0) == _EXTERNAL:
            return None
        try:
            return self.onnx.numpy_helper.to_array(tensor)
        except Exception:
            return None

    def elem_type(self, name: str) -> int | None:
        return self.types.get(name)

    # ---- checks ----------------------------------------------------------------------------------
    def _check_opset(self) -> None:
        lo, hi = trt_ops.OPSET_MIN, trt_ops.OPSET_MAX
        if self.opset is None:
            self.add("error", "", "", f"no default-domain opset import; re-export with opset_version={hi}")
        elif self.opset == trt_ops.WEIGHT_FORMS["qdq"]["opset"] and self._weights_form() == "qdq":
            self.add("warning", "", "", f"weight-only {self._meta('weights')} Q/DQ needs opset {self.opset}, outside "
                     f"{lo}..{hi} of the TensorRT {trt_ops.TRT_VERSION} parser (JetPack 6): it builds with "
                     f"TensorRT >= {trt_ops.WEIGHT_FORMS['qdq']['tensorrt_min']} or TensorRT-RTX, and runs in "
                     "ONNX Runtime; for TensorRT 10.3 export --weights fp16")
        elif not lo <= self.opset <= hi:
            self.add("error", "", "", f"opset {self.opset} is outside {lo}..{hi}, what the TensorRT "
                     f"{trt_ops.TRT_VERSION} parser handles; re-export with opset_version={hi} (or convert "
                     f"with onnx.version_converter.convert_version(model, {hi}))")
        if self.model.ir_version > trt_ops.IR_VERSION_MAX:
            self.add("warning", "", "", f"IR version {self.model.ir_version} is newer than the ONNX the "
                     f"parser was built against (IR <= {trt_ops.IR_VERSION_MAX}): onnx-tensorrt warns and "
                     f"ignores fields it does not know; export with opset {hi} from torch <= 2.13")

    def _meta(self, key: str) -> str | None:
        return next((p.value for p in self.model.metadata_props if p.key == f"omnisift_edge.{key}"), None)

    def _weights_form(self) -> str | None:
        """`qdq` for a decoder written by export --weights int8|int4 (its metadata says so)."""
        return self._meta("weights_form")

    def _collect(self, graph) -> None:
        """Constants, dtypes and tensor-dtype findings for a graph and its subgraphs."""
        for t in graph.initializer:
            self.consts[t.name] = t
            self._dtype(t.name, t.data_type, "initializer")
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            kind = vi.type.WhichOneof("value")
            if kind != "tensor_type":
                self.add("error", vi.name, "", f"{vi.name} is a {kind}, not a tensor; TensorRT takes "
                         "tensors only: return/accept plain tensors")
                continue
            self._dtype(vi.name, vi.type.tensor_type.elem_type, "tensor")
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                scalar = next((a for a in node.attribute if a.name.startswith(("value_int", "value_float"))), None)
                if value is None and scalar is not None:
                    dtype = "int64" if "int" in scalar.name else "float32"
                    array = np.asarray(self.onnx.helper.get_attribute_value(scalar), dtype=dtype)
                    value = self.onnx.numpy_helper.from_array(array, node.output[0])
                if value is not None:
                    self.consts[node.output[0]] = value
                    self._dtype(node.output[0], value.data_type, "constant")
            for a in node.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    self._collect(sub)

    def _dtype(self, name: str, dtype: int, kind: str) -> None:
        if not dtype:
            return
        self.types[name] = dtype
        if dtype not in trt_ops.SUPPORTED_DTYPES:
            why = (" (TensorRT has no float64; the parser at best down-casts weights with clamping)"
                   if dtype == 11 else "")
            self.add("error", name, "", f"{kind} {name} is {trt_ops.dtype_name(dtype)}, a type TensorRT "
                     f"{trt_ops.TRT_VERSION} does not have{why}; export it as float32/float16/int64/int32/bool")

    def _check_inputs(self, graph) -> None:
        """Every dynamic input dim must be named in DYNAMIC_AXES so an optimization profile covers it."""
        initializers = {t.name for t in graph.initializer}
        for vi in graph.input:
            if vi.name in initializers or vi.type.WhichOneof("value") != "tensor_type":
                continue
            if not vi.type.tensor_type.HasField("shape"):
                self.add("error", vi.name, "", f"input {vi.name} has no shape (unknown rank); export with "
                         "example inputs so every dim is an int or a named axis")
                continue
            for i, dim in enumerate(vi.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    continue
                if dim.HasField("dim_param") and dim.dim_param:
                    if dim.dim_param not in DYNAMIC_AXES:
                        self.add("error", vi.name, "", f"input {vi.name} dim {i} is named {dim.dim_param!r}, "
                                 f"not one of DYNAMIC_AXES {DYNAMIC_AXES}: no optimization profile covers "
                                 "it; fix it to an int or name it in tensors.py")
                    continue
                self.add("error", vi.name, "", f"input {vi.name} dim {i} is dynamic and unnamed ('?'); "
                         "fix it to an int or give it a DYNAMIC_AXES name via dynamic_axes")

    def _tensor_nbytes(self, t) -> int:
        if t.data_type == 8:
            return sum(len(s) for s in t.string_data)
        try:
            itemsize = self.onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except Exception:
            itemsize = 1
        if t.data_type in (21, 22, 23):   # 4-bit types pack two per byte
            return (math.prod(t.dims) + 1) // 2
        return math.prod(t.dims) * itemsize

    def _check_weights(self) -> None:
        embedded = 0
        for t in self.consts.values():
            if getattr(t, "data_location", 0) == _EXTERNAL:
                self._check_external(t)
            else:
                embedded += self._tensor_nbytes(t)
        limit = trt_ops.PROTOBUF_LIMIT_BYTES
        if embedded >= limit:
            self.add("error", "", "", f"{embedded / 2**30:.2f} GiB of weights are embedded in the proto "
                     f"(limit {limit / 2**30:.0f} GiB); save with external data: onnx.save(model, path, "
                     "save_as_external_data=True, location='<name>.onnx.data')")

    def _check_external(self, t) -> None:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if self.base_dir is None:
            self.add("warning", t.name, "", f"initializer {t.name} is external ({location}) but the model "
                     "was given as a proto; lint the .onnx path to check the data file")
            return
        path = self.base_dir / location
        if not location or not path.is_file():
            self.add("error", t.name, "", f"initializer {t.name} points to external data {location!r}, "
                     f"missing next to the model in {self.base_dir}; copy the .data file alongside the .onnx")
            return
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or self._tensor_nbytes(t))
        if path.stat().st_size < end:
            self.add("error", t.name, "", f"external data {location} is {path.stat().st_size} bytes but "
                     f"{t.name} needs bytes up to {end}; the file is truncated: re-export or re-copy it")

    def _check_nodes(self, nodes, prefix: str, seen: frozenset = frozenset()) -> None:
        for index, node in enumerate(nodes):
            label = prefix + (node.name or (node.output[0] if node.output else f"#{index}"))
            fn = self.functions.get((node.domain, node.op_type))
            if fn is not None and (fn.domain, fn.name) not in seen:
                # the parser (>= 9.0) expands model-local functions; lint their bodies instead
                self._check_nodes(fn.node, label + "/", seen | {(fn.domain, fn.name)})
                continue
            self._check_node(node, label)
            for a in node.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    self._check_nodes(sub.node, label + "/", seen)

    def _check_node(self, node, label: str) -> None:
        op = node.op_type
        if op in trt_ops.DATA_DEPENDENT_OPS:
            self.add("error", label, op, f"{op} has a data-dependent output shape, which the static per-chunk engines "
                     "forbid (TensorRT 10.3 handles NonZero/NMS only with slow "
                     "data-dependent shapes, Unique/Compress not at all): use a pairwise-comparison rank "
                     "or top-k plus an order-preserving Gather")
            return
        if node.domain not in DEFAULT_DOMAINS or op not in trt_ops.SUPPORTED_OPS:
            self._check_unknown(node, label)
            return
        if op in trt_ops.CONTROL_FLOW_OPS:
            self.add("warning", label, op, f"{op} builds as a TensorRT loop/conditional: slow, blocks "
                     "fusions, and Loop scan outputs need a static length; unroll it or make it static "
                     "at export time")
        check = trt_ops.RESTRICTIONS.get(op)
        for severity, message in (check(node, self, self.opset or 0) if check else ()):
            self.add(severity, label, op, message)

    def _check_unknown(self, node, label: str) -> None:
        op, domain = node.op_type, node.domain or "ai.onnx"
        if op in trt_ops.TRT_PLUGINS:
            self.add("warning", label, op, f"{domain}::{op} is not an ONNX op; the parser maps it to the "
                     f"TensorRT plugin {op!r}: load libnvinfer_plugin (initLibNvInferPlugins) when "
                     "building and running")
        elif op == "MatMulNBits":
            self.add("error", label, op, f"{domain}::{op} runs only in ONNX Runtime (TensorRT has no importer "
                     "and the plugin is not shipped); TensorRT takes the weight-only Q/DQ form that "
                     "export --weights int4|int8 writes (ONNX Runtime fuses it into MatMulNBits itself)")
        elif node.domain not in DEFAULT_DOMAINS:
            self.add("error", label, op, f"{domain}::{op} is from a non-ONNX domain that TensorRT "
                     f"{trt_ops.TRT_VERSION} cannot import (only its own plugins are accepted); export "
                     "without ONNX Runtime contrib ops (no onnxruntime.transformers optimizer) or write a "
                     "TensorRT plugin")
        elif op in trt_ops.ADDED_LATER:
            self.add("error", label, op, f"{op} is supported from TensorRT {trt_ops.ADDED_LATER[op]}, not "
                     f"{trt_ops.TRT_VERSION}; decompose it into basic ops (export with an older opset)")
        else:
            listed = "listed as unsupported" if op in trt_ops.UNSUPPORTED_OPS else "not in the operator table"
            self.add("error", label, op, f"{op} is {listed} for the TensorRT {trt_ops.TRT_VERSION} ONNX "
                     "parser; rewrite it with supported ops or replace the subgraph with a plugin")
