"""`ExportFolder`: an export folder opened for running, as the C++ `omnisift::ExportFolder` opens it.

Every backend (ONNX Runtime graphs, TensorRT engines, the C++ library) reads the same things from
an export: the manifest (schema, checksums, the omnisift-edge version that wrote it), the graph of
each role with its tensor names in declared order, the text embedding table, the tokenizer folder,
and, for engines, one build report. Reading them here, once, keeps the backends from reaching into
the export stage or into each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnisift_edge.artifact.manifest import DECODER, Build, GraphInfo, Manifest, RatioPlan, load_manifest
from omnisift_edge.errors import UsageError, require

ROLES = ("vision_encoder", "audio_encoder", "compressor", "decoder")


@dataclass(frozen=True)
class ExportFolder:
    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: Path, *, verify: bool = True, check_version: bool = True) -> "ExportFolder":
        """Read and check `path/manifest.json` (checksums with `verify`, the writer's version with `check_version`)."""
        path = Path(path)
        manifest = load_manifest(path, verify=verify)
        if check_version:
            check_writer_version(manifest)
        return cls(path, manifest)

    @property
    def float_type(self) -> type:
        return np.float16 if self.manifest.dtype == "fp16" else np.float32

    def graphs_for(self, ratio: float | None) -> dict[str, GraphInfo]:
        """role -> graph: the encoders, the decoder and the compressor of `ratio`."""
        m = self.manifest
        keys = {"vision_encoder": "vision_encoder", "audio_encoder": "audio_encoder", "decoder": DECODER,
                "compressor": m.ratio_plan(ratio).graph}
        return {role: m.graph(key) for role, key in keys.items()}

    def ratio_plan(self, ratio: float | None) -> RatioPlan:
        return self.manifest.ratio_plan(ratio)

    def file(self, relative: str) -> Path:
        return self.path / relative

    def embed_table(self) -> np.ndarray:
        """The text embedding table [V, D] in the export's float type."""
        m = self.manifest
        table = require("safetensors.numpy").load_file(str(self.path / m.embeddings_file))[m.embeddings_tensor]
        return table.astype(self.float_type, copy=False)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest.tokenizer_folder

    def build(self, target: str | None) -> tuple[str, Build]:
        """(target, build report) of the engines to run: `target`, or the only build there is."""
        return choose_build(self.manifest.builds, target, self.path)


def choose_build(builds: dict[str, Build], target: str | None, folder: Path) -> tuple[str, Build]:
    """(target, build report) from a manifest's `builds`: `target`, or the only one; a one-line error if not."""
    if not builds:
        raise UsageError(f"no engines built for this export; run omnisift-edge build {folder} --target ... "
                         "(docs/engines.md)")
    if target is None:
        if len(builds) > 1:
            raise UsageError(f"{folder} has engines for {', '.join(builds)}; pick one with --target")
        target = next(iter(builds))
    if target not in builds:
        raise UsageError(f"{folder} has no engines for {target} (it has {', '.join(builds)}); "
                         f"build them: omnisift-edge build {folder} --target {target}")
    return target, builds[target]


def check_writer_version(manifest: Manifest) -> None:
    """Exports are read by the omnisift-edge minor version that wrote them."""
    from omnisift_edge import __version__

    tools = manifest.section("tools", {})
    wrote = str(tools.get("omnisift_edge", "") if isinstance(tools, dict) else "")
    if wrote.split(".")[:2] != __version__.split(".")[:2]:
        raise UsageError(f"this export was written by omnisift-edge {wrote or 'unknown'}, this is {__version__}; "
                         "export again with this version")
