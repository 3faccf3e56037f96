"""`manifest.json`: the contract between the export folder and every runtime (Python or C++).

Written last, after every file it describes, with the SHA-256 of each. `Manifest` is the only reader
and writer of it in Python, as `omnisift::Manifest` (cpp/include/omnisift/manifest.h) is in C++:
`load_manifest` reads, validates (types, required keys, ranges, schema version, nesting depth: one
line naming the key, artifact/checks.py), checks that every path it names stays inside the folder
and is covered by the checksums, then verifies those checksums; writers build a `Manifest` from the
typed records (artifact/records.py) and `write_manifest` serializes it. `read_manifest` gives the same
validated file as plain JSON, for tools and tests that inspect it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omnisift_edge.artifact import checks as c
from omnisift_edge.artifact.records import (DECODER, DECODER_FORMS, DECODER_GQA, DECODER_SCATTER, DTYPES,  # noqa: F401
                                            MAX_CONTEXT_LIMIT, Build, EngineEntry, FileEntry, GraphInfo, KvForm,
                                            Layout, RatioPlan, Rope, SharedWeights, TensorInfo, TextEmbeddings,
                                            Tokenizer, Weights)
from omnisift_edge.atomic import atomic_path
from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.tensors import DYNAMIC_AXES, Dims, GraphSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REFERENCE_DIR = "reference"     # ONNX Runtime reference outputs the engines are verified against
ENGINES_DIR = "engines"         # engines/<target>/<graph>.engine
PROFILE_DIR = "profile"         # `profile`'s default output: not part of the export's checksummed contents
REQUIRED_GRAPHS = ("vision_encoder", "audio_encoder", DECODER)

TIE_RULE = ("rank by score, highest first; among equal scores the lower index first; select the first k; "
            "selected indices in ascending (original) order. STVP drops select(similarity, k_v) per frame; "
            "VGAS keeps select(score, n_keep) per chunk; audio tokens bitwise identical to an earlier one "
            "take its score.")

# manifest.json's top-level keys in the order they are written (the C++ goldens hold this order)
ORDER = ("model", "selector", "dtype", "resolution", "max_context", "dims", "layout", "rope", "tie_rule", "ratios",
         "graphs", "kv_cache", "text_embeddings", "tokenizer", "weights", "thinker_shape", "stop_token_ids", "tools",
         "export_config", "created", "shared_weights", "validation", "lint", "reference", "builds", "schema_version",
         "dynamic_axes", "files")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_entry(spec: GraphSpec, dims: Dims, file: str, opset: int, dtype: str, **extra) -> dict:
    """A graph's manifest entry (its JSON, `GraphInfo.to_dict`'s form), derived from its declaration in tensors.py."""
    float_type = "float16" if dtype == "fp16" else "float32"

    def tensor(t):
        return {"name": t.name, "dtype": float_type if t.dtype == "float" else t.dtype,
                "axes": list(t.axes), "shape": t.shape(dims)}

    return {"file": file, "opset": opset, "inputs": [tensor(t) for t in spec.inputs],
            "outputs": [tensor(t) for t in spec.outputs], **extra}


def graph_file_bytes(folder: Path, manifest: "Manifest", file: str) -> int:
    """A graph's size with its weights, from file sizes alone (planning imports no onnx): the `.onnx`, its
    own `<file>.data`, and what it points at in the export's shared weights file (the manifest's
    `shared_weights`, export/shared_weights.py: a graph that takes part keeps all its weights there;
    `graph_bytes` says how many are its own, so a compressor sharing only the selector is not charged
    the LLM; exports written before it was recorded count the whole file)."""
    folder = Path(folder)
    shared = as_manifest(manifest).shared_weights
    size = sum(p.stat().st_size for p in (folder / file, folder / f"{file}.data") if p.is_file())
    if shared is not None and file in shared.graphs:
        own = shared.graph_bytes.get(file)
        size += own if own is not None else (folder / shared.file).stat().st_size
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


# ------------------------------------------------------------------------------------- typed view

@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed: every section a runtime or stage reads is a record; the rest (model, selector,
    tools, export_config, validation, lint, reference, ...) stays as written in `sections`."""

    dtype: str                      # "fp32" | "fp16"
    resolution: tuple[int, int]     # frame H, W the graphs take
    max_context: int
    dims: Dims
    layout: Layout                  # model.spec.OmniSpec's fields (tokens included)
    ratios: tuple[RatioPlan, ...]
    graphs: dict[str, GraphInfo]    # what TensorRT builds
    text_embeddings: TextEmbeddings
    tokenizer: Tokenizer
    stop_token_ids: tuple[int, ...]
    rope: Rope | None = None
    kv_cache: dict[str, KvForm] = field(default_factory=dict)   # decoder forms, by DECODER_FORMS name
    weights: Weights | None = None
    shared_weights: SharedWeights | None = None
    builds: dict[str, Build] = field(default_factory=dict)     # engines stage reports, by target
    files: dict[str, FileEntry] = field(default_factory=dict)  # relative path -> checksum (write_manifest)
    dynamic_axes: tuple[str, ...] | None = None
    schema_version: int = SCHEMA_VERSION
    sections: dict = field(default_factory=dict, repr=False, compare=False)   # the untyped sections, as written

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, raw, *, where: str = MANIFEST) -> "Manifest":
        """Type and validate a manifest dict; anything missing, mistyped or out of range is one UsageError line."""
        c.depth(raw, where)
        raw = c.obj(raw, "manifest.json")
        typed = {k: raw.get(k) for k in _TYPED if raw.get(k) is not None}
        for name, parse in _PARSERS.items():
            if name in typed or name in _REQUIRED:
                typed[name] = parse(c.key(raw, name, ""))
        sections = {k: v for k, v in raw.items() if k not in _TYPED}
        manifest = cls(**typed, sections=sections)
        manifest._check_consistency()
        return manifest

    def _check_consistency(self) -> None:
        limit = min(MAX_CONTEXT_LIMIT, (self.rope and self.rope.max_position_embeddings) or MAX_CONTEXT_LIMIT)
        if not 0 < self.max_context <= limit:
            raise c.bad("max_context", f"is {self.max_context}, expected 1 to {limit} "
                        "(the model's position table, rope.max_position_embeddings, or 2^20)")
        for i, plan in enumerate(self.ratios):
            if plan.graph not in self.graphs:
                raise c.bad(f"ratios[{i}].graph", f"is {plan.graph!r}, which graphs does not list")
        for key in REQUIRED_GRAPHS:
            if key not in self.graphs:
                raise c.bad(f"graphs.{key}", "is missing")

    def check_folder(self, folder: Path) -> None:
        """Every path this manifest names resolves inside `folder` (symlinks resolved), and every file a
        runtime opens is covered by the checksums (`files`); otherwise one UsageError line."""
        for where, path in self.paths():
            c.contained(folder, path, where)
        for where, path in self.opened_files():
            if path not in self.files:
                raise c.bad(where, f"names {path}, which files (the checksums) does not cover")

    def paths(self) -> list[tuple[str, str]]:
        """(key, relative path) of every path in the manifest."""
        found = [(f"files.{name}", name) for name in self.files]
        found += [(f"builds.{t}.engines.{g}.file", e.file) for t, b in self.builds.items() for g, e in b.engines.items()]
        found += [("tokenizer.folder", self.tokenizer.folder)]
        if self.weights is not None:
            found += [(f"weights.graphs.{k}", v) for k, v in self.weights.graphs.items()]
        return found + self.opened_files()

    def opened_files(self) -> list[tuple[str, str]]:
        """(key, relative path) of the files the runtimes open: graphs, embeddings, tokenizer, shared weights."""
        found = [(f"graphs.{k}.file", g.file) for k, g in self.graphs.items()]
        for k, form in self.kv_cache.items():
            found += [(f"kv_cache.{k}.file", form.file)] if form.file is not None else []
            found += [(f"kv_cache.{k}.entry.file", form.entry.file)] if form.entry is not None else []
        found += [("text_embeddings.file", self.text_embeddings.file)]
        found += [(f"tokenizer.files[{i}]", f"{self.tokenizer.folder}/{f}") for i, f in enumerate(self.tokenizer.files)]
        if self.shared_weights is not None:
            found += [("shared_weights.file", self.shared_weights.file)]
        return found

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        """The JSON object write_manifest writes: sections in ORDER, unknown ones after, None left out."""
        values = dict(self.sections)
        for name in _TYPED:
            value = getattr(self, name)
            if value is None or (name in ("kv_cache", "builds") and not value):   # absent and empty read the same
                continue
            values[name] = _serialize(value)
        return {**{k: values[k] for k in ORDER if k in values}, **{k: v for k, v in values.items() if k not in ORDER}}

    def replace(self, **changes) -> "Manifest":
        """A copy with typed fields (or, by section name, untyped sections) replaced."""
        typed = {k: v for k, v in changes.items() if k in self.__dataclass_fields__}
        sections = {**self.sections, **{k: v for k, v in changes.items() if k not in self.__dataclass_fields__}}
        return dataclasses.replace(self, **typed, sections=sections)

    def with_build(self, build: Build) -> "Manifest":
        return self.replace(builds={**self.builds, build.target: build})

    # ------------------------------------------------------------------ lookups
    def section(self, name: str, default=None):
        """An untyped section as written (model, selector, tools, export_config, validation, lint, reference...)."""
        value = self.sections.get(name)
        return default if value is None else value

    @property
    def embeddings_file(self) -> str:
        return self.text_embeddings.file

    @property
    def embeddings_tensor(self) -> str:
        return self.text_embeddings.tensor

    @property
    def tokenizer_folder(self) -> str:
        return self.tokenizer.folder

    @property
    def ratio_values(self) -> tuple[float, ...]:
        return tuple(p.ratio for p in self.ratios)

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

    def form_entry(self, key: str) -> GraphInfo:
        """A graph TensorRT may build: one of `graphs`, or an in-place decoder form's entry in `kv_cache`."""
        if key in self.graphs:
            return self.graphs[key]
        form = self.kv_cache.get(key)
        if form is None or form.entry is None:
            raise UsageError(f"this export has no {key} graph (it has {', '.join(self.graphs)}); export again")
        return form.entry


def _dims(raw) -> Dims:
    raw = c.obj(raw, "dims")
    known = {f.name for f in dataclasses.fields(Dims)}
    for k in raw:
        if k not in known:
            raise c.bad(f"dims.{k}", "is not a size this version knows")
    zero_ok = ("kept_tokens", "num_layers", "kv_heads", "head_dim", "vocab")
    return Dims(**{k: c.integer(v, f"dims.{k}", low=0 if k in zero_ok else 1, high=1 << 24) for k, v in raw.items()})


def _resolution(raw) -> tuple[int, int]:
    values = c.lst(raw, "resolution")
    if len(values) != 2:
        raise c.bad("resolution", f"has {len(values)} values, expected [height, width]")
    return tuple(c.positive(v, f"resolution[{i}]", high=16384) for i, v in enumerate(values))


def _dtype(raw) -> str:
    if raw not in DTYPES:
        raise c.bad("dtype", f"is {raw!r}, expected fp32 or fp16")
    return raw


def _version(raw) -> int:
    if raw != SCHEMA_VERSION or isinstance(raw, bool):
        raise UsageError(f"{MANIFEST} has schema version {raw}, this omnisift-edge reads {SCHEMA_VERSION}; "
                         "export again with this version (or use the omnisift-edge that wrote it)")
    return raw


def _named(parse):
    def parse_all(raw, section):
        return {c.name(k, section): parse(k, v, f"{section}.{k}") for k, v in c.obj(raw, section).items()}
    return parse_all


_PARSERS = {
    "schema_version": _version,
    "dtype": _dtype,
    "resolution": _resolution,
    "max_context": lambda v: c.positive(v, "max_context"),
    "dims": _dims,
    "layout": Layout.from_dict,
    "rope": Rope.from_dict,
    "ratios": lambda v: tuple(RatioPlan.from_dict(r, f"ratios[{i}]") for i, r in enumerate(c.lst(v, "ratios", nonempty=True))),
    "graphs": lambda v: _named(GraphInfo.from_dict)(v, "graphs"),
    "kv_cache": lambda v: _named(KvForm.from_dict)(v, "kv_cache"),
    "text_embeddings": TextEmbeddings.from_dict,
    "tokenizer": Tokenizer.from_dict,
    "stop_token_ids": lambda v: c.ints(v, "stop_token_ids", low=0),
    "weights": Weights.from_dict,
    "shared_weights": SharedWeights.from_dict,
    "builds": lambda v: _named(Build.from_dict)(v, "builds"),
    "files": lambda v: {name: FileEntry.from_dict(e, f"files.{name}") for name, e in c.obj(v, "files").items()},
    "dynamic_axes": lambda v: c.strings(v, "dynamic_axes"),
}
_TYPED = tuple(_PARSERS)
_REQUIRED = ("dtype", "resolution", "max_context", "dims", "layout", "ratios", "graphs", "text_embeddings",
             "tokenizer", "stop_token_ids")


def _serialize(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Dims):
        return asdict(value)
    if isinstance(value, dict):
        return {k: _serialize(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_serialize(v) for v in value]
    return value


def as_manifest(manifest: "Manifest | dict") -> Manifest:
    """A Manifest from a Manifest or a manifest dict (tools and tests that hold the JSON)."""
    return manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)


# ------------------------------------------------------------------------------------- files

def checksummed_files(folder: Path) -> list[Path]:
    """What write_manifest checksums: every file but the manifest, hidden files and `profile`'s output."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
                  and p.relative_to(folder).parts[0] != PROFILE_DIR)


def write_manifest(folder: Path, manifest: "Manifest | dict", *, known: dict[str, dict] | None = None) -> Path:
    """Add checksums of every other file in `folder`, then write manifest.json atomically.

    `known`: checksums just verified (name -> {sha256, bytes, mtime_ns}, engines.store.verify_sources),
    reused for a file whose size and modification time are unchanged instead of hashing it again."""
    folder = Path(folder)
    manifest = as_manifest(manifest)
    files = {str(p.relative_to(folder)): _checksum(p, (known or {}).get(str(p.relative_to(folder))))
             for p in checksummed_files(folder)}
    manifest = manifest.replace(schema_version=SCHEMA_VERSION, dynamic_axes=tuple(DYNAMIC_AXES), files=files)
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest.to_dict(), indent=2, default=_jsonable))
    return folder / MANIFEST


def _checksum(path: Path, known: dict | None) -> "FileEntry":
    """The file's entry; `known`'s digest when the file is unchanged since it was verified."""
    stat = path.stat()
    if known and known["bytes"] == stat.st_size and known["mtime_ns"] == stat.st_mtime_ns:
        return FileEntry(known["sha256"], stat.st_size)
    return FileEntry(sha256(path), stat.st_size)


def load_manifest(folder: Path, *, verify: bool = True) -> Manifest:
    """The manifest of an export folder: validated, its paths contained and covered, (optionally) checksums verified."""
    return _load(folder, verify)[1]


def read_manifest(folder: Path, *, verify: bool = True) -> dict:
    """`load_manifest`'s checks, returning the JSON as written (for tools and tests that inspect the file)."""
    return _load(folder, verify)[0]


def _load(folder: Path, verify: bool) -> tuple[dict, Manifest]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UsageError(f"{folder} has no {MANIFEST}; it is not a complete export (run omnisift-edge export)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is corrupt ({exc}); export again") from None
    except RecursionError:
        raise UsageError(f"{path} nests deeper than {c.MAX_DEPTH} levels, so {c.FIX}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path} is corrupt (not a JSON object); export again")
    _version(raw.get("schema_version"))
    c.key(raw, "files", "")
    manifest = Manifest.from_dict(raw, where=str(path))
    manifest.check_folder(folder)
    if verify:
        for name, entry in manifest.files.items():
            file = folder / name
            if not file.is_file():
                raise UsageError(f"{file} is missing from the export; copy the whole folder or export again")
            if file.stat().st_size != entry.bytes or sha256(file) != entry.sha256:
                raise UsageError(f"{file} does not match its checksum in {MANIFEST} (modified or partly copied); "
                                 "copy it again or export again")
    return raw, manifest


def _jsonable(value):
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
