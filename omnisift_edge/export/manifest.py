"""`manifest.json`: the contract between the export folder and every runtime (Python or C++).

Written last, after every file it describes, with the SHA-256 of each; readers check the schema
version and the checksums before trusting anything in the folder.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict
from pathlib import Path

from omnisift_edge.atomic import atomic_path
from omnisift_edge.errors import UsageError
from omnisift_edge.export.tensors import DYNAMIC_AXES, Dims, GraphSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

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


def tool_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("omnisift_edge", "torch", "transformers", "optimum", "onnx", "onnxruntime", "numpy"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            continue
    return versions


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Add checksums of every other file in `folder`, then write manifest.json atomically."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    manifest = dict(manifest, schema_version=SCHEMA_VERSION, dynamic_axes=list(DYNAMIC_AXES),
                    files={str(p.relative_to(folder)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files})
    with atomic_path(folder / MANIFEST) as tmp:    # synced, plain file modes, whole or not at all
        tmp.write_text(json.dumps(manifest, indent=2, default=_jsonable))
    return folder / MANIFEST


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
