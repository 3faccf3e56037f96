"""`predict_speed(SpeedConfig) -> SpeedPlan`: per ratio, the predicted time of each stage of a 2-s
chunk on a target, time to first answer token, decode speed and the stream's real-time factor.

Every figure is a roofline (roofline.py) over the graphs' real shapes: the vision encoder on the
chunk's 2 temporal grids, the audio encoder on its 2-s window, the compressor on the chunk's tokens,
the decoder's chunk prefill of the K kept tokens on a full cache (the steady state of a long or
sliding stream, the slowest), the question's prefill with the LM head (TTFT), and one decode step
at a short cache (the prompt and 10 s of stream) and at the full window. The real-time factor is
the chunk's time over its 2 seconds (< 1 keeps up with a live camera). Memory per target comes
from memory.py: the largest context that fits, and so how many seconds of stream a window holds.

From a bare config.json (ratios mapped to drops by compress/ratio.py's policy) or an export folder
(its recorded sizes, weights mode and per-ratio K; a ratio it lacks is a one-line error).
docs/engines.md ("Predicted speed") states the assumptions; docs/benchmarks.md checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from omnisift_edge.engines import roofline as rf
from omnisift_edge.engines.hardware import EFFICIENCY, Hardware, efficiency, hardware_for
from omnisift_edge.engines.memory import FLOAT_BYTES, MemoryConfig, kv_per_token, plan_memory, weight_bytes
from omnisift_edge.errors import UsageError
from omnisift_edge.model.shape import ThinkerShape

CHUNK_SECONDS = 2.0
QUESTION_TOKENS = 32       # the question turn: '<|im_end|>\n<|im_start|>user\n' + ~20 words + the assistant opening
PROMPT_TOKENS = 24         # the system turn and the stream's opening before the first chunk
SHORT_STREAM_CHUNKS = 5    # "short window": the prompt and 10 s of stream
SPEED_STAGES = ("vision_encoder", "audio_encoder", "compressor", "prefill")


@dataclass(frozen=True)
class SpeedConfig:
    shape: ThinkerShape
    target: str
    kept: dict                              # ratio -> (video, audio) tokens kept per chunk
    resolution: tuple[int, int] = (448, 448)
    dtype: str = "fp16"
    weights: str | None = None              # decoder linear layers (None: dtype)
    block_size: int = 32
    lm_head_quantized: bool = False
    max_context: int = 8192

    def memory_config(self, kept_total: int) -> MemoryConfig:
        return MemoryConfig(self.shape, dtype=self.dtype, weights=self.weights, block_size=self.block_size,
                            lm_head_quantized=self.lm_head_quantized, max_context=self.max_context,
                            resolution=self.resolution, prefill=max(kept_total, QUESTION_TOKENS))


@dataclass(frozen=True)
class RatioSpeed:
    ratio: float
    kept: int                               # tokens kept per chunk (video + audio)
    stages: dict                            # stage -> StageTime, per chunk (prefill at the full window)
    chunk: rf.StageTime
    ttft: rf.StageTime                      # the question's prefill + LM head on the full window
    decode_short: rf.StageTime              # one decode step on the prompt + 10 s of stream
    decode_full: rf.StageTime               # ... on the full window
    window_tokens: int                      # the window the full figures use
    fit_context: int | None                 # largest context that fits the target (None: not a preset)

    @property
    def real_time_factor(self) -> float:
        return self.chunk.seconds / CHUNK_SECONDS

    @property
    def window_seconds(self) -> float | None:
        """Seconds of stream the largest context that fits holds at this ratio."""
        if self.fit_context is None:
            return None
        return max(0, self.fit_context - PROMPT_TOKENS - QUESTION_TOKENS) // self.kept * CHUNK_SECONDS

    def to_dict(self) -> dict:
        def one(t: rf.StageTime) -> dict:
            return {"ms": round(t.ms, 3), "bound": t.bound, "gflop": round(t.work.flops / 1e9, 3),
                    "mbytes": round(t.work.bytes / 1e6, 3)}

        return {"ratio": self.ratio, "kept_per_chunk": self.kept, "stages": {k: one(v) for k, v in self.stages.items()},
                "chunk": one(self.chunk), "real_time_factor": self.real_time_factor, "ttft": one(self.ttft),
                "decode_tokens_per_s_short": 1 / self.decode_short.seconds, "decode_short": one(self.decode_short),
                "decode_tokens_per_s_full": 1 / self.decode_full.seconds, "decode_full": one(self.decode_full),
                "window_tokens": self.window_tokens, "fit_context": self.fit_context,
                "window_seconds": self.window_seconds}


@dataclass(frozen=True)
class SpeedPlan:
    config: SpeedConfig
    hardware: Hardware
    precision: str                          # the products' precision on the target
    ratios: tuple[RatioSpeed, ...] = field(default=())

    def ratio(self, ratio: float) -> RatioSpeed:
        return next(r for r in self.ratios if abs(r.ratio - ratio) < 1e-9)

    def to_dict(self) -> dict:
        c, h = self.config, self.hardware
        return {"target": c.target, "hardware": h.__dict__, "precision": self.precision, "weights": c.weights or c.dtype,
                "resolution": list(c.resolution), "max_context": c.max_context,
                "efficiency": {f"{k[0]}.{k[1]}": e.value for k, e in EFFICIENCY.items() if k[0] == h.kind},
                "ratios": [r.to_dict() for r in self.ratios]}

    def summary(self) -> str:
        c, h = self.config, self.hardware
        lines = [f"predicted speed on {c.target}: {h.bandwidth_gbs:g} GB/s, {h.math_rate(self.precision) / 1e12:g} "
                 f"T{self.precision} ops/s (source: {h.source})",
                 f"  roofline per call: max(FLOPs / (rate x {efficiency(h, 'math').value:g}), bytes / (bandwidth x "
                 f"{efficiency(h, 'stream').value:g})); decoder weights {c.weights or c.dtype}, {c.dtype} elsewhere, "
                 f"{c.resolution[0]}x{c.resolution[1]}; prefill and full-window decode on a {c.max_context}-token cache",
                 f"  {'ratio':>5} {'kept':>5} " + " ".join(f"{s[:10]:>15}" for s in SPEED_STAGES)
                 + f" {'chunk ms':>9} {'RTF':>5} {'TTFT ms':>9} {'tok/s short':>11} {'tok/s full':>10}  window held"]
        for r in self.ratios:
            cells = " ".join(f"{_ms(r.stages[s]):>15}" for s in SPEED_STAGES)
            held = ("" if r.window_seconds is None else f"{r.window_seconds:.0f} s in {r.fit_context} tokens" if r.fit_context
                    else "does not fit")
            lines.append(f"  {r.ratio:>5g} {r.kept:>5} {cells} {r.chunk.ms:9.1f} {r.real_time_factor:5.2f} "
                         f"{r.ttft.ms:9.1f} {1 / r.decode_short.seconds:11.1f} {1 / r.decode_full.seconds:10.1f}  {held}")
        lines.append("  (ms per 2-s chunk, (m) memory-bound / (M) math-bound; RTF = chunk / 2 s, < 1 keeps up; TTFT = "
                     f"the question's {QUESTION_TOKENS}-token prefill + LM head; window = seconds of stream the largest "
                     "context that fits holds)")
        return "\n".join(lines)


def _ms(t: rf.StageTime) -> str:
    return f"{t.ms:.{3 if t.ms < 1 else 1}f} ({'M' if t.bound == 'math' else 'm'})"


def _precision(cfg: SpeedConfig, hw: Hardware) -> str:
    return "fp32" if cfg.dtype == "fp32" or hw.kind == "cpu" else "fp16"


def predict_speed(cfg: SpeedConfig, hardware: Hardware | None = None) -> SpeedPlan:
    """Per ratio in `cfg.kept`, the roofline of each stage on `cfg.target` (see the module docstring);
    `hardware` replaces the target's figures (a probe taken elsewhere)."""
    hw = hardware or hardware_for(cfg.target)
    precision = _precision(cfg, hw)
    # the CPU provider runs every graph in fp32 (hardware.cpu_hardware): weights and cache are read as fp32
    run = replace(cfg, dtype="fp32", weights="fp32", lm_head_quantized=False) if hw.kind == "cpu" else cfg
    rows = tuple(_ratio_speed(run, hw, precision, ratio, kept) for ratio, kept in sorted(cfg.kept.items(), reverse=True))
    return SpeedPlan(cfg, hw, precision, rows)


def _ratio_speed(cfg: SpeedConfig, hw: Hardware, precision: str, ratio: float, kept: tuple[int, int]) -> RatioSpeed:
    total = sum(kept)
    mem = cfg.memory_config(total)
    weights, _ = weight_bytes(mem)
    act, shape = FLOAT_BYTES[mem.dtype], cfg.shape
    head = _head_bytes(mem)
    body = weights["decoder"] - head
    kv = kv_per_token(mem) // 2                                  # a call reads one buffer (past) and appends
    full = cfg.max_context - total
    stages = {
        "vision_encoder": rf.time_on(rf.vision_work(shape.vision, cfg.resolution, weights["vision_encoder"], act),
                                     hw, precision),
        "audio_encoder": rf.time_on(rf.audio_work(shape.audio, weights["audio_encoder"], act), hw, precision),
        "compressor": rf.time_on(rf.compressor_work(shape.text.hidden, _chunk_tokens(shape, cfg.resolution),
                                                    weights["compressor"], act), hw, precision),
        "prefill": rf.time_on(rf.decoder_work(shape.text, tokens=total, past=full, body_bytes=body, head_bytes=head,
                                              kv_bytes=kv, act=act, logits=False), hw, precision),
    }
    short = PROMPT_TOKENS + SHORT_STREAM_CHUNKS * total + QUESTION_TOKENS

    def step(past: int, tokens: int = 1) -> rf.StageTime:
        return rf.time_on(rf.decoder_work(shape.text, tokens=tokens, past=past, body_bytes=body, head_bytes=head,
                                          kv_bytes=kv, act=act, logits=True), hw, precision)

    return RatioSpeed(ratio, total, stages, rf.add_times(*stages.values()),
                      step(cfg.max_context - QUESTION_TOKENS, QUESTION_TOKENS), step(min(short, cfg.max_context - 1)),
                      step(cfg.max_context - 1), cfg.max_context, _fit_context(cfg, mem))


def _chunk_tokens(shape: ThinkerShape, resolution: tuple[int, int]) -> int:
    """Tokens a chunk brings to the compressor: 2 merged grids of video and 50 audio."""
    h, w = resolution
    m = shape.vision.patch * shape.vision.merge
    return 2 * (h // m) * (w // m) + rf.AUDIO_TOKENS


def _head_bytes(mem: MemoryConfig) -> int:
    """The LM head's bytes as memory.weight_bytes counts them (tied heads: the graph's copy)."""
    t, fb = mem.shape.text, FLOAT_BYTES[mem.dtype]
    k, n = t.hidden, t.vocab
    if mem.lm_head_quantized and mem.weights == "int4":
        return k * n // 2 + (k // mem.block_size) * n * fb
    if mem.lm_head_quantized and mem.weights == "int8":
        return k * n + n * fb
    return k * n * fb


def _fit_context(cfg: SpeedConfig, mem: MemoryConfig) -> int | None:
    from omnisift_edge.engines.memory import FIT_TARGETS

    if cfg.target not in FIT_TARGETS:
        return None
    return plan_memory(mem, targets=(cfg.target,)).fits[0].max_context


def kept_for_ratios(ratios, resolution: tuple[int, int], shape: ThinkerShape) -> dict:
    """ratio -> (video, audio) kept per chunk under compress/ratio.py's policy (a bare config)."""
    from omnisift_edge.compress.ratio import drops_for_ratio, kept_per_chunk

    h, w = resolution
    m = shape.vision.patch * shape.vision.merge
    per_frame = (h // m) * (w // m)
    kept = {}
    for ratio in ratios:
        keep = kept_per_chunk(per_frame, *drops_for_ratio(ratio, per_frame))
        kept[float(ratio)] = (keep.video, keep.audio)
    return kept


def speed_for_config(path, *, target: str, ratios, resolution, dtype: str, weights: str | None, block_size: int,
                     lm_head_quantized: bool, max_context: int) -> SpeedPlan:
    """`plan CONFIG --target T`: a bare Qwen2.5-Omni config.json (memory.read_config's one-line errors)."""
    from omnisift_edge.engines.memory import read_config

    shape = read_config(path)
    return predict_speed(SpeedConfig(shape, target, kept_for_ratios(ratios, resolution, shape), resolution, dtype,
                                     weights, block_size, lm_head_quantized, max_context))


def speed_for_export(folder, *, target: str, ratios=None, max_context: int | None = None,
                     hardware: Hardware | None = None) -> SpeedPlan:
    """`plan EXPORT --target T`: the export's recorded sizes, weights and per-ratio K."""
    from omnisift_edge.artifact.manifest import load_manifest

    manifest = load_manifest(Path(folder), verify=False)
    record = manifest.section("thinker_shape")
    if record is None:
        raise UsageError(f"{folder} predates recorded model sizes (thinker_shape); export again, or plan its config.json")
    shape = ThinkerShape.from_record(record)
    plans = [manifest.ratio_plan(r) for r in ratios] if ratios else list(manifest.ratios)
    quant = manifest.weights
    weights = quant.mode if quant is not None and quant.bits in (4, 8) else None
    return predict_speed(SpeedConfig(shape, target, {p.ratio: (p.kept_video, p.kept_audio) for p in plans},
                                     manifest.resolution, "fp16", weights,   # the engines' default precision
                                     (quant and quant.block_size) or 32, bool(quant and quant.lm_head_quantized),
                                     max_context or manifest.max_context), hardware)


def is_export(path) -> bool:
    from omnisift_edge.artifact.manifest import MANIFEST

    return (Path(path) / MANIFEST).is_file()


def export_memory(folder, prefill_chunks: int = 1):
    """`plan EXPORT`: the memory plan of an export at the engines' default precision (fp16), its max
    context, prefill up to its largest K (memory.plan_export)."""
    from omnisift_edge.artifact.manifest import load_manifest
    from omnisift_edge.engines.memory import plan_export

    manifest = load_manifest(Path(folder), verify=False)
    prefill = max([r.kept_total for r in manifest.ratios] + [QUESTION_TOKENS])
    plan = plan_export(folder, manifest, precision="fp16", max_context=manifest.max_context, prefill=prefill,
                       kv_in_place=True, prefill_chunks=prefill_chunks)
    if plan is None:
        raise UsageError(f"{folder} predates recorded model sizes (thinker_shape); export again, or plan its config.json")
    return plan


def llm_speed(text, target: str, *, weights: str, block_size: int = 128, lm_head_quantized: bool = False,
              prompt: int, past: int = 0) -> tuple:
    """(prefill of `prompt` tokens with the LM head, one decode step on `past + prompt`) of a text decoder
    alone: the check against published LLM figures (tests/engines/published/*.json)."""
    from omnisift_edge.model.shape import AudioShape, VisionShape

    hw = hardware_for(target)
    shape = ThinkerShape(text, VisionShape(), AudioShape())
    mem = MemoryConfig(shape, weights=weights, block_size=block_size, lm_head_quantized=lm_head_quantized,
                       max_context=min(text.max_position, past + prompt + 1), prefill=prompt)
    head = _head_bytes(mem)
    body = weight_bytes(mem)[0]["decoder"] - head
    kv, precision = kv_per_token(mem) // 2, _precision(SpeedConfig(shape, target, {}), hw)

    def call(tokens: int, cache: int) -> rf.StageTime:
        return rf.time_on(rf.decoder_work(text, tokens=tokens, past=cache, body_bytes=body, head_bytes=head,
                                          kv_bytes=kv, act=2, logits=True), hw, precision)

    return call(prompt, past), call(1, past + prompt)
