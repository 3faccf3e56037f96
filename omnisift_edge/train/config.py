"""`TrainConfig` (every option of `omnisift-edge train`, validated here) and `TrainArtifact`.

No torch at import: the CLI builds and validates the config before anything heavy loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from omnisift_edge.errors import UsageError
from omnisift_edge.model.load import ModelSource
from omnisift_edge.model.preprocess import parse_resolution
from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT

LLM_MODES = ("frozen", "full", "lora")
TRAIN_DTYPES = ("auto", "fp32", "bf16")
BAD_LINE_MODES = ("skip", "stop")
DEFAULT_RATIO = 0.25


@dataclass(frozen=True)
class TrainConfig:
    """Train the OmniSIFT selector (and optionally the thinker LLM) on a JSONL of video QA pairs."""

    data: Path                                  # JSONL: {"video", "audio"?, "question", "answer"} per line
    out: Path                                   # checkpoints, log.jsonl, the final compressor.safetensors
    source: ModelSource = ModelSource()         # model folder / OmniSIFT checkpoint / tiny default; device
    ratio: float | None = None                  # overall fraction of audio+video tokens kept; None: 0.25
    video_drop: float | None = None             # explicit drops instead of the ratio (give both)
    audio_drop: float | None = None
    resolution: tuple[int, int] | str = (448, 448)   # frame H, W: multiples of 28
    epochs: float = 1.0                         # passes over the good lines (the authors: 1)
    max_steps: int | None = None                # optimizer steps; overrides epochs when given
    lr: float = 1e-5                            # peak learning rate (the authors': 1e-5)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03                  # linear warmup over this fraction of the steps, then cosine to 0
    warmup_steps: int | None = None             # or this many steps
    batch_size: int = 1                         # clips per forward
    grad_accum: int = 1                         # forwards per optimizer step (global batch = product)
    max_grad_norm: float | None = 1.0
    seed: int = 0
    llm: str = "frozen"                         # frozen | full | lora (needs peft: the `train` extra)
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    dtype: str = "auto"                         # auto: bf16 on a GPU, fp32 on the CPU
    on_bad_line: str = "skip"                   # skip: report and train on the good lines; stop: report and stop
    resume: bool = False                        # continue from out/latest.json's checkpoint
    save_every: int = 500                       # checkpoint every N optimizer steps (0: only at the end)
    keep_checkpoints: int = 2                   # step folders kept (the newest ones)
    max_seconds: float | None = None            # cut clips to this length (None: whole clips)
    workers: int = 2                            # threads decoding ahead (0: decode in the main thread); same results
    selector_hidden: int = 512                  # a new selector's width, when the model has none
    selector_heads: int = 8
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT   # the chat's system message; None: the template's

    def __post_init__(self):
        object.__setattr__(self, "data", Path(self.data))
        from omnisift_edge.paths import check_output_dir

        object.__setattr__(self, "out", check_output_dir(self.out))   # writable, checked before any work
        if not isinstance(self.source, ModelSource):
            raise UsageError(f"source must be a ModelSource (got {type(self.source).__name__})")
        object.__setattr__(self, "resolution", parse_resolution(self.resolution))
        self._check_drops()
        _positive("epochs", self.epochs, allow_float=True)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be in (0, 1) (got {self.lr}); the authors used 1e-5")
        if not 0 <= self.weight_decay < 1:
            raise UsageError(f"--weight-decay must be in [0, 1) (got {self.weight_decay})")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise UsageError(f"--warmup-steps must be an int >= 0 (got {self.warmup_steps!r})")
        _positive("batch_size", self.batch_size)
        _positive("grad_accum", self.grad_accum)
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise UsageError(f"--max-grad-norm must be > 0, or None for no clipping (got {self.max_grad_norm})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be an int >= 0 (got {self.seed!r})")
        _choice("llm", self.llm, LLM_MODES)
        if self.llm == "lora":
            _positive("lora_rank", self.lora_rank)
            _positive("lora_alpha", self.lora_alpha)
            if not 0 <= self.lora_dropout < 1:
                raise UsageError(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        _choice("dtype", self.dtype, TRAIN_DTYPES, hint="fp16 training needs loss scaling; use bf16")
        _choice("on_bad_line", self.on_bad_line, BAD_LINE_MODES)
        if isinstance(self.save_every, bool) or not isinstance(self.save_every, int) or self.save_every < 0:
            raise UsageError(f"--save-every must be an int >= 0 (got {self.save_every!r}); 0 saves at the end only")
        _positive("keep_checkpoints", self.keep_checkpoints)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 0 <= self.workers <= 64:
            raise UsageError(f"--workers must be an int in [0, 64] (got {self.workers!r}); 0 decodes in the main thread")
        if self.max_seconds is not None and not (self.max_seconds > 0 and math.isfinite(self.max_seconds)):
            raise UsageError(f"--max-seconds must be > 0 (got {self.max_seconds}); omit it for whole clips")
        _positive("selector_hidden", self.selector_hidden)
        _positive("selector_heads", self.selector_heads)
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise UsageError(f"--system-prompt must be text or None (got {type(self.system_prompt).__name__})")
        if self.selector_hidden % 2 or self.selector_hidden % self.selector_heads:
            raise UsageError(f"--selector-hidden ({self.selector_hidden}) must be even and divisible by "
                             f"--selector-heads ({self.selector_heads})")

    def _check_drops(self) -> None:
        explicit = (self.video_drop, self.audio_drop)
        if (explicit[0] is None) != (explicit[1] is None):
            raise UsageError("--video-drop and --audio-drop go together; give both or neither")
        if explicit[0] is not None:
            if self.ratio is not None:
                raise UsageError("give either --ratio or --video-drop/--audio-drop, not both")
            for name, value in (("--video-drop", self.video_drop), ("--audio-drop", self.audio_drop)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                    raise UsageError(f"{name} must be in [0, 1) (got {value!r})")
            if self.audio_drop == 0:
                raise UsageError("--audio-drop 0 keeps every audio token, so the selector has nothing to learn; "
                                 "use 0.3 (the authors') or more")
            return
        if self.ratio is None:
            object.__setattr__(self, "ratio", DEFAULT_RATIO)
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio < 1:
            raise UsageError(f"--ratio must be in (0, 1) for training (got {self.ratio!r}); at 1 nothing is "
                             "dropped and the selector has nothing to learn")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def torch_dtype_name(self) -> str:
        """fp32 or bf16: `dtype`, with auto resolved by the device."""
        if self.dtype != "auto":
            return self.dtype
        return "bf16" if self.source.device.startswith("cuda") else "fp32"

    def fingerprint(self) -> dict:
        """What a resumed run must share with the run that wrote the checkpoint: everything that changes
        which examples a step sees or what it computes (not where it runs, how often it saves, or
        how many threads decode)."""
        return {
            "data": str(self.data.resolve()), "data_sha256": _file_sha256(self.data),
            "model": str(self.source.path) if self.source.path else None,
            "compressor_heads": self.source.selector_heads, "max_grad_norm": self.max_grad_norm,
            "lora_dropout": self.lora_dropout, "selector_hidden": self.selector_hidden,
            "selector_heads": self.selector_heads,
            "compressor": str(self.source.compressor) if self.source.compressor else None,
            "seed_model": self.source.seed, "ratio": self.ratio, "video_drop": self.video_drop,
            "audio_drop": self.audio_drop, "resolution": list(self.resolution), "epochs": self.epochs,
            "max_steps": self.max_steps, "lr": self.lr, "weight_decay": self.weight_decay,
            "warmup_ratio": self.warmup_ratio, "warmup_steps": self.warmup_steps, "batch_size": self.batch_size,
            "grad_accum": self.grad_accum, "seed": self.seed, "llm": self.llm, "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha, "dtype": self.torch_dtype_name, "max_seconds": self.max_seconds,
            "system_prompt": self.system_prompt,
        }


@dataclass(frozen=True)
class BadLine:
    """A JSONL line that was not trained on, and why."""

    line: int       # 1-based line number in the JSONL file
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class TrainArtifact:
    """What `train` leaves: the folder, the final selector file, the numbers."""

    out: Path
    compressor: Path                        # out/compressor.safetensors (thinker.compressor.* names)
    llm_weights: Path | None                # out/llm.safetensors (llm=full) or out/adapter/ (llm=lora)
    log: Path                               # out/log.jsonl: one line per optimizer step
    steps: int                              # optimizer steps done (in all, including resumed ones)
    good_lines: int
    bad_lines: list[BadLine] = field(default_factory=list)
    rho_video: float = 0.0
    rho_audio: float = 0.0
    first_loss: float | None = None         # mean loss of the first logged step of this run
    last_loss: float | None = None
    kept_ratio: float | None = None         # achieved audio+video kept fraction over this run
    resumed_from: int | None = None         # the step a resumed run started at
    seconds: float = 0.0

    def summary(self) -> str:
        """A few lines for the command line."""
        loss = (f"loss {self.first_loss:.4f} -> {self.last_loss:.4f}" if self.first_loss is not None
                else "no step run (already complete)")
        kept = f", kept {self.kept_ratio:.1%} of audio+video tokens" if self.kept_ratio is not None else ""
        lines = [f"trained {self.steps} steps on {self.good_lines} clips in {self.seconds:.1f}s: {loss}{kept} "
                 f"(video drop {self.rho_video:.3f}, audio drop {self.rho_audio:.3f})",
                 f"selector: {self.compressor}" + (f"\nLLM: {self.llm_weights}" if self.llm_weights else ""),
                 f"log: {self.log}"]
        if self.bad_lines:
            lines.append(f"{len(self.bad_lines)} line(s) skipped: " + "; ".join(str(b) for b in self.bad_lines[:5]))
        return "\n".join(lines)


def _file_sha256(path: Path) -> str | None:
    from omnisift_edge.artifact.manifest import sha256

    try:
        return sha256(path)
    except OSError:
        return None        # read_records reports a missing file with its fix


def _positive(name: str, value, *, allow_float: bool = False) -> None:
    kinds = (int, float) if allow_float else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or not math.isfinite(value):
        kind = "a number" if allow_float else "an int"
        raise UsageError(f"--{name.replace('_', '-')} must be {kind} > 0 (got {value!r})")


def _choice(name: str, value, options: tuple[str, ...], hint: str = "") -> None:
    if value not in options:
        extra = f"; {hint}" if hint else ""
        raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(options)} (got {value!r}){extra}")
