"""The PyTorch reference pipeline: OmniSIFT on a Qwen2.5-Omni thinker, whole clip or streaming.

Two ways to run the same computation, which the tests hold equal:
- `whole_clip_prefill`: the thinker's own forward over the whole clip (its encoders, its
  placeholder scatter, its `get_rope_index`), with the decoder's input compressed by OmniSIFT at
  prefill through a patch of `thinker.model.forward` (as the authors hook it; the modeling code
  is not forked);
- `TorchStream`: one 2-second chunk at a time: encode its frames and audio window, compress with
  the static per-chunk module, prefill the kept tokens into the KV cache at their original
  positions; then the question; then greedy decode.
Kept tokens keep their full-layout positions and decoding continues from the full layout's next
position, so the KV cache holds only kept tokens while the rope stays uncompressed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from omnisift_edge.errors import UsageError
from omnisift_edge.model.load import OmniModel
from omnisift_edge.runtime.stream import ChunkStream


@dataclass(frozen=True)
class CompressionConfig:
    """OmniSIFT drop fractions: per-frame video drop and per-chunk audio drop, each in [0, 1)."""

    rho_video: float = 0.7
    rho_audio: float = 0.3

    def __post_init__(self):
        for name in ("rho_video", "rho_audio"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UsageError(f"{name} must be in [0, 1) (got {value}); 0 keeps every token")

    @classmethod
    def for_ratio(cls, ratio: float, tokens_per_frame: int) -> "CompressionConfig":
        """Drops that keep about `ratio` of the audio+video tokens (see compress.ratio)."""
        from omnisift_edge.compress.ratio import drops_for_ratio

        rho_video, rho_audio = drops_for_ratio(ratio, tokens_per_frame)
        return cls(rho_video=rho_video, rho_audio=rho_audio)

    @property
    def is_identity(self) -> bool:
        return self.rho_video == 0.0 and self.rho_audio == 0.0


@dataclass
class Prefill:
    """What a prefill leaves behind: the cache, the last logits and where decoding continues."""

    cache: object                         # transformers DynamicCache of the kept tokens
    last_logits: torch.Tensor             # [B, V] logits at the last prefilled position
    next_position: int                    # rope position of the next token (full layout)
    keep_mask: torch.Tensor | None = None  # [B, L] bool over the full layout


def _require_selector(model: OmniModel, cfg: CompressionConfig) -> None:
    if model.selector is None and cfg.rho_audio > 0:
        raise UsageError("this model has no OmniSIFT compressor; pass --compressor FILE (the OmniSIFT "
                         "checkpoint's, or one from `omnisift-edge train`), or use --ratio 1")


@contextlib.contextmanager
def compressing(model: OmniModel, cfg: CompressionConfig | None) -> Iterator[None]:
    """Within the block, a thinker prefill over video+audio drops tokens as OmniSIFT does.

    Patches `thinker.model.forward` (the decoder stack) for the duration only: the embeddings,
    attention mask and 3-row positions the thinker computed for the full layout are filtered by
    the keep mask before the first decoder layer. `model.last_keep_mask` records the mask.
    """
    thinker = model.thinker
    if cfg is None or cfg.is_identity:   # nothing to drop: the plain thinker
        model.last_keep_mask = None
        yield
        return
    _require_selector(model, cfg)
    from omnisift_edge.compress.sequence import compress_sequence

    original = thinker.model.forward
    ids_holder: dict = {}
    original_thinker_forward = thinker.forward

    def thinker_forward(*args, **kwargs):
        ids_holder["input_ids"] = kwargs.get("input_ids")
        return original_thinker_forward(*args, **kwargs)

    def decoder_forward(*args, **kwargs):
        embeds, positions = kwargs.get("inputs_embeds"), kwargs.get("position_ids")
        input_ids = ids_holder.get("input_ids")
        is_prefill = input_ids is not None and embeds is not None and embeds.shape[1] == input_ids.shape[1] > 1
        tokens = model.spec.tokens
        if is_prefill and bool((input_ids == tokens.video).any()) and bool((input_ids == tokens.audio).any()):
            result = compress_sequence(embeds, input_ids, positions, model.selector,
                                       rho_video=cfg.rho_video, rho_audio=cfg.rho_audio,
                                       audio_token_id=tokens.audio, video_token_id=tokens.video,
                                       training=thinker.training)
            keep = result.keep_mask                                       # [B, L]
            if keep.shape[0] > 1 and len(set(keep.sum(dim=1).tolist())) > 1:
                raise UsageError("the clips of this batch keep different token counts (different layouts); "
                                 "run them one at a time")
            kwargs["inputs_embeds"] = torch.stack([result.inputs_embeds[b, keep[b]] for b in range(keep.shape[0])])
            kwargs["position_ids"] = torch.stack([positions[:, b, keep[b]] for b in range(keep.shape[0])], dim=1)
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.ndim == 2:
                kwargs["attention_mask"] = torch.stack([mask[b, keep[b]] for b in range(keep.shape[0])])
            kwargs["cache_position"] = None
            model.last_keep_mask = keep
        return original(*args, **kwargs)

    patched = [(thinker.model, decoder_forward), (thinker, thinker_forward)]
    had_own = [("forward" in vars(obj)) for obj, _ in patched]
    for obj, fn in patched:
        obj.forward = fn
    try:
        yield
    finally:
        for (obj, _), own, saved in zip(patched, had_own, (original, original_thinker_forward)):
            if own:
                obj.forward = saved
            else:
                del obj.forward   # back to the class's method, no instance attribute left behind


@dataclass(frozen=True)
class ClipFeatures:
    """Encoder inputs of one clip: pixel patches and log-mel frames (the processors' outputs)."""

    pixel_values: np.ndarray   # [grid_t * grid_h * grid_w, 3 * 2 * 14 * 14] float32
    grid_thw: tuple[int, int, int]
    mel: np.ndarray            # [n_mels, n_frames] float32


def whole_clip_inputs(model: OmniModel, features: ClipFeatures, prefix_ids: Sequence[int],
                      suffix_ids: Sequence[int]) -> dict:
    """The keyword arguments of the thinker's forward for one clip with its question."""
    from omnisift_edge.model.layout import build_layout

    t, h, w = features.grid_thw
    n_audio = model.spec.audio_tokens_for_mel_frames(features.mel.shape[1])
    layout = build_layout(model.spec, list(prefix_ids), list(suffix_ids), n_grids=t, grid_hw=(h, w),
                          n_audio=n_audio)
    dtype = next(model.thinker.parameters()).dtype
    dev = model.device
    ids = torch.from_numpy(np.array(layout.input_ids, dtype=np.int64))[None].to(dev)   # [1, L]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values_videos": torch.from_numpy(features.pixel_values).to(dev, dtype),
        "video_grid_thw": torch.tensor([[t, h, w]], device=dev),
        "video_second_per_grid": torch.tensor([model.spec.seconds_per_grid], device=dev),
        "input_features": torch.from_numpy(features.mel).to(dev, dtype)[None],   # [1, n_mels, n]
        "feature_attention_mask": torch.ones(1, features.mel.shape[1], dtype=torch.long, device=dev),
        "use_audio_in_video": True,
    }


@torch.inference_mode()
def whole_clip_prefill(model: OmniModel, features: ClipFeatures, prefix_ids: Sequence[int],
                       suffix_ids: Sequence[int], compression: CompressionConfig | None) -> Prefill:
    """Prefill the whole clip and the question through the thinker's own forward."""
    from transformers import DynamicCache

    inputs = whole_clip_inputs(model, features, prefix_ids, suffix_ids)
    cache = DynamicCache(config=model.thinker.config.text_config)
    model.last_keep_mask = None
    with compressing(model, compression):
        out = model.thinker(**inputs, past_key_values=cache, use_cache=True)
    full_len = inputs["input_ids"].shape[1]
    next_position = int(full_len + model.thinker.rope_deltas.reshape(-1)[0])
    keep = getattr(model, "last_keep_mask", None) if compression is not None else None
    if compression is not None and keep is None:   # identity: every token kept
        keep = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    return Prefill(cache=out.past_key_values, last_logits=out.logits[:, -1].float(),
                   next_position=next_position, keep_mask=keep)


def _decoder_step(model: OmniModel, embeds: torch.Tensor, positions: np.ndarray, cache) -> torch.Tensor:
    """Append `embeds` [1, n, D] at rope `positions` [3, n] to the cache; logits [1, V] of the last."""
    pos = torch.from_numpy(np.array(positions, dtype=np.int64))[:, None, :].to(model.device)   # [3, 1, n]
    out = model.thinker.model(inputs_embeds=embeds, position_ids=pos, past_key_values=cache, use_cache=True)
    return model.thinker.lm_head(out.last_hidden_state[:, -1]).float()


def _embed_text(model: OmniModel, ids: Sequence[int]) -> torch.Tensor:
    ids = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    return model.thinker.get_input_embeddings()(ids)                              # [1, n, D]


@torch.inference_mode()
def greedy_decode(model: OmniModel, prefill: Prefill, *, max_new_tokens: int,
                  stop_ids: Sequence[int]) -> Iterator[int]:
    """Greedy tokens after a prefill, one at a time; stops after a stop token or the budget."""
    if max_new_tokens < 1:
        raise UsageError(f"max new tokens must be at least 1 (got {max_new_tokens})")
    logits, position = prefill.last_logits, prefill.next_position
    for _ in range(max_new_tokens):
        token = int(logits[0].argmax())
        yield token
        if token in stop_ids:
            return
        logits = _decoder_step(model, _embed_text(model, [token]), np.full((3, 1), position), prefill.cache)
        position += 1


def encode_video_chunk(model: OmniModel, pixel_values: np.ndarray, grid_thw: tuple[int, int, int]) -> torch.Tensor:
    """Merged video embeddings of one chunk's frames: [n_grids * tokens_per_frame, D]."""
    dtype = next(model.thinker.parameters()).dtype
    pixels = torch.from_numpy(pixel_values).to(model.device, dtype)
    return model.thinker.get_video_features(pixels, torch.tensor([list(grid_thw)], device=model.device))


def encode_audio_window(model: OmniModel, mel: np.ndarray) -> torch.Tensor:
    """Audio embeddings of one (at most 2-second) log-mel window [n_mels, n]: [n_tokens, D]."""
    dtype = next(model.thinker.parameters()).dtype
    n = mel.shape[1]
    tower = model.thinker.audio_tower
    dev = model.device
    out = tower(torch.from_numpy(mel).to(dev, dtype), feature_lens=torch.tensor([n], device=dev),
                aftercnn_lens=torch.tensor([(n - 1) // 2 + 1], device=dev))
    return out.last_hidden_state


def chunk_compressor(model: OmniModel, compression: CompressionConfig):
    """The static per-chunk compressor (compress/chunk.py) on the model's selector, in eval mode."""
    from omnisift_edge.compress.chunk import ChunkCompressor

    return ChunkCompressor(model.selector, compression.rho_video, compression.rho_audio).eval()


class TorchStream(ChunkStream):
    """Streaming OmniSIFT in PyTorch (the reference backend): push chunks, then ask questions.

    The KV cache is static (`runtime.torch_kv`, the stream's `KVCache`: buffers allocated once for
    max_context, written in place, attention over the valid rows), the cost model of ONNX Runtime's in-place decoder; it
    grows by the kept tokens of each chunk, and no chunk prefill computes logits.
    """

    def __init__(self, model: OmniModel, prefix_ids: Sequence[int], *, grid_hw: tuple[int, int],
                 compression: CompressionConfig | None, max_context: int | None = None, context=None):
        if compression is not None and not compression.is_identity:
            _require_selector(model, compression)
        self.model = model
        self.compression = None if compression is None or compression.is_identity else compression
        kv = self._open_cache(max_context)                             # [1, kv, max_context, hd] per layer
        self._chunk_compressor = None if self.compression is None else self._open_compressor(self.compression)
        with torch.inference_mode():
            super().__init__(model.spec, prefix_ids, grid_hw, max_context=max_context, context=context,
                             position_limit=model.thinker.config.text_config.max_position_embeddings, kv=kv)

    def _open_cache(self, max_context: int | None):
        """The stream's KV cache (a stream pool gives it a slot of its buffers instead: runtime/pool_torch.py)."""
        from omnisift_edge.runtime.torch_kv import TorchInPlaceCache

        return TorchInPlaceCache(self.model.thinker, max_context)

    def _open_compressor(self, compression: CompressionConfig):
        """The static per-chunk compressor (a stream pool shares one between its streams)."""
        return chunk_compressor(self.model, compression)

    def _embed(self, ids):
        return _embed_text(self.model, ids)

    def _step(self, embeds, positions, want_logits=True):
        return self.kv.step(embeds, positions, want_logits)

    def _concat(self, parts):
        return torch.cat(parts, dim=1)                                                  # [1, sum K, D]

    @torch.inference_mode()
    def flush(self):
        super().flush()

    def _encode_video(self, pixel_values, n_grids):
        return encode_video_chunk(self.model, pixel_values, (n_grids, *self.grid_hw))   # [n_grids*n_p, D]

    def _encode_audio(self, mel):
        audio = encode_audio_window(self.model, mel)                                    # [La, D]
        if not torch.isfinite(audio).all():
            raise UsageError("the audio encoder produced NaN or Inf (fp16 overflow?); try --dtype bf16 or fp32")
        return audio

    def _compress(self, video, audio, n_grids, chunk_positions):
        if not torch.isfinite(video).all():
            raise UsageError("the vision encoder produced NaN or Inf (fp16 overflow?); try --dtype bf16 or fp32")
        if self._chunk_compressor is None:
            return torch.cat([video, audio])[None], np.arange(video.shape[0] + audio.shape[0])
        frames = video.reshape(1, n_grids, self.tokens_per_frame, -1)                   # [1, F, n_p, D]
        kept, index = self._chunk_compressor(frames, audio[None])                       # [1, K, D], [1, K]
        return kept, index[0].cpu().numpy()

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()

    @staticmethod
    def _argmax(logits) -> int:
        return int(logits[0].argmax())

    @torch.inference_mode()
    def push(self, pixel_values, n_grids, mel):
        return super().push(pixel_values, n_grids, mel)

    @torch.inference_mode()   # torch enters and leaves the mode around each step of a generator
    def ask(self, question_ids, *, max_new_tokens=32, stop_ids=()):
        yield from super().ask(question_ids, max_new_tokens=max_new_tokens, stop_ids=stop_ids)
