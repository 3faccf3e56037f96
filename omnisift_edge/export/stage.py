"""The export stage: model + ratios -> validated ONNX graphs and `manifest.json` in one folder.

`export(ExportConfig) -> ExportArtifact`. Everything is written into a hidden temporary folder
beside the output and renamed at the very end, after validation and lint passed: an interrupted
or failed export never leaves a folder that looks complete.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from omnisift_edge.errors import UsageError
from omnisift_edge.model.load import ModelSource

DEFAULT_RATIOS = (0.25,)
OPSETS = (14, 20)   # Optimum's decoder export needs >= 14; TensorRT 10.3's parser and torch's exporter stop at 20


class ExportValidationError(UsageError):
    """A graph disagreed with PyTorch beyond its tolerance; the message carries the numbers."""


@dataclass(frozen=True)
class ExportConfig:
    out: Path
    source: ModelSource = ModelSource()
    ratios: tuple[float, ...] = DEFAULT_RATIOS      # overall fraction of audio+video tokens kept
    resolution: tuple[int, int] = (448, 448)        # frame H, W: multiples of 28
    dtype: str = "fp32"                             # fp32 | fp16 (graphs, embeddings)
    max_context: int = 8192                         # longest KV cache the runtime/engines plan for
    video_drop: float | None = None                 # explicit drops instead of the ratio policy
    audio_drop: float | None = None
    overwrite: bool = False
    opset: int = 17

    def __post_init__(self):
        from omnisift_edge.paths import check_output_dir

        object.__setattr__(self, "out", check_output_dir(self.out))   # a folder we may write, checked up front
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if not self.ratios or not all(0 < r <= 1 for r in self.ratios):
            raise UsageError(f"ratios must be in (0, 1]; got {', '.join(f'{r:g}' for r in self.ratios) or 'none'}")
        if len(set(self.ratios)) != len(self.ratios):
            raise UsageError(f"ratios repeat a value: {self.ratios}")
        from omnisift_edge.model.preprocess import check_resolution

        object.__setattr__(self, "resolution", check_resolution(self.resolution))
        if self.dtype not in ("fp32", "fp16"):
            raise UsageError(f"--dtype must be fp32 or fp16 (got {self.dtype}); TensorRT builds bf16 from fp32 graphs")
        if (self.video_drop is None) != (self.audio_drop is None):
            raise UsageError("--video-drop and --audio-drop go together; give both or neither")
        if self.video_drop is not None:
            for name, value in (("--video-drop", self.video_drop), ("--audio-drop", self.audio_drop)):
                if not 0 <= value < 1:
                    raise UsageError(f"{name} must be in [0, 1) (got {value})")
            if self.ratios != DEFAULT_RATIOS:
                raise UsageError("give either --ratio/--ratios or --video-drop/--audio-drop, not both")
        if self.max_context < 1024:
            raise UsageError(f"--max-context must be at least 1024 tokens (got {self.max_context})")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not OPSETS[0] <= self.opset <= OPSETS[1]:
            raise UsageError(f"--opset must be {OPSETS[0]}..{OPSETS[1]} (got {self.opset}); the default 17 suits "
                             "TensorRT 10.3 and ONNX Runtime")


@dataclass
class ExportArtifact:
    folder: Path
    manifest: dict
    checks: dict = field(default_factory=dict)
    lint: dict = field(default_factory=dict)
    seconds: float = 0.0


def _prepare_output(cfg: ExportConfig) -> Path:
    from omnisift_edge.export.replace import prepare_staging

    return prepare_staging(cfg.out, cfg.overwrite)   # only a previous export or an empty folder is replaced


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished folder in: atomically; the old one (if any) is removed only after the swap."""
    from omnisift_edge.export.replace import publish

    _share(staging)
    publish(staging, out)


def export(cfg: ExportConfig, progress: Callable[[str], None] = lambda _: None) -> ExportArtifact:
    """Export, validate and lint; the folder appears at `cfg.out` only if all of it passed."""
    from omnisift_edge.export import build

    started = time.perf_counter()
    staging = _prepare_output(cfg)
    try:
        with warnings.catch_warnings():
            # tracing static per-chunk shapes is intended: the tracer's "might not generalize" notes are noise
            warnings.filterwarnings("ignore", message=".*might cause the trace to be incorrect.*")
            warnings.filterwarnings("ignore", message="Exporting aten::index operator.*")
            artifact = build.build_folder(cfg, staging, progress)
        _publish(staging, cfg.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    artifact.folder = cfg.out
    artifact.seconds = time.perf_counter() - started
    return artifact


def _share(folder: Path) -> None:
    """Give the staged files the modes a plain write would (temp files are created private), synced."""
    from omnisift_edge.atomic import finish_tree

    finish_tree(folder)


def config_summary(cfg: ExportConfig) -> dict:
    summary = asdict(cfg)
    summary["out"] = str(cfg.out)
    # resolved: `run/profile --backend torch` reload the model from any working folder (issue 13.12)
    summary["source"] = {k: (str(v.resolve()) if isinstance(v, Path) else v) for k, v in asdict(cfg.source).items()}
    return summary
