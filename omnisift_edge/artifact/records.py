"""The typed sections of manifest.json: one frozen record per section, each with `from_dict` (checks
every value it types, artifact/checks.py) and `to_dict` (the JSON it is written as).

Field for field these are what the C++ library's `omnisift::Manifest` (cpp/include/omnisift/manifest.h)
reads. `to_dict` writes the keys in the order the export has always written them and leaves out
fields that are None, so manifests stay byte for byte what the C++ reader and its goldens expect.
Sections whose contents belong to one stage (a build report, the quantization report) keep the
whole record as written (`record`) and type the fields other stages read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omnisift_edge.artifact import checks as c

# the decoder forms: their graph names, graph files' stems and keys in `graphs` / `kv_cache` / a build's `engines`
DECODER = "decoder"                   # past in, present out (TensorRT 10.3+)
DECODER_GQA = "decoder_gqa"           # GroupQueryAttention on one shared buffer (ONNX Runtime)
DECODER_SCATTER = "decoder_scatter"   # TensorScatter on a static cache (TensorRT-RTX, TensorRT >= 10.15)
DECODER_TRT10 = "decoder_trt10"       # past/present with TensorRT's INT4 node at opset 17 (int8/int4, TensorRT 10.0-10.5)
DECODER_FORMS = (DECODER, DECODER_GQA, DECODER_SCATTER, DECODER_TRT10)
DTYPES = ("fp32", "fp16")
MAX_CONTEXT_LIMIT = 1 << 20   # tokens: 32x Qwen2.5-Omni's 32768 positions; beyond it a KV cache is terabytes


def _emit(*pairs) -> dict:
    """A JSON object from (key, value) pairs, in order, without the None values."""
    return {k: v for k, v in pairs if v is not None}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str                      # "float32" | "float16" | "int64" | "bool"
    axes: tuple[str, ...]           # symbolic axis names (artifact.tensors)
    shape: tuple[int | str, ...]    # fixed sizes; the axis name where it is dynamic

    @classmethod
    def from_dict(cls, raw, where: str) -> "TensorInfo":
        raw = c.obj(raw, where)
        axes = c.strings(c.key(raw, "axes", where), f"{where}.axes")
        shape = c.lst(c.key(raw, "shape", where), f"{where}.shape")
        for i, size in enumerate(shape):
            if not isinstance(size, str):
                c.integer(size, f"{where}.shape[{i}]", low=0)
        if len(shape) != len(axes):
            raise c.bad(f"{where}.shape", "and .axes differ in length")
        return cls(c.text(c.key(raw, "name", where), f"{where}.name"), c.text(c.key(raw, "dtype", where), f"{where}.dtype"),
                   axes, tuple(shape))

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "axes": list(self.axes), "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphInfo:
    key: str                        # "vision_encoder", "compressor_r0.25", "decoder", ...
    file: str
    opset: int
    inputs: tuple[TensorInfo, ...]  # in the order artifact.tensors declares them
    outputs: tuple[TensorInfo, ...]
    rho_video: float | None = None  # compressors: the drop rates the graph was exported with
    rho_audio: float | None = None
    external_data: bool | None = None   # decoders (and graphs in shared_weights): weights in another file

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @classmethod
    def from_dict(cls, key: str, raw, where: str) -> "GraphInfo":
        raw = c.obj(raw, where)
        tensors = {part: tuple(TensorInfo.from_dict(t, f"{where}.{part}[{i}]")
                               for i, t in enumerate(c.lst(c.key(raw, part, where), f"{where}.{part}")))
                   for part in ("inputs", "outputs")}
        rho = {r: c.number(raw[r], f"{where}.{r}", low=0, high=1) if raw.get(r) is not None else None
               for r in ("rho_video", "rho_audio")}
        external = raw.get("external_data")
        return cls(c.name(key, where), c.relative(c.key(raw, "file", where), f"{where}.file"),
                   c.integer(c.key(raw, "opset", where), f"{where}.opset", low=1, high=100), **tensors, **rho,
                   external_data=c.flag(external, f"{where}.external_data") if external is not None else None)

    def to_dict(self) -> dict:
        return _emit(("file", self.file), ("opset", self.opset), ("inputs", [t.to_dict() for t in self.inputs]),
                     ("outputs", [t.to_dict() for t in self.outputs]), ("rho_video", self.rho_video),
                     ("rho_audio", self.rho_audio), ("external_data", self.external_data))


@dataclass(frozen=True)
class RatioPlan:
    graph: str
    ratio: float                    # in (0, 1]: the fraction of audio+video tokens kept
    rho_video: float                # in [0, 1): drop rates
    rho_audio: float
    achieved: float
    kept_video: int                 # kept tokens per whole chunk
    kept_audio: int
    kept_total: int

    @classmethod
    def from_dict(cls, raw, where: str) -> "RatioPlan":
        raw = c.obj(raw, where)
        kept = c.obj(c.key(raw, "kept_per_chunk", where), f"{where}.kept_per_chunk")
        counts = [c.integer(c.key(kept, k, f"{where}.kept_per_chunk"), f"{where}.kept_per_chunk.{k}", low=0)
                  for k in ("video", "audio", "total")]
        if counts[2] <= 0 or counts[0] + counts[1] != counts[2]:
            raise c.bad(f"{where}.kept_per_chunk", f"is {counts[0]} video + {counts[1]} audio = {counts[2]} total, "
                        "expected a positive total that is their sum")
        return cls(c.name(c.key(raw, "graph", where), f"{where}.graph"),
                   c.number(c.key(raw, "ratio", where), f"{where}.ratio", above=0, high=1),
                   c.number(c.key(raw, "rho_video", where), f"{where}.rho_video", low=0, high=1),
                   c.number(c.key(raw, "rho_audio", where), f"{where}.rho_audio", low=0, high=1),
                   c.number(c.key(raw, "achieved", where), f"{where}.achieved", above=0, high=1), *counts)

    def to_dict(self) -> dict:
        return {"graph": self.graph, "ratio": self.ratio, "rho_video": self.rho_video, "rho_audio": self.rho_audio,
                "achieved": self.achieved,
                "kept_per_chunk": {"video": self.kept_video, "audio": self.kept_audio, "total": self.kept_total}}


@dataclass(frozen=True)
class KvForm:
    """One decoder form in `kv_cache` (docs/export-decoder.md): how its cache is laid out, who runs it."""

    graph: str                      # one of DECODER_FORMS
    kind: str                       # "past_present" | "shared_buffer" | "in_place_scatter"
    runtimes: tuple[str, ...]
    cache_axes: tuple[str, ...]
    logits: str
    file: str | None = None         # the in-place forms: their graph file (not in `graphs`)
    max_context: int | None = None  # the in-place forms: cache rows
    attention: str | None = None
    write_index: str | None = None  # decoder_scatter: its input names
    logits_index: str | None = None
    update: str | None = None
    entry: GraphInfo | None = None  # the in-place forms and decoder_trt10: the graph's entry (tensors)
    replaces: str | None = None     # decoder_trt10: the graph whose engine it is built as (`decoder`)
    weights_node: str | None = None  # decoder_trt10: trt::TRT_INT4DequantizeLinear | DequantizeLinear
    opset: int | None = None        # decoder_trt10: its ONNX opset
    quantized_matmuls: int | None = None   # decoder_trt10: MatMuls reading quantized weights

    @classmethod
    def from_dict(cls, key: str, raw, where: str) -> "KvForm":
        raw = c.obj(raw, where)
        opt = {k: c.text(raw[k], f"{where}.{k}") if raw.get(k) is not None else None
               for k in ("attention", "write_index", "logits_index", "update", "replaces", "weights_node")}
        opt.update({k: c.integer(raw[k], f"{where}.{k}", low=0, high=1 << 24) if raw.get(k) is not None else None
                    for k in ("opset", "quantized_matmuls")})
        graph = c.name(c.key(raw, "graph", where), f"{where}.graph")
        return cls(graph, c.text(c.key(raw, "kind", where), f"{where}.kind"),
                   c.strings(c.key(raw, "runtimes", where), f"{where}.runtimes"),
                   c.strings(c.key(raw, "cache_axes", where), f"{where}.cache_axes"),
                   c.text(c.key(raw, "logits", where, ""), f"{where}.logits"),
                   c.relative(raw["file"], f"{where}.file") if raw.get("file") is not None else None,
                   c.positive(raw["max_context"], f"{where}.max_context", high=MAX_CONTEXT_LIMIT)
                   if raw.get("max_context") is not None else None, **opt,
                   entry=GraphInfo.from_dict(graph, raw["entry"], f"{where}.entry") if raw.get("entry") is not None else None)

    def to_dict(self) -> dict:
        return _emit(("graph", self.graph), ("file", self.file), ("kind", self.kind), ("replaces", self.replaces),
                     ("runtimes", list(self.runtimes)), ("cache_axes", list(self.cache_axes)),
                     ("max_context", self.max_context), ("attention", self.attention), ("write_index", self.write_index),
                     ("logits_index", self.logits_index), ("update", self.update), ("weights_node", self.weights_node),
                     ("opset", self.opset), ("quantized_matmuls", self.quantized_matmuls), ("logits", self.logits),
                     ("entry", self.entry.to_dict() if self.entry is not None else None))


_LAYOUT_INTS = ("patch_size", "temporal_patch_size", "spatial_merge_size", "position_id_per_seconds", "sample_rate",
                "n_mels", "n_fft", "hop_length", "audio_window_frames")


@dataclass(frozen=True)
class Layout:
    """model.spec.OmniSpec's fields (token ids, patch and audio constants), as the export wrote them."""

    tokens: dict[str, int]
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    fps: float
    position_id_per_seconds: int
    seconds_per_chunk: float
    sample_rate: int
    n_mels: int
    n_fft: int
    hop_length: int
    audio_window_frames: int

    @classmethod
    def from_dict(cls, raw, where: str = "layout") -> "Layout":
        raw = c.obj(raw, where)
        tokens = c.obj(c.key(raw, "tokens", where), f"{where}.tokens")
        values = {k: c.positive(c.key(raw, k, where), f"{where}.{k}", high=1 << 24) for k in _LAYOUT_INTS}
        values.update({k: c.number(c.key(raw, k, where), f"{where}.{k}", above=0, high=3600) for k in ("fps", "seconds_per_chunk")})
        return cls(tokens={k: c.integer(v, f"{where}.tokens.{k}", low=0) for k, v in tokens.items()}, **values)

    def to_dict(self) -> dict:
        return {"tokens": dict(self.tokens), **{k: getattr(self, k) for k in self.__dataclass_fields__ if k != "tokens"}}

    def spec_fields(self) -> dict:
        """The keyword arguments of OmniSpec (tokens still a dict)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Rope:
    """TMRoPE settings: rotary base, the time/height/width split of each head and the position table."""

    rope_theta: float | None = None
    mrope_section: tuple[int, ...] | None = None
    position_id_per_seconds: int | None = None
    seconds_per_chunk: float | None = None
    rows: tuple[str, ...] | None = None
    max_position_embeddings: int | None = None

    @classmethod
    def from_dict(cls, raw, where: str = "rope") -> "Rope":
        raw = c.obj(raw, where)

        def opt(k, check):
            return check(raw[k], f"{where}.{k}") if raw.get(k) is not None else None

        return cls(opt("rope_theta", lambda v, w: c.number(v, w, above=0)),
                   opt("mrope_section", lambda v, w: c.ints(v, w, low=0)),
                   opt("position_id_per_seconds", c.positive),
                   opt("seconds_per_chunk", lambda v, w: c.number(v, w, above=0)),
                   opt("rows", c.strings),
                   opt("max_position_embeddings", lambda v, w: c.positive(v, w, high=MAX_CONTEXT_LIMIT * 64)))

    def to_dict(self) -> dict:
        return _emit(("rope_theta", self.rope_theta),
                     ("mrope_section", list(self.mrope_section) if self.mrope_section is not None else None),
                     ("position_id_per_seconds", self.position_id_per_seconds),
                     ("seconds_per_chunk", self.seconds_per_chunk),
                     ("rows", list(self.rows) if self.rows is not None else None),
                     ("max_position_embeddings", self.max_position_embeddings))


@dataclass(frozen=True)
class TextEmbeddings:
    file: str
    tensor: str
    shape: tuple[int, int]          # [vocab, hidden]
    dtype: str

    @classmethod
    def from_dict(cls, raw, where: str = "text_embeddings") -> "TextEmbeddings":
        raw = c.obj(raw, where)
        shape = c.ints(c.key(raw, "shape", where), f"{where}.shape", low=1)
        if len(shape) != 2:
            raise c.bad(f"{where}.shape", "is not [vocab, hidden]")
        return cls(c.relative(c.key(raw, "file", where), f"{where}.file"), c.text(c.key(raw, "tensor", where), f"{where}.tensor"),
                   shape, c.text(c.key(raw, "dtype", where), f"{where}.dtype"))

    def to_dict(self) -> dict:
        return {"file": self.file, "tensor": self.tensor, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Tokenizer:
    folder: str
    files: tuple[str, ...]

    @classmethod
    def from_dict(cls, raw, where: str = "tokenizer") -> "Tokenizer":
        raw = c.obj(raw, where)
        files = c.strings(c.key(raw, "files", where), f"{where}.files")
        for i, f in enumerate(files):
            c.relative(f, f"{where}.files[{i}]")
        return cls(c.relative(c.key(raw, "folder", where), f"{where}.folder"), files)

    def to_dict(self) -> dict:
        return {"folder": self.folder, "files": list(self.files)}


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    @classmethod
    def from_dict(cls, raw, where: str) -> "FileEntry":
        raw = c.obj(raw, where)
        return cls(c.text(c.key(raw, "sha256", where), f"{where}.sha256"),
                   c.integer(c.key(raw, "bytes", where), f"{where}.bytes", low=0))

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class TensorrtForm:
    """One row of `weights.tensorrt_forms`: which TensorRT builds which decoder file (a quantized export)."""

    tensorrt: str                   # "TensorRT-RTX" | ">= 10.6" | ">= 10.0, < 10.6 (JetPack 6: 10.3)"
    graph: str                      # the decoder file it builds (with a note for >= 10.15)

    @classmethod
    def from_dict(cls, raw, where: str) -> "TensorrtForm":
        raw = c.obj(raw, where)
        return cls(c.text(c.key(raw, "tensorrt", where), f"{where}.tensorrt"),
                   c.text(c.key(raw, "graph", where), f"{where}.graph"))


@dataclass(frozen=True)
class Calibration:
    """`weights.calibration` (export/decoder/awq.py): what calibrated the int4 scales and what it chose."""

    method: str                     # "awq+clip" | "awq+clip+gptq": the steps that ran
    source: str                     # "generated" | "files"
    clips: tuple[str, ...]          # the calibration inputs (file names, or the generated clips' seeds)
    rows: int                       # calibration rows per scaled linear (before the MAX_ROWS cut)
    grid: int = 0                   # alpha grid points
    alpha_mean: float | None = None
    output_error_ratio: float | None = None   # calibrated / RTN output error on the calibration rows

    @classmethod
    def from_dict(cls, raw, where: str = "weights.calibration") -> "Calibration":
        raw = c.obj(raw, where)
        inputs = c.obj(c.key(raw, "calibration", where), f"{where}.calibration")
        ratio, alpha = raw.get("output_error_ratio"), raw.get("alpha_mean")
        return cls(c.text(c.key(raw, "method", where), f"{where}.method"),
                   c.text(c.key(inputs, "source", f"{where}.calibration"), f"{where}.calibration.source"),
                   c.strings(c.key(inputs, "clips", f"{where}.calibration"), f"{where}.calibration.clips"),
                   c.integer(inputs.get("rows", 0), f"{where}.calibration.rows", low=0),
                   c.integer(raw.get("grid", 0), f"{where}.grid", low=0, high=1 << 16),
                   c.number(alpha, f"{where}.alpha_mean") if alpha is not None else None,
                   c.number(ratio, f"{where}.output_error_ratio") if ratio is not None else None)


@dataclass(frozen=True)
class Weights:
    """`weights`: the decoder's weight form (float, or weight-only int8/int4 Q/DQ) and each backend's graph."""

    mode: str                       # "fp32" | "fp16" | "int8" | "int4"
    form: str                       # "float" | "qdq"
    bits: int
    graphs: dict[str, str]          # backend -> graph file
    block_size: int | None = None
    lm_head_quantized: bool = False
    quantized_weight_bytes: int = 0
    method: str | None = None       # quantized: "rtn" | "awq+clip" | "awq+clip+gptq" (export/decoder/awq.py)
    calibration: Calibration | None = None        # awq: its inputs and choices
    tensorrt_forms: tuple[TensorrtForm, ...] = ()  # quantized: which TensorRT builds which decoder file
    record: dict = field(default_factory=dict, repr=False, compare=False)   # the whole section, as written

    @classmethod
    def from_dict(cls, raw, where: str = "weights") -> "Weights":
        raw = c.obj(raw, where)
        graphs = c.obj(c.key(raw, "graphs", where), f"{where}.graphs")
        block, method, calibration = raw.get("block_size"), raw.get("method"), raw.get("calibration")
        forms = c.lst(raw.get("tensorrt_forms") or [], f"{where}.tensorrt_forms")
        return cls(c.text(c.key(raw, "mode", where), f"{where}.mode"), c.text(c.key(raw, "form", where), f"{where}.form"),
                   c.integer(c.key(raw, "bits", where), f"{where}.bits", low=1, high=64),
                   {c.text(k, f"{where}.graphs"): c.relative(v, f"{where}.graphs.{k}") for k, v in graphs.items()},
                   c.positive(block, f"{where}.block_size", high=1 << 20) if block is not None else None,
                   c.flag(raw.get("lm_head_quantized", False), f"{where}.lm_head_quantized"),
                   c.integer(raw.get("quantized_weight_bytes", 0), f"{where}.quantized_weight_bytes", low=0),
                   c.text(method, f"{where}.method") if method is not None else None,
                   Calibration.from_dict(calibration, f"{where}.calibration") if calibration is not None else None,
                   tuple(TensorrtForm.from_dict(f, f"{where}.tensorrt_forms[{i}]") for i, f in enumerate(forms)),
                   dict(raw))

    def to_dict(self) -> dict:
        return dict(self.record)


@dataclass(frozen=True)
class SharedWeights:
    """`shared_weights` (export/shared_weights.py): one file holding the weights several graphs share."""

    file: str
    graphs: tuple[str, ...]         # graph files that point into it
    graph_bytes: dict[str, int]     # graph file -> bytes of its own in the shared file
    record: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw, where: str = "shared_weights") -> "SharedWeights":
        raw = c.obj(raw, where)
        graphs = c.strings(c.key(raw, "graphs", where), f"{where}.graphs")
        sizes = c.obj(raw.get("graph_bytes") or {}, f"{where}.graph_bytes")
        return cls(c.relative(c.key(raw, "file", where), f"{where}.file"), graphs,
                   {k: c.integer(v, f"{where}.graph_bytes.{k}", low=0) for k, v in sizes.items()}, dict(raw))

    def to_dict(self) -> dict:
        return dict(self.record)


@dataclass(frozen=True)
class EngineEntry:
    """One engine of a build: `builds.<target>.engines.<graph>`."""

    file: str                       # engines/<target>/<graph>.engine
    precision: str
    profiles: tuple[dict, ...]      # engines.profiles' records: name and per-axis ranges
    static_axes: dict[str, int] | None = None   # the in-place decoder: the static cache axes it was built with
    record: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw, where: str) -> "EngineEntry":
        raw = c.obj(raw, where)
        profiles = tuple(c.obj(p, f"{where}.profiles[{i}]")
                         for i, p in enumerate(c.lst(raw.get("profiles", []), f"{where}.profiles")))
        static = raw.get("static_axes")
        return cls(c.relative(c.key(raw, "file", where), f"{where}.file"),
                   c.text(raw.get("precision", ""), f"{where}.precision"), profiles,
                   {k: c.integer(v, f"{where}.static_axes.{k}", low=0) for k, v in c.obj(static, f"{where}.static_axes").items()}
                   if static is not None else None, dict(raw))

    def get(self, name: str, default=None):
        """Any other field of the engine's record (build_seconds, validity, the in-place facts)."""
        return self.record.get(name, default)


@dataclass(frozen=True)
class Build:
    """`builds.<target>`: the engines stage's report for one target (docs/engines.md)."""

    target: str
    flavour: str                    # "tensorrt" | "tensorrt_rtx"
    tensorrt: str                   # the version that built the engines
    device: str                     # the GPU they were built on ("" for ahead-of-time builds)
    compute_capability: str         # "8.7", or a comma-separated list for TensorRT-RTX
    precision: str
    max_context: int | None
    engines: dict[str, EngineEntry]
    record: dict = field(default_factory=dict, repr=False, compare=False)   # the whole report, as written
    prefill_chunks: int = 1         # chunks' kept tokens the decoder's prefill profile takes per call (build --prefill-chunks)
    max_streams: int = 1            # decode rows one decoder call takes: a stream pool's streams (build --max-streams)

    @classmethod
    def from_dict(cls, target: str, raw, where: str) -> "Build":
        raw = c.obj(raw, where)
        engines = c.obj(c.key(raw, "engines", where), f"{where}.engines")
        flavour = c.text(raw.get("flavour", "tensorrt"), f"{where}.flavour")
        if flavour not in ("tensorrt", "tensorrt_rtx"):
            raise c.bad(f"{where}.flavour", f"is {flavour!r}, expected tensorrt or tensorrt_rtx")
        limit = raw.get("max_context")
        return cls(c.name(target, where), flavour, c.text(c.key(raw, "tensorrt", where), f"{where}.tensorrt"),
                   c.text(raw.get("device") or "", f"{where}.device"),
                   str(c.key(raw, "compute_capability", where)), c.text(raw.get("precision", ""), f"{where}.precision"),
                   c.positive(limit, f"{where}.max_context", high=MAX_CONTEXT_LIMIT) if limit is not None else None,
                   {c.name(g, f"{where}.engines.{g}"): EngineEntry.from_dict(e, f"{where}.engines.{g}")
                    for g, e in engines.items()}, dict(raw),
                   c.positive(raw.get("prefill_chunks", 1), f"{where}.prefill_chunks", high=MAX_CONTEXT_LIMIT),
                   c.positive(raw.get("max_streams", 1), f"{where}.max_streams", high=MAX_CONTEXT_LIMIT))

    def get(self, name: str, default=None):
        """Any other field of the report (workspace_gb, warnings, decoder_form, created...)."""
        return self.record.get(name, default)

    def to_dict(self) -> dict:
        return dict(self.record)
