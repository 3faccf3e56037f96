"""Roofline: the floating-point operations and the bytes each graph moves at its real shapes, and the
time a target needs for them (the slower of math and memory), with the bound that set it.

A call's time is max(FLOPs / (math rate x math efficiency), bytes / (bandwidth x stream
efficiency)) (hardware.py has the figures and the efficiencies, each with its source). Counted:

- FLOPs: 2 per multiply-add of every matrix product (linear layers, convolutions as products,
  attention's Q.K and P.V); norms, activations, softmax and rotary are left out (a few % of the
  products at these widths).
- bytes: the weights the call reads (once per call: batch 1), the KV cache it reads and appends, and
  the activations in and out of the graph (intermediates stay on chip or in L2 in fused kernels:
  counted once, not per layer).

No per-kernel launch cost is added: TensorRT fuses a layer into a handful of kernels whose launch
(a few microseconds each) is small next to streaming the weights; it is one reason measured rates sit
under the bound and is what the efficiency factors absorb.
"""

from __future__ import annotations

from dataclasses import dataclass

from omnisift_edge.engines.hardware import Hardware, efficiency
from omnisift_edge.model.shape import AudioShape, TextShape, VisionShape, decoder_linear_shapes

VISION_WINDOW_PATCHES = 64          # Qwen2.5-Omni's vision window: 112 px / 14 px patches = 8 x 8
VISION_FULL_EVERY = 8               # fullatt_block_indexes 7, 15, 23, 31: one layer in 8 attends a whole frame
AUDIO_FRAMES = 100                  # a 2-s chunk: 200 mel frames, 100 after the stride-2 convolution
AUDIO_TOKENS = 50                   # ... 50 after the encoder's 2x average pooling
SELECTOR_WIDTH = 512                # the compressor's projections D -> 512 (memory.SELECTOR_PARAMS_PER_D)


@dataclass(frozen=True)
class Work:
    """One graph call: multiply-add work and bytes moved."""

    flops: float
    bytes: float

    def __add__(self, other: "Work") -> "Work":
        return Work(self.flops + other.flops, self.bytes + other.bytes)


@dataclass(frozen=True)
class StageTime:
    seconds: float
    bound: str                       # memory | math
    work: Work

    @property
    def ms(self) -> float:
        return self.seconds * 1e3


def time_on(work: Work, hw: Hardware, precision: str) -> StageTime:
    """The roofline time of `work` on `hw`, products in `precision` (fp16 | fp32 | int8 | bf16)."""
    math = work.flops / (hw.math_rate(precision) * efficiency(hw, "math").value)
    memory = work.bytes / (hw.bandwidth * efficiency(hw, "stream").value)
    return StageTime(max(math, memory), "math" if math >= memory else "memory", work)


def add_times(*times: StageTime) -> StageTime:
    """Calls run one after another: seconds add; the bound is the one of the largest part."""
    largest = max(times, key=lambda t: t.seconds)
    work = Work(sum(t.work.flops for t in times), sum(t.work.bytes for t in times))
    return StageTime(sum(t.seconds for t in times), largest.bound, work)


def vision_work(v: VisionShape, resolution: tuple[int, int], weight_bytes: int, act: int) -> Work:
    """The vision encoder on one chunk: 2 temporal grids (4 frames) of (H/14) x (W/14) patches."""
    h, w = resolution
    frame = (h // v.patch) * (w // v.patch)                    # patches per temporal grid
    patches = 2 * frame                                        # P, per chunk
    d, i = v.hidden, v.intermediate
    embed = 2 * patches * v.in_channels * v.temporal_patch * v.patch ** 2 * d
    layer = 2 * patches * (4 * d * d + 3 * d * i)              # qkv + proj; gated MLP (gate, up, down)
    full = max(1, v.depth // VISION_FULL_EVERY)
    attention = 4 * patches * d * (full * frame + (v.depth - full) * min(VISION_WINDOW_PATCHES, frame))
    m = d * v.merge ** 2
    merger = 2 * (patches // v.merge ** 2) * (m * m + m * v.out_hidden)
    io = patches * v.in_channels * v.temporal_patch * v.patch ** 2 * act + patches // v.merge ** 2 * v.out_hidden * act
    return Work(embed + v.depth * layer + attention + merger, weight_bytes + io)


def audio_work(a: AudioShape, weight_bytes: int, act: int) -> Work:
    """The audio encoder on one 2-s window: two convolutions, `layers` transformer layers over 100
    frames, pooling to 50 tokens and the projection to the LLM width."""
    d, f, t = a.d_model, a.ffn, AUDIO_FRAMES
    conv = 2 * (2 * t) * a.n_mels * 3 * d + 2 * t * d * 3 * d    # conv1 over 200 frames, conv2 stride 2
    layer = 2 * t * (4 * d * d + 2 * d * f) + 4 * t * t * d
    proj = 2 * AUDIO_TOKENS * d * a.output_dim
    io = a.n_mels * 2 * t * act + AUDIO_TOKENS * a.output_dim * act
    return Work(conv + a.layers * layer + proj, weight_bytes + io)


def compressor_work(hidden: int, tokens: int, weight_bytes: int, act: int) -> Work:
    """OmniSIFT's selector on one chunk's tokens (2 projections D -> 512, scores over the chunk)."""
    flops = 2 * tokens * hidden * SELECTOR_WIDTH * 2 + 4 * tokens * tokens * SELECTOR_WIDTH
    return Work(flops, weight_bytes + 2 * tokens * hidden * act)


def decoder_work(t: TextShape, *, tokens: int, past: int, body_bytes: int, head_bytes: int, kv_bytes: int,
                 act: int, logits: bool) -> Work:
    """One decoder call of `tokens` new tokens on a cache of `past`: the linear layers, attention over
    past + new, the LM head when `logits` (the last position only); reads the weights once, the
    cache, and appends the new tokens' K/V (`kv_bytes` per token, one buffer)."""
    linear = t.layers * sum(k * n for k, n in decoder_linear_shapes(t))
    q = t.heads * t.head_dim
    context = past * tokens + tokens * (tokens + 1) // 2              # causal: token j sees past + j + 1
    flops = 2 * tokens * linear + 4 * t.layers * q * context + (2 * t.hidden * t.vocab if logits else 0)
    weights = body_bytes + (head_bytes if logits else 0)
    cache = kv_bytes * (past + tokens)                                # read past, write the new tokens
    io = tokens * t.hidden * act * 2 + (t.vocab * act if logits else 0)
    return Work(flops, weights + cache + io)
