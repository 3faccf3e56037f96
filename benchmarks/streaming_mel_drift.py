"""How far the streaming log-mel floor (running max) moves features and audio embeddings.

Whole-clip Whisper features floor every frame at the clip's global max - 8; `StreamingLogMel`
floors chunk j at the max over chunks 0..j. This script feeds generated clips both ways, through
a tiny seeded transformers `Qwen2_5OmniAudioEncoder`, and prints the deviation. It also prints
the per-chunk-max rule (each chunk floored at its own max) for comparison, and, as a yardstick,
what rounding the whole-clip features to float16 does (an fp16 engine input does that).

    python benchmarks/streaming_mel_drift.py

Needs torch and transformers (the `model` extra). CPU is fine: the clips are 10-12 s.
"""

from __future__ import annotations

import platform

import numpy as np

from omnisift_edge.model.preprocess import StreamingLogMel, floor_and_scale, log_mel
from omnisift_edge.model.spec import OmniSpec

SPEC = OmniSpec()
SR = SPEC.sample_rate


def speech_like_bursts(seconds=12.0, seed=0):
    """Band-limited noise bursts (0.1-0.6 s, syllable-like envelopes) of varied loudness over a faint floor."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = 1e-4 * rng.standard_normal(n)                                                    # [n]
    t = 0
    while t < n:
        length = int(rng.uniform(0.1, 0.6) * SR)
        burst = np.convolve(rng.standard_normal(length), np.hanning(9), mode="same")     # low-passed noise
        burst *= np.hanning(length) * rng.uniform(0.02, 0.6)                            # envelope, loudness
        x[t:t + length] += burst[: n - t]
        t += length + int(rng.uniform(0.05, 0.8) * SR)                                  # pause
    return x.astype(np.float32)


def quiet_then_loud(seconds_quiet=6.0, seconds_loud=4.0, seed=1):
    rng = np.random.default_rng(seed)
    quiet = 1e-3 * rng.standard_normal(int(seconds_quiet * SR))
    loud = 0.5 * rng.standard_normal(int(seconds_loud * SR))
    return np.concatenate([quiet, loud]).astype(np.float32)


def loud_then_quiet(seed=2):
    return quiet_then_loud(seed=seed)[::-1].copy()


def constant_tone(seconds=10.0, hz=440.0):
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def streaming_features(pcm, block=1600):
    """Push 100 ms blocks, as a live microphone would; -> (running-max features, per-chunk-max features)."""
    s = StreamingLogMel(SPEC)
    chunks = []
    for i in range(0, pcm.shape[0], block):
        chunks += s.push(pcm[i:i + block])
    chunks += s.finish()
    running = np.concatenate([c.features for c in chunks], 1)                            # [128, n]
    per_chunk = np.concatenate([floor_and_scale(c.log_spec, c.log_spec.max()) for c in chunks], 1)
    return running, per_chunk


def tiny_audio_tower(seed=0):
    import torch
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

    cfg = Qwen2_5OmniAudioEncoderConfig(num_mel_bins=SPEC.n_mels, d_model=32, encoder_layers=2,
                                        encoder_attention_heads=2, encoder_ffn_dim=64, n_window=100,
                                        output_dim=64, max_source_positions=1500)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return Qwen2_5OmniAudioEncoder(cfg).eval()


def embed(tower, features):
    """[128, n] features -> [audio tokens, 64] embeddings, called as transformers' thinker calls the tower."""
    import torch

    n = features.shape[1]
    with torch.no_grad():
        out = tower(torch.from_numpy(features), feature_lens=torch.LongTensor([n]),
                    aftercnn_lens=torch.LongTensor([(n - 1) // 2 + 1])).last_hidden_state
    return out.numpy()                                                                    # [tokens, 64]


def compare(whole, other, silence):
    """-> (max abs, max abs / max |whole|, ||diff|| / ||whole||, ||diff|| / ||whole - silence||).

    The last one divides by how far the clip's content moves the embeddings away from those of
    silence: a random tiny tower's outputs are dominated by its positional embedding and biases,
    so ||whole|| alone flatters the drift.
    """
    d = other - whole
    l2 = np.linalg.norm(d)
    return (np.abs(d).max(), np.abs(d).max() / np.abs(whole).max(), l2 / np.linalg.norm(whole),
            l2 / np.linalg.norm(whole - silence))


def main():
    import torch
    import transformers

    tower = tiny_audio_tower()
    print(f"# streaming_mel_drift: numpy {np.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {platform.machine()}")
    print("# features: max |other - whole|, frames that differ | embeddings of a tiny seeded tower (64-d):")
    print("#   max abs, max abs / max |whole|, ||diff|| / ||whole||, ||diff|| / ||whole - silence||, tokens")
    clips = {
        "speech_like_bursts_12s": speech_like_bursts(),
        "quiet_then_loud_6s+4s": quiet_then_loud(),
        "loud_then_quiet_4s+6s": loud_then_quiet(),
        "constant_tone_10s": constant_tone(),
    }
    for name, pcm in clips.items():
        whole = log_mel(pcm, SPEC)                                                        # [128, n]
        e_whole = embed(tower, whole)
        e_silence = embed(tower, log_mel(np.zeros_like(pcm), SPEC))
        fp16 = whole.astype(np.float16).astype(np.float32)     # reference: fp16 rounding of the features
        for rule, feats in zip(("running_max", "per_chunk_max", "ref:fp16_feats"), (*streaming_features(pcm), fp16)):
            f_max = np.abs(feats - whole).max()
            f_frames = int((np.abs(feats - whole).max(0) > 0).sum())
            e = embed(tower, feats)
            e_abs, e_rel_max, e_rel_l2, e_rel_content = compare(e_whole, e, e_silence)
            e_tokens = int((np.abs(e - e_whole).max(1) > 0).sum())
            print(f"{name:23s} {rule:14s} {f_max:6.4f} {f_frames:4d}/{whole.shape[1]:<4d} | "
                  f"{e_abs:.2e} {e_rel_max:.2e} {e_rel_l2:.2e} {e_rel_content:.2e} {e_tokens:3d}/{e.shape[0]}")


if __name__ == "__main__":
    main()
