"""The constants of Qwen2.5-Omni's audio-video layout, declared once.

Everything that builds token ids, TMRoPE positions, pixel patches, log-mel features or chunk
tables reads them from an `OmniSpec`, never from its own literals. `OmniSpec.from_thinker_config`
derives one from a transformers thinker config, so a checkpoint with other ids still lines up.
No torch here: the layout code runs on a Jetson with numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omnisift_edge.errors import UsageError


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of the Qwen2.5-Omni tokenizer (the real ones, also in the tiny default)."""

    endoftext: int = 151643   # <|endoftext|>, also the pad token
    im_start: int = 151644    # <|im_start|>
    im_end: int = 151645      # <|im_end|>
    audio: int = 151646       # <|AUDIO|>  one per audio token
    audio_bos: int = 151647   # <|audio_bos|>
    audio_eos: int = 151648   # <|audio_eos|>
    vision_bos: int = 151652  # <|vision_bos|>
    vision_eos: int = 151653  # <|vision_eos|>
    image: int = 151655       # <|IMAGE|>
    video: int = 151656       # <|VIDEO|>  one per merged video token


# token text -> TokenIds field, in id order: the tokenizer and the chat template use these names
SPECIAL_TOKENS: dict[str, str] = {
    "<|endoftext|>": "endoftext",
    "<|im_start|>": "im_start",
    "<|im_end|>": "im_end",
    "<|AUDIO|>": "audio",
    "<|audio_bos|>": "audio_bos",
    "<|audio_eos|>": "audio_eos",
    "<|vision_bos|>": "vision_bos",
    "<|vision_eos|>": "vision_eos",
    "<|IMAGE|>": "image",
    "<|VIDEO|>": "video",
}


@dataclass(frozen=True)
class OmniSpec:
    """Layout and feature constants; defaults are Qwen2.5-Omni's (3B and 7B share them)."""

    tokens: TokenIds = field(default_factory=TokenIds)
    # vision
    patch_size: int = 14              # pixels per patch side
    temporal_patch_size: int = 2      # frames per temporal grid step ("frame" in OMNISIFT.md)
    spatial_merge_size: int = 2       # 2x2 patches -> one LLM token (28x28 pixels)
    fps: float = 2.0                  # video frames sampled per second
    # time
    position_id_per_seconds: int = 25
    seconds_per_chunk: float = 2.0
    # audio
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 400
    hop_length: int = 160             # 100 mel frames per second
    audio_window_frames: int = 200    # the audio tower attends within 2 s windows (n_window * 2)

    def __post_init__(self):
        """Every size and rate is positive: a zero sample rate or fps would make empty chunks that a
        later step blames on the clip (or a loop that never ends), so it is named here instead."""
        for name in ("patch_size", "temporal_patch_size", "spatial_merge_size", "fps", "position_id_per_seconds",
                     "seconds_per_chunk", "sample_rate", "n_mels", "n_fft", "hop_length", "audio_window_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UsageError(f"{name} must be a positive number (got {value!r})")

    @property
    def merge_pixels(self) -> int:
        """Side of the square one LLM video token covers (28)."""
        return self.patch_size * self.spatial_merge_size

    @property
    def seconds_per_grid(self) -> float:
        """Seconds one temporal grid step covers (1.0 at 2 fps with temporal patches of 2)."""
        return self.temporal_patch_size / self.fps

    @property
    def time_ids_per_chunk(self) -> int:
        """TMRoPE time ids one chunk spans (50)."""
        return int(self.position_id_per_seconds * self.seconds_per_chunk)

    @property
    def grids_per_chunk(self) -> int:
        """Temporal grid steps (frames in OMNISIFT's sense) per chunk (2)."""
        return int(round(self.seconds_per_chunk / self.seconds_per_grid))

    @property
    def samples_per_chunk(self) -> int:
        return int(self.sample_rate * self.seconds_per_chunk)

    @property
    def raw_frames_per_chunk(self) -> int:
        """Video frames at `fps` in one chunk (4)."""
        return int(round(self.fps * self.seconds_per_chunk))

    def tokens_per_frame(self, height: int, width: int) -> int:
        """LLM video tokens per temporal grid step for frames of `height` x `width` pixels."""
        return (height // self.merge_pixels) * (width // self.merge_pixels)

    @staticmethod
    def audio_tokens_for_mel_frames(mel_frames: int) -> int:
        """Audio tokens the tower emits for `mel_frames` log-mel frames (conv stride 2, pool 2)."""
        if mel_frames <= 0:
            return 0
        after_cnn = (mel_frames - 1) // 2 + 1
        return (after_cnn - 2) // 2 + 1

    def mel_frames_for_samples(self, n_samples: int) -> int:
        """Valid log-mel frames for `n_samples` PCM samples (what Whisper's attention mask counts)."""
        return -(-n_samples // self.hop_length)

    def audio_tokens_for_samples(self, n_samples: int) -> int:
        return self.audio_tokens_for_mel_frames(self.mel_frames_for_samples(n_samples))

    @classmethod
    def from_thinker_config(cls, config) -> "OmniSpec":
        """Derive the spec from a transformers `Qwen2_5OmniThinkerConfig` (or its dict)."""
        get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else (
            lambda k, d=None: getattr(config, k, d))
        vision = get("vision_config")
        audio = get("audio_config")
        vget = (lambda k, d: vision.get(k, d)) if isinstance(vision, dict) else (lambda k, d: getattr(vision, k, d))
        aget = (lambda k, d: audio.get(k, d)) if isinstance(audio, dict) else (lambda k, d: getattr(audio, k, d))
        base = TokenIds()
        tokens = TokenIds(
            endoftext=base.endoftext,
            im_start=base.im_start,
            im_end=base.im_end,
            audio=get("audio_token_index", base.audio),
            audio_bos=get("audio_start_token_id", base.audio_bos),
            audio_eos=get("audio_end_token_id", base.audio_eos),
            vision_bos=get("vision_start_token_id", base.vision_bos),
            vision_eos=get("vision_end_token_id", base.vision_eos),
            image=get("image_token_index", base.image),
            video=get("video_token_index", base.video),
        )
        return cls(
            tokens=tokens,
            patch_size=vget("patch_size", 14),
            temporal_patch_size=vget("temporal_patch_size", 2),
            spatial_merge_size=vget("spatial_merge_size", 2),
            position_id_per_seconds=get("position_id_per_seconds", 25),
            seconds_per_chunk=float(get("seconds_per_chunk", 2)),
            n_mels=aget("num_mel_bins", 128),
            audio_window_frames=2 * aget("n_window", 100),
        )
