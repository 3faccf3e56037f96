"""One copy of each weight the export's graphs share: `shared_weights.data` (issue 11).

The thinker LLM is exported in more than one graph (`decoder.onnx`, `decoder_gqa.onnx`, and any
later form such as `decoder_scatter.onnx`), each with the same weights: for a 7B model ~15 GB
stored once per graph. `share_weights(folder)` runs after every graph is written, quantized and
validated, and rewrites the folder so that each weight is stored once:

1. Every initializer of every `*.onnx` in the folder (subgraphs included) held as external data,
   or as raw bytes of at least `SIZE_THRESHOLD` bytes, is hashed (SHA-256 over its bytes,
   with its dtype and shape), streamed from the graph's data file in blocks: no graph's weights
   are loaded whole when they are external.
2. A graph *takes part* when one of its tensors has the same content as a tensor of another graph.
   Graphs that share nothing are left exactly as they are (the encoders; a compressor, unless two
   ratios below 1 are exported: their graphs hold the same selector).
3. Every candidate tensor of the graphs that take part is written once to `SHARED_FILE` (a tensor
   over 1 MiB starts at a multiple of 64 KiB, the rule of ONNX Runtime's external-data writer
   for mmap, which onnx-ir applies when aligning; smaller ones are packed), and its `TensorProto` points there
   (`location`, `offset`, `length`: onnx's external-data fields). Unique tensors of those graphs go
   there too, so no graph keeps a `<name>.onnx.data` of its own: every large weight of the LLM lives
   in one file, and nothing else needs rewriting when it is there.
4. Order of the writes, so that an interruption at any point leaves every graph loadable: the
   shared file is finished first under its final name (nothing names it yet), then each graph is
   replaced atomically, then the per-graph data files that no graph names any more are deleted.
   In the export it runs inside the staging folder, so an interrupted export leaves the previous
   export untouched either way (export/replace.py swaps the whole folder).

Readers need nothing new: ONNX Runtime (a session made from the file path), TensorRT's
`parse_from_file` and onnx resolve `location` relative to the graph's folder, and the manifest
checksums the shared file like any other.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omnisift_edge.atomic import atomic_path, atomic_write
from omnisift_edge.errors import require

SHARED_FILE = "shared_weights.data"
SIZE_THRESHOLD = 1024          # smaller tensors stay in the proto (onnx.save's default size_threshold)
ALIGN_THRESHOLD = 1 << 20      # tensors over 1 MiB start at a multiple of ALIGNMENT
ALIGNMENT = 1 << 16            # 64 KiB: the allocation granularity ORT / onnx-ir align external data to
BLOCK = 1 << 24                # bytes read at a time when hashing or copying external data


@dataclass(frozen=True)
class SharedWeights:
    """What the pass did: the manifest's `shared_weights` record."""

    file: str                          # SHARED_FILE, relative to the export folder
    graphs: tuple[str, ...]            # graph files whose weights now live in it
    tensors: int                       # distinct tensors stored
    references: int                    # initializers pointing into it (>= tensors)
    tensor_bytes: int                  # the distinct tensors' bytes
    file_bytes: int                    # the file's size (tensor_bytes + alignment padding)
    bytes_before: int                  # those initializers' bytes as the graphs held them before
    removed_files: tuple[str, ...]     # per-graph data files no graph names any more (deleted)
    graph_bytes: tuple[tuple[str, int], ...] = ()   # per graph: the bytes of the distinct tensors it points at

    def record(self) -> dict:
        return {"file": self.file, "graphs": list(self.graphs), "tensors": self.tensors,
                "references": self.references, "bytes": self.file_bytes, "bytes_before": self.bytes_before,
                "bytes_saved": self.bytes_before - self.tensor_bytes, "alignment": ALIGNMENT,
                "align_threshold": ALIGN_THRESHOLD, "size_threshold": SIZE_THRESHOLD,
                "graph_bytes": dict(self.graph_bytes)}


@dataclass(frozen=True)
class _Tensor:
    index: int                         # position in the graph's initializer walk
    key: tuple                         # (data_type, dims, length, sha256): equal keys, equal bytes
    length: int


def share_weights(folder: Path, files: list[str] | None = None) -> SharedWeights | None:
    """Store each weight shared by the graphs `files` (default: every `*.onnx` in `folder`) once, in
    `folder/SHARED_FILE`, and point the graphs at it; None (and nothing changed) when none share.
    See the module docstring for what moves and in which order the files are written."""
    require("onnx", extra="export")
    folder = Path(folder)
    files = sorted(files) if files is not None else sorted(p.name for p in folder.glob("*.onnx"))
    if (folder / SHARED_FILE).exists():
        raise RuntimeError(f"{folder / SHARED_FILE} exists: the pass runs once, on freshly written graphs")
    found, locations = {}, {}
    for name in files:   # one read of each graph: content keys, and the data files it names now
        found[name], locations[name] = _candidates(folder, name)
    graphs_of = Counter(key for name in files for key in {t.key for t in found[name]})
    taking_part = [name for name in files if any(graphs_of[t.key] > 1 for t in found[name])]
    if not taking_part:
        return None
    before = set().union(*(locations[name] for name in taking_part))
    placed: dict[tuple, tuple[int, int]] = {}          # key -> (offset, length) in SHARED_FILE
    staged: dict[str, bytes] = {}                      # graph file -> its rewritten proto
    references = 0
    with atomic_path(folder / SHARED_FILE) as tmp:     # finished under its final name before any graph names it
        with open(tmp, "wb") as out:
            for name in taking_part:
                model = _load(folder / name)
                tensors = list(_initializers(model))
                for cand in found[name]:
                    tensor = tensors[cand.index]
                    if cand.key not in placed:
                        placed[cand.key] = (_append(out, tensor, folder, cand), cand.length)
                    _point_at(tensor, *placed[cand.key])
                    references += 1
                staged[name] = model.SerializeToString()
    for name in taking_part:                           # each graph swapped whole: old data or new, never neither
        _replace_graph(folder / name, staged.pop(name))
    removed = sorted(before - _data_files(folder, sorted(p.name for p in folder.glob("*.onnx"))))
    for location in removed:
        (folder / location).unlink(missing_ok=True)
    return SharedWeights(SHARED_FILE, tuple(taking_part), len(placed), references,
                         tensor_bytes=sum(length for _, length in placed.values()),
                         file_bytes=(folder / SHARED_FILE).stat().st_size,
                         bytes_before=sum(c.length for name in taking_part for c in found[name]),
                         removed_files=tuple(removed),
                         graph_bytes=tuple((name, sum({c.key: c.length for c in found[name]}.values()))
                                           for name in taking_part))


def _load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _initializers(model):
    """Every initializer, subgraphs' included, in a fixed order (onnx's own walk)."""
    from onnx.external_data_helper import _get_initializer_tensors

    return _get_initializer_tensors(model)


def _candidates(folder: Path, name: str) -> tuple[list[_Tensor], set[str]]:
    """The tensors of `name` that may move to the shared file, each with its content key; the data files it names."""
    from onnx import TensorProto
    from onnx.external_data_helper import ExternalDataInfo

    found, locations = [], set()
    for index, tensor in enumerate(_initializers(_load(folder / name))):
        if _external(tensor):
            locations.add(ExternalDataInfo(tensor).location)
        if tensor.data_type == TensorProto.STRING or not (_external(tensor) or tensor.HasField("raw_data")):
            continue   # typed fields (float_data, ...) are how tiny constants are written; they stay
        digest, length = hashlib.sha256(), 0
        for block in _blocks(tensor, folder):
            digest.update(block)
            length += len(block)
        if length >= SIZE_THRESHOLD or _external(tensor):   # an external one must move: its old file goes
            found.append(_Tensor(index, (tensor.data_type, tuple(tensor.dims), length, digest.hexdigest()), length))
    return found, locations


def _external(tensor) -> bool:
    from onnx.external_data_helper import uses_external_data

    return uses_external_data(tensor)


def _blocks(tensor, folder: Path):
    """A tensor's bytes, in blocks of at most BLOCK: from its raw_data, or read from its data file."""
    if not _external(tensor):
        yield tensor.raw_data
        return
    from onnx.external_data_helper import ExternalDataInfo

    info = ExternalDataInfo(tensor)
    path = folder / info.location
    offset = info.offset or 0
    remaining = info.length if info.length is not None else path.stat().st_size - offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        while remaining > 0:
            block = handle.read(min(BLOCK, remaining))
            if not block:
                raise RuntimeError(f"{path} ends before the bytes of {tensor.name}; the graph's data file is truncated")
            remaining -= len(block)
            yield block


def _append(out, tensor, folder: Path, cand: _Tensor) -> int:
    """Write `tensor`'s bytes at the end of `out` (aligned when large), checked against its key; its offset."""
    offset = out.tell()
    if cand.length > ALIGN_THRESHOLD:
        offset = -(-offset // ALIGNMENT) * ALIGNMENT
        out.write(b"\0" * (offset - out.tell()))
    digest = hashlib.sha256()
    for block in _blocks(tensor, folder):
        digest.update(block)
        out.write(block)
    if digest.hexdigest() != cand.key[3]:
        raise RuntimeError(f"{tensor.name} changed while its graph's weights were being shared")
    return offset


def _point_at(tensor, offset: int, length: int) -> None:
    """Make `tensor` external data in SHARED_FILE at `offset` (onnx's location / offset / length fields)."""
    from onnx import TensorProto

    tensor.ClearField("raw_data")     # (onnx's set_external_data needs the raw bytes present; these may not be)
    del tensor.external_data[:]
    for key, value in (("location", SHARED_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = TensorProto.EXTERNAL


def _replace_graph(path: Path, proto: bytes) -> None:
    """Swap one graph file for its rewritten proto (temp file beside it, then os.replace)."""
    atomic_write(path, proto)


def _data_files(folder: Path, names: list[str]) -> set[str]:
    """The external data files the graphs `names` point to (relative to `folder`)."""
    from onnx.external_data_helper import ExternalDataInfo

    return {ExternalDataInfo(t).location for name in names for t in _initializers(_load(folder / name))
            if _external(t)}
