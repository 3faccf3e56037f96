"""`manifest.json`: the contract between the export folder and every runtime (Python or C++).

Written last, after every file it describes, with the SHA-256 of each; readers check the schema
version and the checksums before trusting anything in the folder. `read_manifest` returns the JSON
as a dict (the stages that add sections to it, like the engines' build reports, write it back);
`Manifest.from_dict` types the part every runtime reads, field for field as the C++ library's
`omnisift::Manifest` (cpp/include/omnisift/manifest.h) does.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omnisift_edge.atomic import atomic_path
from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.tensors import DYNAMIC_AXES, Dims, GraphSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REFERENCE_DIR = "reference"     # ONNX Runtime reference outputs the engines are verified against
ENGINES_DIR = "engines"         # engines/<target>/<graph>.engine

TIE_RULE = ("rank by score, highest first; among equal scores the lower index first; select the first k; "
            "selected indices in ascending (original) order. STVP drops select(similarity, k_v) per frame; "
            "VGAS keeps select(score, n_keep) per chunk; audio tokens bitwise identical to an earlier one "
            "take its score.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_entry(spec: GraphSpec, dims: Dims, file: str, opset: int, dtype: str, **extra) -> dict:
    """A graph's manifest entry, derived from its declaration in tensors.py."""
    float_type = "float16" if dtype == "fp16" else "float32"

    def tensor(t):
        return {"name": t.name, "dtype": float_type if t.dtype == "float" else t.dtype,
                "axes": list(t.axes), "shape": t.shape(dims)}

    return {"file": file, "opset": opset, "inputs": [tensor(t) for t in spec.inputs],
            "outputs": [tensor(t) for t in spec.outputs], **extra}


def graph_file_bytes(folder: Path, manifest: dict, file: str) -> int:
    """A graph's size with its weights, from file sizes alone (planning imports no onnx): the `.onnx`, its
    own `<file>.data`, and what it points at in the export's shared weights file (the manifest's
    `shared_weights`, export/shared_weights.py: a graph that takes part keeps all its weights there;
    `graph_bytes` says how many are its own, so a compressor sharing only the selector is not charged
    the LLM; exports written before it was recorded count the whole file)."""
    folder = Path(folder)
    shared = manifest.get("shared_weights") or {}
    size = sum(p.stat().st_size for p in (folder / file, folder / f"{file}.data") if p.is_file())
    if file in shared.get("graphs", ()):
        own = (shared.get("graph_bytes") or {}).get(file)
        size += own if own is not None else (folder / shared["file"]).stat().st_size
    return size


def tool_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("omnisift_edge", "torch", "transformers", "optimum", "onnx", "onnxruntime", "numpy"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            continue
    return versions


def write_manifest(folder: Path, manifest: dict, *, known: dict[str, dict] | None = None) -> Path:
    """Add checksums of every other file in `folder`, then write manifest.json atomically.

    `known`: checksums just verified (name -> {sha256, bytes, mtime_ns}, engines.store.verify_sources),
    reused for a file whose size and modification time are unchanged instead of hashing it again."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    manifest = dict(manifest, schema_version=SCHEMA_VERSION, dynamic_axes=list(DYNAMIC_AXES),
                    files={str(p.relative_to(folder)): _checksum(p, (known or {}).get(str(p.relative_to(folder))))
                           for p in files})
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=_jsonable))
    return folder / MANIFEST


def _checksum(path: Path, known: dict | None) -> dict:
    """{sha256, bytes} of `path`; `known`'s digest when the file is unchanged since it was verified."""
    stat = path.stat()
    if known and known["bytes"] == stat.st_size and known["mtime_ns"] == stat.st_mtime_ns:
        return {"sha256": known["sha256"], "bytes": stat.st_size}
    return {"sha256": sha256(path), "bytes": stat.st_size}


def read_manifest(folder: Path, *, verify: bool = True) -> dict:
    """The manifest of an export folder, schema and (optionally) checksums verified."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UsageError(f"{folder} has no {MANIFEST}; it is not a complete export (run omnisift-edge export)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is corrupt ({exc}); export again") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} is corrupt (not a JSON object); export again")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UsageError(f"{path} has schema version {version}, this omnisift-edge reads {SCHEMA_VERSION}; "
                         "export again with this version (or use the omnisift-edge that wrote it)")
    if verify:
        for name, entry in manifest.get("files", {}).items():
            file = folder / name
            if not file.is_file():
                raise UsageError(f"{file} is missing from the export; copy the whole folder or export again")
            if file.stat().st_size != entry["bytes"] or sha256(file) != entry["sha256"]:
                raise UsageError(f"{file} does not match its checksum in {MANIFEST} (modified or partly copied); "
                                 "copy it again or export again")
    return manifest


def _jsonable(value):
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------------- typed view

@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str                      # "float32" | "float16" | "int64" | "bool"
    axes: tuple[str, ...]           # symbolic axis names (artifact.tensors)
    shape: tuple[int | str, ...]    # fixed sizes; the axis name where it is dynamic


@dataclass(frozen=True)
class GraphInfo:
    key: str                        # "vision_encoder", "compressor_r0.25", "decoder", ...
    file: str
    opset: int
    inputs: tuple[TensorInfo, ...]  # in the order artifact.tensors declares them
    outputs: tuple[TensorInfo, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class RatioPlan:
    graph: str
    ratio: float
    rho_video: float
    rho_audio: float
    achieved: float
    kept_video: int                 # kept tokens per whole chunk
    kept_audio: int
    kept_total: int


@dataclass(frozen=True)
class Manifest:
    """The part of manifest.json every runtime reads, typed (the rest stays in `raw`)."""

    schema_version: int
    dtype: str                      # "fp32" | "fp16"
    resolution: tuple[int, int]     # frame H, W the graphs take
    max_context: int
    dims: Dims
    layout: dict                    # model.spec.OmniSpec's fields (tokens included)
    rope: dict
    ratios: tuple[RatioPlan, ...]
    graphs: dict[str, GraphInfo]
    embeddings_file: str
    embeddings_tensor: str
    tokenizer_folder: str
    stop_token_ids: tuple[int, ...]
    files: dict[str, dict]
    builds: dict[str, dict] = field(default_factory=dict)    # engines stage reports, by target
    kv_cache: dict = field(default_factory=dict)              # decoder forms: decoder, decoder_gqa, decoder_scatter
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: dict, *, where: str = MANIFEST) -> "Manifest":
        """Type a manifest dict; a missing or malformed key is a UsageError (a corrupt or foreign file)."""
        try:
            graphs = {key: GraphInfo(key, g["file"], int(g["opset"]),
                                     tuple(_tensor(t) for t in g["inputs"]), tuple(_tensor(t) for t in g["outputs"]))
                      for key, g in raw["graphs"].items()}
            ratios = tuple(RatioPlan(r["graph"], float(r["ratio"]), float(r["rho_video"]), float(r["rho_audio"]),
                                     float(r["achieved"]), int(r["kept_per_chunk"]["video"]),
                                     int(r["kept_per_chunk"]["audio"]), int(r["kept_per_chunk"]["total"]))
                           for r in raw["ratios"])
            return cls(schema_version=int(raw["schema_version"]), dtype=str(raw["dtype"]),
                       resolution=tuple(int(x) for x in raw["resolution"]), max_context=int(raw["max_context"]),
                       dims=Dims(**raw["dims"]), layout=dict(raw["layout"]), rope=dict(raw.get("rope") or {}),
                       ratios=ratios, graphs=graphs, embeddings_file=raw["text_embeddings"]["file"],
                       embeddings_tensor=raw["text_embeddings"]["tensor"], tokenizer_folder=raw["tokenizer"]["folder"],
                       stop_token_ids=tuple(int(i) for i in raw["stop_token_ids"]), files=dict(raw.get("files", {})),
                       builds=dict(raw.get("builds") or {}), kv_cache=dict(raw.get("kv_cache") or {}), raw=raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{where} is not an omnisift-edge manifest this version can read "
                             f"({type(exc).__name__}: {exc}); export again") from None

    def ratio_plan(self, ratio: float | None = None) -> RatioPlan:
        """The compressor plan for `ratio` (None: the first the export lists), or a UsageError listing them."""
        if ratio is None:
            return self.ratios[0]
        for plan in self.ratios:
            if abs(plan.ratio - ratio) < 1e-9:
                return plan
        have = ", ".join(f"{p.ratio:g}" for p in self.ratios)
        raise UsageError(f"this export has no compressor for ratio {ratio:g} (it has {have}); "
                         "export again with --ratios including it")

    def graph(self, key: str) -> GraphInfo:
        if key not in self.graphs:
            raise UsageError(f"this export has no {key} graph (it has {', '.join(self.graphs)}); export again")
        return self.graphs[key]


def _tensor(t: dict) -> TensorInfo:
    return TensorInfo(t["name"], t["dtype"], tuple(t["axes"]), tuple(t["shape"]))


def load_manifest(folder: Path, *, verify: bool = True) -> Manifest:
    """`read_manifest`, typed."""
    return Manifest.from_dict(read_manifest(folder, verify=verify), where=str(Path(folder) / MANIFEST))
