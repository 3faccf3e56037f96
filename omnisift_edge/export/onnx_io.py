"""ONNX files written whole: a graph (and its external data file) appears at its name complete, or not at all.

Every graph writer of the export uses these: `atomic_path` for a graph that embeds its weights and is
written in one go (the compressor), `staged_graph` + `write_graph` for a graph that may carry a
`<name>.onnx.data` file (encoders, the decoder forms, the quantized decoder). The data file is moved
into place before the graph, so the graph's name never points at missing weights, and a stale data
file of an earlier, bigger export is removed once the new graph no longer names it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from omnisift_edge.atomic import atomic_path as _atomic_path
from omnisift_edge.atomic import move_file

DATA_SUFFIX = ".data"          # external data of `<name>.onnx` lives in `<name>.onnx.data`


def atomic_path(path: Path, suffix: str = ".onnx"):
    """`omnisift_edge.atomic.atomic_path` with an .onnx suffix (onnx.save picks its format by it)."""
    return _atomic_path(path, suffix)


def data_path(path: Path) -> Path:
    """The external data file of the graph at `path`."""
    return path.with_name(path.name + DATA_SUFFIX)


@contextlib.contextmanager
def staged_graph(path) -> Iterator[Path]:
    """Yield `path`'s name inside a hidden staging folder beside it; write the graph (and `<name>.data`)
    there. When the block completes the data file, then the graph, are moved into place; on any error
    (or Ctrl-C) the staging folder goes and `path` is as it was. Other files left in the staging folder
    (a tracer's scratch output) go with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = staging / path.name
        yield staged
        _move_into_place(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_graph(model, staged: Path, *, external_data: bool) -> None:
    """Save the ONNX `model` at `staged`: its tensors over 1 KiB in one `<name>.data` file beside it when
    `external_data`, else embedded (under 2 GB). Tensors already external stay where they point."""
    import onnx

    if external_data:
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path(staged).name, size_threshold=1024)
    else:
        onnx.save_model(model, str(staged))


def uses_external_data(path: Path) -> bool:
    """Whether the graph at `path` keeps any tensor in an external file (its weights are not read)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data as external

    model = onnx.load(str(path), load_external_data=False)
    return any(external(t) for t in _get_all_tensors(model))   # initializers and Constant attributes


def _move_into_place(staged: Path, path: Path) -> None:
    """Data file first, then the graph: `path` never names a graph whose data is missing."""
    data, target_data = data_path(staged), data_path(path)
    moved = data.exists()
    if moved:
        move_file(data, target_data)
    move_file(staged, path)
    if not moved and target_data.exists() and not uses_external_data(path):
        target_data.unlink()   # a stale data file of an earlier, bigger export
