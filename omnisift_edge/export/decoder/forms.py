"""The decoder's forms, each described once: its graph name, tensors, exporter, validator and runtimes.

A form is the same thinker LLM with a different KV-cache contract. Its record says everything the
export and its manifest need to know about it; the manifest's `kv_cache.<graph>` entry is built from
it (`kv_cache_entry`), so a form's name, kind and runtimes are spelled here and nowhere else in the
export. The exporter and validator are named, not imported, so reading the table loads nothing.

A new form: its `GraphSpec` in `artifact/tensors.py`, a module here with `export_<graph>` and
`validate_<graph>` (starting with `checks.check_export`, validated with `checks`' helpers), and
one `DecoderForm` in `FORMS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from omnisift_edge.artifact.records import DECODER, DECODER_GQA, DECODER_SCATTER
from omnisift_edge.artifact.tensors import GraphSpec, decoder_graph, decoder_gqa_graph, decoder_scatter_graph

CACHE_AXES = ("batch_size", "kv_heads", "cache_length", "head_dim")
IN_PLACE_LOGITS = "rows in logits_index: none on a chunk prefill, the last for a question or decode"


@dataclass(frozen=True)
class DecoderForm:
    """One decoder form: what its graph is called, declares, and which runtimes take it."""

    graph: str                                  # graph name = manifest key = file stem
    kind: str                                   # the manifest's kv_cache kind
    spec: Callable[[int], GraphSpec]            # its tensors by layer count (artifact/tensors.py)
    runtimes: tuple[str, ...]                   # the runtimes that run it
    cache_axes: tuple[str, ...]                 # the axes of every past/present buffer
    logits: str                                 # which rows of logits a call returns
    module: str                                 # the module under export/decoder holding its exporter
    opset: int = 17

    @property
    def file(self) -> str:
        return f"{self.graph}.onnx"

    @property
    def exporter(self) -> Callable:
        """`export_<graph>(thinker, dims, path, *, dtype, max_context, external_data, ...) -> Path`."""
        return self._function("export_")

    @property
    def validator(self) -> Callable:
        """`validate_<graph>(onnx_path, thinker, ...) -> a check with an `ok` property`."""
        return self._function("validate_")

    def _function(self, prefix: str) -> Callable:
        module = importlib.import_module(f"omnisift_edge.export.decoder.{self.module}")
        return getattr(module, prefix + self.graph)

    def kv_cache_entry(self, **fields) -> dict:
        """The manifest's `kv_cache.<graph>`: graph, [file], kind, runtimes, cache_axes, then `fields`
        (the order C++ and the golden manifests read them in)."""
        file = {"file": fields.pop("file")} if "file" in fields else {}
        return {"graph": self.graph, **file, "kind": self.kind, "runtimes": list(self.runtimes),
                "cache_axes": list(self.cache_axes), **fields}


PAST_PRESENT = DecoderForm(
    graph=DECODER, kind="past_present", spec=decoder_graph, runtimes=("tensorrt",),
    cache_axes=("batch_size", "kv_heads", "past_sequence_length", "head_dim"),
    logits="last row of every call", module="past_present")
GQA = DecoderForm(
    graph=DECODER_GQA, kind="shared_buffer", spec=decoder_gqa_graph, runtimes=("onnxruntime",),
    cache_axes=CACHE_AXES, logits=IN_PLACE_LOGITS, module="gqa")
SCATTER = DecoderForm(
    graph=DECODER_SCATTER, kind="in_place_scatter", spec=decoder_scatter_graph,
    runtimes=("tensorrt>=10.15", "tensorrt_rtx"), cache_axes=CACHE_AXES, logits=IN_PLACE_LOGITS,
    module="scatter", opset=24)

FORMS = {form.graph: form for form in (PAST_PRESENT, GQA, SCATTER)}


def form(graph: str) -> DecoderForm:
    """The form whose graph is `graph` (a bug, not the user's, if there is none)."""
    return FORMS[graph]
