"""The reference outputs in an export folder: `reference/<graph>.npz`, one case per recorded run.

Written on the export machine by `omnisift_edge.export.reference.record_reference` (ONNX Runtime on
generated inputs), read on the engine machine by the engines stage's `verify_engines`: the file
format is part of the export folder's contract, so it lives here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnisift_edge.errors import UsageError


@dataclass(frozen=True)
class Case:
    name: str
    profile: str                      # static | prefill | decode
    inputs: dict
    outputs: dict = field(default_factory=dict)


def load_reference(folder: Path, manifest, graph: str) -> list[Case]:
    """The recorded cases of `graph`, inputs and ONNX Runtime outputs, in recording order."""
    from omnisift_edge.artifact.manifest import as_manifest

    entry = as_manifest(manifest).section("reference", {}).get("graphs", {}).get(graph)
    if entry is None:
        raise UsageError(f"{folder} has no reference outputs for {graph}; record them on the export machine: "
                         "omnisift-edge verify DIR --record")
    from omnisift_edge.artifact.checks import contained

    with np.load(contained(folder, entry["file"], f"reference.graphs.{graph}.file"), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    cases = []
    for meta in entry["cases"]:
        pick = lambda kind: {k.split("/", 2)[2]: v for k, v in arrays.items()  # noqa: E731
                             if k.startswith(f"{meta['name']}/{kind}/")}
        cases.append(Case(meta["name"], meta["profile"], pick("in"), pick("out")))
    return cases
