"""The sizes of a Qwen2.5-Omni thinker, read from a bare config.json, and its parameter counts.

`ThinkerShape.from_config(dict)` accepts a full Qwen2.5-Omni config (`model_type` qwen2_5_omni,
with `thinker_config`), a thinker config (qwen2_5_omni_thinker) or an OmniSIFT folder's config
of either kind; anything else is a one-line `UsageError`. No torch or transformers here: `plan`
runs on a Jetson, and a 7B is planned from its config without weights. Missing fields take the
released Qwen2.5-Omni-7B values.

`param_counts` is the analytic count per part, as the transformers modules define them
(tests/model/test_shape.py checks it against the model instantiated on the meta device).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from omnisift_edge.errors import UsageError

OMNI_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker")


@dataclass(frozen=True)
class TextShape:
    hidden: int = 3584
    intermediate: int = 18944
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    head_dim: int = 128
    vocab: int = 152064
    tied: bool = False                 # lm_head shares embed_tokens
    max_position: int = 32768
    sliding_window: int | None = None  # set only when the config turns sliding-window attention on


@dataclass(frozen=True)
class VisionShape:
    depth: int = 32
    hidden: int = 1280
    intermediate: int = 3420
    heads: int = 16
    out_hidden: int = 3584
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    in_channels: int = 3


@dataclass(frozen=True)
class AudioShape:
    d_model: int = 1280
    layers: int = 32
    heads: int = 20
    ffn: int = 5120
    n_mels: int = 128
    output_dim: int = 3584


@dataclass(frozen=True)
class ThinkerShape:
    text: TextShape
    vision: VisionShape
    audio: AudioShape

    @classmethod
    def from_config(cls, config: dict, *, source: str = "the config") -> "ThinkerShape":
        if not isinstance(config, dict):
            raise UsageError(f"{source} is not a JSON object; pass a Qwen2.5-Omni config.json")
        kind = config.get("model_type")
        if kind == "qwen2_5_omni":
            config, kind = config.get("thinker_config") or {}, "qwen2_5_omni_thinker"
        if kind != "qwen2_5_omni_thinker":
            raise UsageError(f"{source} is a {kind or 'config without model_type'}, not Qwen2.5-Omni "
                             f"(model_type {' or '.join(OMNI_TYPES)}); pass a Qwen2.5-Omni (or OmniSIFT) config.json")
        try:
            return _shape_from(config, source)
        except (TypeError, ValueError, ZeroDivisionError, AttributeError) as exc:
            raise UsageError(f"{source}: a size is not a positive whole number ({type(exc).__name__}: {exc}); "
                             "check the config") from None

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "ThinkerShape":
        return cls(TextShape(**record["text"]), VisionShape(**record["vision"]), AudioShape(**record["audio"]))


def _shape_from(config: dict, source: str) -> "ThinkerShape":
    """The sizes of a thinker config dict (missing fields: the 7B's); every one positive, or a UsageError."""
    t, v, a = config.get("text_config") or {}, config.get("vision_config") or {}, config.get("audio_config") or {}
    dt, dv, da = TextShape(), VisionShape(), AudioShape()
    hidden = int(t.get("hidden_size", dt.hidden))
    heads = int(t.get("num_attention_heads", dt.heads))
    tied = t.get("tie_word_embeddings", config.get("tie_word_embeddings", dt.tied))
    text = TextShape(hidden=hidden, intermediate=int(t.get("intermediate_size", dt.intermediate)),
                     layers=int(t.get("num_hidden_layers", dt.layers)), heads=heads,
                     kv_heads=int(t.get("num_key_value_heads", dt.kv_heads)),
                     head_dim=int(t.get("head_dim") or hidden // heads), vocab=int(t.get("vocab_size", dt.vocab)),
                     tied=bool(tied), max_position=int(t.get("max_position_embeddings", dt.max_position)),
                     sliding_window=(int(t["sliding_window"]) if t.get("use_sliding_window") and t.get("sliding_window")
                                     else None))
    vision = VisionShape(depth=int(v.get("depth", dv.depth)), hidden=int(v.get("hidden_size", dv.hidden)),
                         intermediate=int(v.get("intermediate_size", dv.intermediate)),
                         heads=int(v.get("num_heads", dv.heads)), out_hidden=int(v.get("out_hidden_size", hidden)),
                         patch=int(v.get("patch_size", dv.patch)),
                         temporal_patch=int(v.get("temporal_patch_size", dv.temporal_patch)),
                         merge=int(v.get("spatial_merge_size", dv.merge)),
                         in_channels=int(v.get("in_channels", v.get("in_chans", dv.in_channels))))
    audio = AudioShape(d_model=int(a.get("d_model", da.d_model)), layers=int(a.get("encoder_layers", da.layers)),
                       heads=int(a.get("encoder_attention_heads", da.heads)), ffn=int(a.get("encoder_ffn_dim", da.ffn)),
                       n_mels=int(a.get("num_mel_bins", da.n_mels)), output_dim=int(a.get("output_dim", hidden)))
    for part, record in (("text_config", text), ("vision_config", vision), ("audio_config", audio)):
        for name, value in asdict(record).items():
            if name != "sliding_window" and not isinstance(value, bool) and value <= 0:
                raise UsageError(f"{source}: {part} {name} is {value}; sizes must be positive, check the config")
    if text.heads % max(text.kv_heads, 1):
        raise UsageError(f"{source}: text_config sizes are inconsistent (hidden {text.hidden}, layers {text.layers}, "
                         f"heads {text.heads}, kv heads {text.kv_heads}); check the config")
    return ThinkerShape(text, vision, audio)


def decoder_linear_shapes(text: TextShape) -> list[tuple[int, int]]:
    """W [K, N] of one decoder layer's linear layers (q k v o gate up down), as the graph stores them."""
    d, q, kv, i = text.hidden, text.heads * text.head_dim, text.kv_heads * text.head_dim, text.intermediate
    return [(d, q), (d, kv), (d, kv), (q, d), (d, i), (d, i), (i, d)]


def param_counts(shape: ThinkerShape) -> dict[str, int]:
    """Parameters per part: vision/audio towers, the decoder's linear weights, its other parameters
    (q/k/v biases, norms), the LM head (0 when tied) and the text embedding table."""
    t, v, a = shape.text, shape.vision, shape.audio
    q, kv = t.heads * t.head_dim, t.kv_heads * t.head_dim
    linear = t.layers * sum(k * n for k, n in decoder_linear_shapes(t))
    other = t.layers * (q + 2 * kv + 2 * t.hidden) + t.hidden              # q/k/v biases, 2 norms per layer; final norm
    dv, iv, m2 = v.hidden, v.intermediate, v.hidden * v.merge ** 2
    vision = (v.in_channels * v.temporal_patch * v.patch ** 2 * dv                   # patch embed (Conv3d, no bias)
              + v.depth * (2 * dv + dv * 3 * dv + 3 * dv + dv * dv + dv + 2 * (dv * iv + iv) + iv * dv + dv)
              + dv + m2 * m2 + m2 + m2 * v.out_hidden + v.out_hidden)               # merger: ln_q, 2-layer MLP
    d, f = a.d_model, a.ffn
    audio = (a.n_mels * d * 3 + d + d * d * 3 + d                                    # conv1, conv2
             + a.layers * (4 * d * d + 3 * d + 2 * d + d * f + f + f * d + d + 2 * d)
             + 2 * d + d * a.output_dim + a.output_dim + 2 * a.output_dim)          # ln_post, proj, bos/eos embedding
    return {"vision_encoder": vision, "audio_encoder": audio, "decoder_linear": linear, "decoder_other": other,
            "lm_head": 0 if t.tied else t.vocab * t.hidden, "embed_tokens": t.vocab * t.hidden}
