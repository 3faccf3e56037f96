"""Every exported graph's tensor names, axes and dtypes, declared once.

`torch.onnx.export` input/output names and dynamic axes, the TensorRT optimization profiles, the
manifest and the C++ side are all derived from `GRAPHS`; nothing else spells a tensor name.
Axis names are symbolic: an axis listed in `DYNAMIC_AXES` stays dynamic in the ONNX graph (and
gets a min/opt/max range in a TensorRT profile); every other axis is fixed at export time from
`Dims` (the model's widths and the chunk shape), so the encoders and the compressor are fully
static per chunk.
"""

from __future__ import annotations

from omnisift_edge.artifact.records import DECODER, DECODER_GQA, DECODER_SCATTER
from dataclasses import dataclass

# axes that stay dynamic in the graphs (named as Optimum names them)
DYNAMIC_AXES = ("batch_size", "sequence_length", "past_sequence_length", "total_sequence_length",
                "cache_length", "logits_length")   # the last two: the in-place forms (decoder_gqa, decoder_scatter)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str               # "float" (the export dtype: float32 or float16), "int64", "int32" or "bool"
    axes: tuple[str, ...]    # symbolic axis names; sizes from Dims unless in DYNAMIC_AXES

    def shape(self, dims: "Dims") -> list[int | str]:
        """Concrete shape: ints for fixed axes, the axis name for dynamic ones (ONNX dim_param)."""
        return [axis if axis in DYNAMIC_AXES else dims.size(axis) for axis in self.axes]


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """`torch.onnx.export`'s dynamic_axes argument."""
        return {t.name: {i: a for i, a in enumerate(t.axes) if a in DYNAMIC_AXES}
                for t in (*self.inputs, *self.outputs) if any(a in DYNAMIC_AXES for a in t.axes)}

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class Dims:
    """Sizes of the fixed axes, from the model config and the export resolution."""

    hidden: int                 # LLM width D
    patch_dim: int              # 3 * temporal_patch * patch^2 (1176)
    grid_h: int                 # patches per frame column (H / 14)
    grid_w: int
    spatial_merge: int          # 2
    grids_per_chunk: int        # temporal grid steps per chunk (2)
    n_mels: int                 # 128
    window_frames: int          # log-mel frames per audio window (200)
    window_audio_tokens: int    # audio tokens per window (50)
    kept_tokens: int = 0        # K of one compressor graph (per ratio)
    num_layers: int = 0         # decoder layers
    kv_heads: int = 0
    head_dim: int = 0
    vocab: int = 0

    @property
    def tokens_per_frame(self) -> int:
        return (self.grid_h // self.spatial_merge) * (self.grid_w // self.spatial_merge)

    def size(self, axis: str) -> int:
        derived = {
            "chunk_patches": self.grids_per_chunk * self.grid_h * self.grid_w,
            "chunk_video_tokens": self.grids_per_chunk * self.tokens_per_frame,
            "tokens_per_frame": self.tokens_per_frame,
            "frames_per_chunk": self.grids_per_chunk,
            "chunk_tokens": self.grids_per_chunk * self.tokens_per_frame + self.window_audio_tokens,
            "rope_rows": 3,
            "chunk_batch": 1,
            "last_token": 1,
            "one": 1,
        }
        if axis in derived:
            return derived[axis]
        value = getattr(self, axis, None)
        if not isinstance(value, int) or value <= 0:
            raise KeyError(f"no size for axis {axis!r}")
        return value


def _t(name: str, dtype: str, *axes: str) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(axes))


VISION_ENCODER = GraphSpec(
    "vision_encoder",
    inputs=(_t("pixel_values", "float", "chunk_patches", "patch_dim"),),
    outputs=(_t("video_embeds", "float", "chunk_video_tokens", "hidden"),),
)

AUDIO_ENCODER = GraphSpec(
    "audio_encoder",
    inputs=(_t("input_features", "float", "n_mels", "window_frames"),
            _t("valid_frames", "int64", "one")),             # frames of the window that are audio (<= 200)
    outputs=(_t("audio_embeds", "float", "window_audio_tokens", "hidden"),),
)

COMPRESSOR = GraphSpec(
    "compressor",
    inputs=(
        _t("video_embeds", "float", "chunk_batch", "frames_per_chunk", "tokens_per_frame", "hidden"),
        _t("audio_embeds", "float", "chunk_batch", "window_audio_tokens", "hidden"),
        _t("chunk_position_ids", "int64", "rope_rows", "chunk_tokens"),
        _t("valid_grids", "int64", "one"),             # real grid steps (2; 1 in a clip's short last chunk)
        _t("valid_audio_tokens", "int64", "one"),      # real audio tokens (window_audio_tokens; fewer at the end)
    ),
    outputs=(
        _t("kept_embeds", "float", "chunk_batch", "kept_tokens", "hidden"),
        _t("kept_position_ids", "int64", "rope_rows", "chunk_batch", "kept_tokens"),
        _t("kept_index", "int64", "chunk_batch", "kept_tokens"),
        _t("kept_count", "int64", "one"),              # the first kept_count rows are real (all in a whole chunk)
    ),
)


# Batched forms of the per-chunk graphs for a stream pool (issue 23): the same computation on a leading
# `batch_size` axis (dynamic: one call for the chunks of every camera that arrived together; row b of each
# output equals the one-chunk graph on row b of each input). Optional graphs of an export (files
# `vision_encoder_batch.onnx`, `audio_encoder_batch.onnx`, `compressor_batch_r{ratio}.onnx`); their weights
# are the one-chunk graphs' (stored once, shared_weights.data). Per-row valid counts: a clip's short last
# chunk may ride in a batch with whole ones.
VISION_ENCODER_BATCH = GraphSpec(
    "vision_encoder_batch",
    inputs=(_t("pixel_values", "float", "batch_size", "chunk_patches", "patch_dim"),),
    outputs=(_t("video_embeds", "float", "batch_size", "chunk_video_tokens", "hidden"),),
)

AUDIO_ENCODER_BATCH = GraphSpec(
    "audio_encoder_batch",
    inputs=(_t("input_features", "float", "batch_size", "n_mels", "window_frames"),
            _t("valid_frames", "int64", "batch_size")),
    outputs=(_t("audio_embeds", "float", "batch_size", "window_audio_tokens", "hidden"),),
)

COMPRESSOR_BATCH = GraphSpec(
    "compressor_batch",
    inputs=(
        _t("video_embeds", "float", "batch_size", "frames_per_chunk", "tokens_per_frame", "hidden"),
        _t("audio_embeds", "float", "batch_size", "window_audio_tokens", "hidden"),
        _t("chunk_position_ids", "int64", "rope_rows", "batch_size", "chunk_tokens"),
        _t("valid_grids", "int64", "batch_size"),
        _t("valid_audio_tokens", "int64", "batch_size"),
    ),
    outputs=(
        _t("kept_embeds", "float", "batch_size", "kept_tokens", "hidden"),
        _t("kept_position_ids", "int64", "rope_rows", "batch_size", "kept_tokens"),
        _t("kept_index", "int64", "batch_size", "kept_tokens"),
        _t("kept_count", "int64", "batch_size"),
    ),
)

BATCH_FORMS = {"vision_encoder": VISION_ENCODER_BATCH, "audio_encoder": AUDIO_ENCODER_BATCH,
               "compressor": COMPRESSOR_BATCH}     # one-chunk graph -> its batched form


def batch_form_key(graph: str) -> str:
    """Manifest key of the batched form of the one-chunk graph `graph`: vision_encoder -> vision_encoder_batch,
    audio_encoder -> audio_encoder_batch, compressor_r0.25 -> compressor_batch_r0.25 (also its file's stem)."""
    if graph.startswith("compressor_r"):
        return "compressor_batch_r" + graph[len("compressor_r"):]
    if graph in BATCH_FORMS:
        return BATCH_FORMS[graph].name
    raise KeyError(f"{graph!r} has no batched form")


def is_batch_form(graph: str) -> bool:
    """Whether manifest key `graph` names a batched form (built as engines only for a stream pool)."""
    return graph.startswith("compressor_batch_r") or graph in (VISION_ENCODER_BATCH.name, AUDIO_ENCODER_BATCH.name)


def one_chunk_key(graph: str) -> str:
    """The one-chunk graph whose batched form is manifest key `graph` (batch_form_key's inverse)."""
    if graph.startswith("compressor_batch_r"):
        return "compressor_r" + graph[len("compressor_batch_r"):]
    for key, spec in BATCH_FORMS.items():
        if spec.name == graph:
            return key
    raise KeyError(f"{graph!r} is not a batched form")


def decoder_graph(num_layers: int) -> GraphSpec:
    """The thinker LLM with a KV cache (Optimum's naming), logits of the last position only."""
    past, present = [], []
    for i in range(num_layers):
        for kind in ("key", "value"):
            past.append(_t(f"past_key_values.{i}.{kind}", "float", "batch_size", "kv_heads",
                           "past_sequence_length", "head_dim"))
            present.append(_t(f"present.{i}.{kind}", "float", "batch_size", "kv_heads",
                              "total_sequence_length", "head_dim"))
    return GraphSpec(
        DECODER,
        inputs=(
            _t("inputs_embeds", "float", "batch_size", "sequence_length", "hidden"),
            _t("position_ids", "int64", "rope_rows", "batch_size", "sequence_length"),
            _t("attention_mask", "int64", "batch_size", "total_sequence_length"),
            *past,
        ),
        outputs=(_t("logits", "float", "batch_size", "last_token", "vocab"), *present),
    )


def decoder_gqa_graph(num_layers: int) -> GraphSpec:
    """The ONNX Runtime form of the decoder: a KV cache allocated once and written in place.

    Each layer's past and present are ONE buffer [B, kv, cache_length, hd] (bind the same OrtValue to
    both): `com.microsoft::GroupQueryAttention` writes the S new rows at [seqlens_k + 1 - S, seqlens_k + 1)
    and attends over the valid rows only. Logits only for the rows in `logits_index` (none on a chunk
    prefill, the last for a question or a decode step). TensorRT cannot parse GQA: it builds
    `decoder_scatter` (KVCacheUpdate) or `decoder`.
    """
    cache = []
    for i in range(num_layers):
        for kind in ("key", "value"):
            cache.append((_t(f"past_key_values.{i}.{kind}", "float", "batch_size", "kv_heads", "cache_length",
                             "head_dim"),
                          _t(f"present.{i}.{kind}", "float", "batch_size", "kv_heads", "cache_length", "head_dim")))
    return GraphSpec(
        DECODER_GQA,
        inputs=(
            _t("inputs_embeds", "float", "batch_size", "sequence_length", "hidden"),
            _t("position_ids", "int64", "rope_rows", "batch_size", "sequence_length"),
            _t("seqlens_k", "int32", "batch_size"),
            _t("total_sequence_length", "int32", "one"),
            _t("logits_index", "int64", "logits_length"),
            *(past for past, _ in cache),
        ),
        outputs=(_t("logits", "float", "batch_size", "logits_length", "vocab"), *(present for _, present in cache)),
    )


def decoder_scatter_graph(num_layers: int) -> GraphSpec:
    """TensorRT's in-place form of the decoder: a static cache updated by ONNX `TensorScatter` (opset 24).

    Each layer's past and present are ONE buffer [B, kv, cache_length, hd] (TensorRT aliases the present
    to its past: bind the same device address to both); the S new rows go to [write_index,
    write_index + S) and attention reads the valid rows [0, write_index + S), per batch row (write_index
    [B]: each row its own length, so a stream pool's decode steps go in one call). Logits only for the rows
    in `logits_index`. TensorRT >= 10.15 and TensorRT-RTX parse the scatter as a KV_CACHE_UPDATE layer.
    """
    cache = []
    for i in range(num_layers):
        for kind in ("key", "value"):
            cache.append((_t(f"past_key_values.{i}.{kind}", "float", "batch_size", "kv_heads", "cache_length",
                             "head_dim"),
                          _t(f"present.{i}.{kind}", "float", "batch_size", "kv_heads", "cache_length", "head_dim")))
    return GraphSpec(
        DECODER_SCATTER,
        inputs=(
            _t("inputs_embeds", "float", "batch_size", "sequence_length", "hidden"),
            _t("position_ids", "int64", "rope_rows", "batch_size", "sequence_length"),
            _t("write_index", "int64", "batch_size"),      # per batch row: each stream of a pool its own
            _t("logits_index", "int64", "logits_length"),
            *(past for past, _ in cache),
        ),
        outputs=(_t("logits", "float", "batch_size", "logits_length", "vocab"), *(present for _, present in cache)),
    )
