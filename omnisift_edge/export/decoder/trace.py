"""How every decoder form is traced: Optimum's `export` into a staged file, metadata, one data file, then into place.

`export_staged` is the one path from a form's module (`past_present_config.ThinkerDecoder`,
`model.inplace_kv.InPlaceDecoder`, `model.scatter_kv.ScatterDecoder`) and its OnnxConfig to a graph
file: traced under Optimum's ModelPatcher in a hidden folder beside the target
(`export.onnx_io.staged_graph`), its `omnisift_edge.*` metadata recorded, any external data in
`<name>.onnx.data`, an optional graph pass and validation run, and only then moved into place.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

from omnisift_edge.atomic import move_file
from omnisift_edge.errors import UsageError, require
from omnisift_edge.export.onnx_io import data_path, staged_graph, write_graph

META_PREFIX = "omnisift_edge."


def module_in_dtype(module, thinker, dtype: str):
    """`module` (a wrapper around `thinker`'s modules) in `dtype`, in eval mode; a copy when the dtype differs."""
    torch = require("torch")

    want = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    if next(thinker.model.parameters()).dtype != want:
        # never cast the caller's model in place; load it in `dtype` to avoid this copy for big models
        module = copy.deepcopy(module).to(want)
    return module.eval()


def export_staged(module, config, path: Path, *, graph: str, dtype: str, opset: int, max_context: int,
                  external_data: bool | None, validate=None, rewrite=None) -> Path:
    """Trace `module` with Optimum's `export` under `config` into `path`: staged in a hidden folder beside
    it, metadata and external data finished, `rewrite(staged)` (a graph pass) and `validate(staged,
    output_names)` run if given, then moved into place (data first). Shared by the decoder's forms
    (decoder.onnx, decoder_gqa.onnx, decoder_scatter.onnx)."""
    from optimum.exporters.onnx.convert import export

    from omnisift_edge.export.memory_trace import mark

    mark(f"{graph}: trace (Optimum)")
    device = str(next(module.parameters()).device)
    with staged_graph(path) as staged, _optimum_sessions_low_memory():
        _, output_names = export(module, config, staged, opset=opset, device=device,
                                 dtype=dtype if dtype == "fp16" else None)
        _finish(staged, external_data, {"graph": graph, "dtype": dtype, "opset": str(opset),
                                        "max_context": str(max_context)})
        if rewrite is not None:
            mark(f"{graph}: graph pass")
            rewrite(staged)
        if validate is not None:
            mark(f"{graph}: Optimum's output check")
            validate(staged, output_names)
    return path


@contextlib.contextmanager
def _optimum_sessions_low_memory():
    """Optimum's `fix_dynamic_axes` runs the traced graph once in its own ONNX Runtime session; with the default
    node order every fp16 weight's Cast to float32 runs first, so that call held a float32 copy of all the
    weights (2x them; measured, docs/benchmarks.md). Patched for the trace (it imports
    `onnxruntime.InferenceSession` when it runs): the same session with the export's low-memory settings
    (artifact/onnx_runtime.py, `low_memory_sessions`), its optimization level kept."""
    import onnxruntime as ort

    from omnisift_edge.artifact.onnx_runtime import low_memory_options

    original = ort.InferenceSession

    class LowMemorySession(original):
        def __init__(self, path_or_bytes, sess_options=None, providers=None, **kwargs):
            options = sess_options if sess_options is not None else ort.SessionOptions()
            low_memory_options(ort, options, optimize=options.graph_optimization_level)
            super().__init__(path_or_bytes, sess_options=options, providers=providers, **kwargs)

    ort.InferenceSession = LowMemorySession
    try:
        yield
    finally:
        ort.InferenceSession = original


def _finish(staged: Path, external_data: bool | None, metadata: dict[str, str]) -> None:
    """Record metadata and put any external data in `<name>.onnx.data` (one file)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(staged), load_external_data=False)
    external = [t for t in _all_tensors(model) if uses_external_data(t)]
    location = data_path(staged).name
    if external:
        if external_data is False:
            raise UsageError(f"the decoder graph is over 2 GB, so ONNX needs its weights in external data; "
                             f"drop external_data=False (weights: {_folder_bytes(staged.parent) / 2**30:.1f} GB)")
        _rename_data(staged, external, location)
        _embed_attribute_tensors(model, staged.parent)
    set_metadata(model, metadata)
    if external_data and not external:
        model = onnx.load(str(staged))   # small: under 2 GB
        set_metadata(model, metadata)
    write_graph(model, staged, external_data=bool(external_data and not external))   # else tensors stay put


def _embed_attribute_tensors(model, folder: Path) -> None:
    """Put Constant nodes' values back into the graph: Optimum saves a graph over 2 GB with
    convert_attribute=True, so they went to the data file too, where `share_weights` (initializers only)
    would leave them pointing at a file it deletes. They are small (the weights are initializers)."""
    from onnx import TensorProto
    from onnx.external_data_helper import _get_attribute_tensors, load_external_data_for_tensor, uses_external_data

    for tensor in _get_attribute_tensors(model):
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(folder))
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT


def _rename_data(staged: Path, external: list, location: str) -> None:
    """Optimum's one external data file renamed to `location`, and the tensors pointed at it."""
    old = {e.value for t in external for e in t.external_data if e.key == "location"}
    if old == {location}:
        return
    if len(old) != 1:
        raise RuntimeError(f"expected Optimum to write one external data file, got {sorted(old)}")
    move_file(staged.parent / old.pop(), staged.parent / location)
    for tensor in external:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location


def _all_tensors(model):
    from onnx.external_data_helper import _get_all_tensors   # initializers and Constant attributes

    return list(_get_all_tensors(model))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def set_metadata(model, metadata: dict[str, str]) -> None:
    """Replace the graph's `omnisift_edge.*` metadata entries with `metadata` (keys without the prefix)."""
    keep = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value


def metadata(model) -> dict[str, str]:
    """The graph's `omnisift_edge.*` metadata, keys without the prefix."""
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}
