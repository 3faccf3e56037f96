"""The export stage's typed config, artifact and validation error (shared by stage.py and build.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from omnisift_edge.artifact.manifest import Manifest
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
    weights: str | None = None                      # decoder linear layers: fp32 | fp16 | int8 | int4 (None: dtype)
    block_size: int = 32                            # int4: rows of a weight sharing one scale
    quantize_lm_head: bool = False                  # int8/int4: the LM head too
    calibration: str | None = None                  # int4: gptq (default) | awq | rtn; int8: rtn (export/decoder/awq.py)
    calibration_data: tuple[Path, ...] = ()         # awq: clips to calibrate on (default: generated clips)
    batch_graphs: bool = True                       # also the batched forms of the encoders and compressors (stream pools)

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
        if not isinstance(self.batch_graphs, bool):
            raise UsageError(f"batch_graphs must be True or False (got {self.batch_graphs!r})")
        if self.weights is None:
            object.__setattr__(self, "weights", self.dtype)
        if self.weights in ("fp32", "fp16") and self.weights != self.dtype:
            raise UsageError(f"--weights {self.weights} needs --dtype {self.weights} (float weights are the graph's "
                             f"dtype); or --weights int8/int4")
        _check_calibration(self)
        if self.quantized:
            self.quant_config()   # validates the block size
        elif self.weights not in ("fp32", "fp16"):
            raise UsageError(f"--weights must be fp32, fp16, int8 or int4 (got {self.weights!r})")
        from omnisift_edge.artifact.limits import check_max_context

        check_max_context(self.max_context)      # the model's positions: checked where the model is loaded
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not OPSETS[0] <= self.opset <= OPSETS[1]:
            raise UsageError(f"--opset must be {OPSETS[0]}..{OPSETS[1]} (got {self.opset}); the default 17 suits "
                             "TensorRT 10.3 and ONNX Runtime")

    @property
    def quantized(self) -> bool:
        return self.weights in ("int8", "int4")

    def quant_config(self):
        """The decoder's `quantize.QuantConfig` (int8/int4 exports only)."""
        from omnisift_edge.export.decoder.quantize import QuantConfig

        return QuantConfig(self.weights, block_size=self.block_size, lm_head=self.quantize_lm_head,
                           method=self.calibration or "rtn")


def _check_calibration(cfg: ExportConfig) -> None:
    """--calibration gptq|awq|rtn: gptq (the default) and awq for int4 only; --calibration-data files exist
    (checked up front)."""
    from omnisift_edge.export.decoder.awq import DEFAULT_METHOD, METHODS, check_calibration_files

    if cfg.calibration is not None and cfg.calibration not in METHODS:
        raise UsageError(f"--calibration must be {' or '.join(METHODS)} (got {cfg.calibration!r})")
    if cfg.calibration is not None and not cfg.quantized:
        raise UsageError(f"--calibration {cfg.calibration} is for --weights int4 (or int8 with rtn); "
                         f"this export keeps {cfg.weights} weights")
    if cfg.calibration in ("awq", "gptq") and cfg.weights != "int4":
        raise UsageError(f"--calibration {cfg.calibration} is for --weights int4; int8 per channel uses rtn "
                         "(leave --calibration out)")
    if cfg.calibration is None and cfg.quantized:
        object.__setattr__(cfg, "calibration", DEFAULT_METHOD if cfg.weights == "int4" else "rtn")
    object.__setattr__(cfg, "calibration_data", tuple(Path(p) for p in cfg.calibration_data))
    if cfg.calibration_data and cfg.calibration == "rtn":
        raise UsageError("--calibration-data calibrates --calibration gptq or awq (int4); leave it out for rtn")
    check_calibration_files(cfg.calibration_data)


@dataclass
class ExportArtifact:
    folder: Path
    manifest: Manifest                 # artifact.manifest.Manifest, as written
    checks: dict = field(default_factory=dict)
    lint: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def onnx_files(self) -> list[str]:
        """Every ONNX graph file the export wrote: the pipeline's graphs and the decoder forms (kv_cache)."""
        files = [g.file for g in self.manifest.graphs.values()]
        return files + [k.file for k in (self.manifest.kv_cache or {}).values() if k.file and k.file not in files]


def config_summary(cfg: ExportConfig) -> dict:
    summary = asdict(cfg)
    summary["out"] = str(cfg.out)
    summary["calibration_data"] = [str(p) for p in cfg.calibration_data]
    # resolved: `run/profile --backend torch` reload the model from any working folder (issue 13.12)
    summary["source"] = {k: (str(v.resolve()) if isinstance(v, Path) else v) for k, v in asdict(cfg.source).items()}
    return summary
