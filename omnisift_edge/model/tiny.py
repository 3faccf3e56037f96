"""The embedded default: a tiny random-weight Qwen2.5-Omni thinker built from a seed.

It has the real layout (special token ids, vocabulary size, spatial merge 2, temporal patches of
2, 128 mel bins, audio encoded in 2-second windows, 3-row mRoPE) at toy widths, so every path of
the pipeline runs in seconds on a laptop with no download. Weights come from numpy's PCG64
generator in parameter-name order rather than from torch's initialisers, so the same seed gives
the same weights on every machine, torch version and device.
"""

from __future__ import annotations

from omnisift_edge.errors import require
from omnisift_edge.model.spec import TokenIds

TINY_HIDDEN = 64          # LLM width D of the tiny default
TINY_SELECTOR = {"d_model": TINY_HIDDEN, "hidden": 32, "heads": 4}


def tiny_thinker_config_dict(ids: TokenIds = TokenIds()) -> dict:
    """The thinker config of the embedded default, as the dict a config.json would hold."""
    return {
        "model_type": "qwen2_5_omni_thinker",
        "audio_token_index": ids.audio,
        "image_token_index": ids.image,
        "video_token_index": ids.video,
        "audio_start_token_id": ids.audio_bos,
        "audio_end_token_id": ids.audio_eos,
        "vision_start_token_id": ids.vision_bos,
        "vision_end_token_id": ids.vision_eos,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "text_config": {
            "vocab_size": 152064,
            "hidden_size": TINY_HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},  # head_dim 16
            "tie_word_embeddings": False,
            "use_sliding_window": False,
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": TINY_HIDDEN,
        },
        "audio_config": {
            "num_mel_bins": 128,
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "n_window": 100,
            "output_dim": TINY_HIDDEN,
            "max_source_positions": 1500,
        },
    }


def seeded_fill_(module, seed: int, std: float = 0.02) -> None:
    """Overwrite every parameter of `module` from numpy's PCG64(seed), in sorted-name order.

    Norm weights become 1 and biases of norms 0 (as trained models start); everything else is
    N(0, std). Buffers (rotary tables, sinusoids) are computed by the modules and stay as they are.
    """
    torch = require("torch")
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            is_norm = any(part in name for part in ("norm", "ln_post", "ln_q")) and param.ndim == 1
            if is_norm and name.endswith("weight"):
                param.fill_(1.0)
            elif is_norm:
                param.zero_()
            else:
                values = rng.standard_normal(param.shape, dtype=np.float32) * std
                param.copy_(torch.from_numpy(values))


def build_tiny_thinker(seed: int = 0):
    """The tiny thinker (`Qwen2_5OmniThinkerForConditionalGeneration`, fp32, eval mode)."""
    transformers = require("transformers")
    transformers.logging.set_verbosity_error()   # rope-config chatter (the config warns as it is made)
    config = transformers.Qwen2_5OmniThinkerConfig(**{
        k: v for k, v in tiny_thinker_config_dict().items() if k != "model_type"})
    config._attn_implementation = "sdpa"
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():   # every parameter is overwritten below
        thinker = transformers.Qwen2_5OmniThinkerForConditionalGeneration(config)
    seeded_fill_(thinker, seed)
    return thinker.eval()


def build_tiny_selector(seed: int = 0):
    """The tiny default's audio selector (D=64), seeded like the thinker but from seed + 1."""
    from omnisift_edge.compress.selector import AudioSelector, SelectorConfig

    selector = AudioSelector(SelectorConfig(**TINY_SELECTOR))
    seeded_fill_(selector, seed + 1, std=0.2)
    return selector.eval()


CHECKPOINT_KINDS = ("full", "thinker", "omnisift")


def _save_shard(save_file, tensors: dict, path, shown) -> None:
    """safetensors' save_file; its SafetensorError on a full disk or a file-size limit (not an OSError)
    becomes the one line the other writers give, naming the file (`shown`: where it was going)."""
    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        from omnisift_edge.errors import UsageError

        raise UsageError(f"cannot write {shown} ({exc}); free some space or write elsewhere "
                         "(nothing was written)") from None


def write_tiny_checkpoint(folder, kind: str = "full", seed: int = 0, shard_bytes: int = 16 << 20):
    """Write the embedded default as a model folder of `kind`, in the real checkpoints' format.

    - full: config.json of `Qwen2_5OmniForConditionalGeneration` (thinker_config plus talker and
      token2wav sections), weights under `thinker.` and a few `talker.`/`token2wav.` tensors;
    - omnisift: full plus the selector under `thinker.compressor.`;
    - thinker: a thinker-only folder (weights unprefixed, selector under `compressor.`).
    Weights are sharded at `shard_bytes` with a `model.safetensors.index.json`, as large
    checkpoints are. The folder is written under a hidden temporary name and swapped in at the end
    (`atomic.staged_folder`), so an interrupted write never leaves a folder that looks complete.
    """
    from pathlib import Path

    from omnisift_edge.atomic import staged_folder

    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"kind must be one of {CHECKPOINT_KINDS}")
    final = Path(folder)
    # only an empty folder may be replaced (the CLI says so first); a failure leaves `folder` as it was
    with staged_folder(final, refuse="{folder} is not empty; choose another folder for the model") as staging:
        _write_checkpoint_files(staging, kind, seed, shard_bytes, final)
    return final


def _write_checkpoint_files(folder, kind: str, seed: int, shard_bytes: int, final) -> None:
    import json

    torch = require("torch")
    save_file = require("safetensors.torch").save_file
    from omnisift_edge.model.tokenizer import write_tiny_tokenizer

    thinker_cfg = tiny_thinker_config_dict()
    prefix = "" if kind == "thinker" else "thinker."
    state = {prefix + k: v.contiguous() for k, v in build_tiny_thinker(seed).state_dict().items()
             if "rotary_emb" not in k and "positional_embedding" not in k}
    if kind in ("omnisift", "thinker"):
        state.update({prefix + "compressor." + k: v.contiguous()
                      for k, v in build_tiny_selector(seed).state_dict().items()})
    if kind == "thinker":
        config = dict(thinker_cfg)
    else:
        config = {"model_type": "qwen2_5_omni", "architectures": ["Qwen2_5OmniModel"],
                  "enable_audio_output": True, "thinker_config": thinker_cfg,
                  "talker_config": {"model_type": "qwen2_5_omni_talker"},
                  "token2wav_config": {"model_type": "qwen2_5_omni_token2wav"}}
        generator = torch.Generator().manual_seed(seed)
        state["talker.model.embed_tokens.weight"] = torch.randn(8, 4, generator=generator)
        state["token2wav.code2wav_dit_model.proj.weight"] = torch.randn(4, 4, generator=generator)
    if kind in ("omnisift", "thinker"):
        config["omnisift_compressor"] = dict(TINY_SELECTOR)   # heads are not in the weights
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shards, current, size = [], {}, 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = state[key]
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _save_shard(save_file, shard, folder / name, final / name)
        weight_map.update({k: name for k in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
         "weight_map": weight_map}, indent=2))
    write_tiny_tokenizer(folder)
