"""Generated audio-visual event clips for the training tests, an mp4 writer, and a content encoder.

A clip shows a fixed scene; at a random time a flash fills one frame and a 0.4 s burst of
band-limited noise plays: low band (100-500 Hz) means answer "A", high band (3.5-7.5 kHz) answer
"B". The rest of the soundtrack is silent, so only the event's audio tokens tell the answer.
"""

from __future__ import annotations

import numpy as np

BANDS = {"A": (100.0, 500.0), "B": (3500.0, 7500.0)}
FPS, SAMPLE_RATE = 2.0, 16000
SCENE = np.random.default_rng(7).integers(0, 80, size=(56, 56, 3), dtype=np.uint8)   # the fixed camera view


def band_noise(rng, lo: float, hi: float, n: int) -> np.ndarray:
    """[n] unit-variance noise with its spectrum cut to [lo, hi] Hz, faded in and out."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spectrum, n)
    return x / x.std() * np.hanning(n) ** 0.25


def event_clip(rng, seconds: float = 2.0, burst: float = 0.4, size: int = 56):
    """(frames [T, size, size, 3] uint8 at 2 fps, pcm [N] float32 at 16 kHz, event start s, answer)."""
    start = float(rng.uniform(0.05, seconds - burst - 0.05))
    answer = str(rng.choice(list(BANDS)))
    n_frames = int(seconds * FPS)
    scene = SCENE if size == SCENE.shape[0] else np.resize(SCENE, (size, size, 3))
    frames = np.repeat(scene[None], n_frames, axis=0)                               # [T, H, W, 3]
    frames[min(int(round(start * FPS)), n_frames - 1)] = (230, 220, 60)             # the flash
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pcm = np.zeros(t.size)
    on = (t >= start) & (t < start + burst)
    pcm[on] = 0.3 * band_noise(rng, *BANDS[answer], int(on.sum()))
    return frames, pcm.astype(np.float32), start, answer


def event_tokens(n_audio: int, start: float, burst: float = 0.4) -> np.ndarray:
    """[n_audio] bool: audio tokens (40 ms, 4 mel frames of 25 ms windows) that hear the burst."""
    lo = 0.04 * np.arange(n_audio) - 0.0125
    return (lo + 0.065 > start) & (lo < start + burst)


class ContentEncoder:
    """Stands in for the frozen towers in the learning test: fixed random projections of the package's
    features, so token embeddings carry their content (the tiny default's random towers keep ~3% of
    it: see docs/train.md). Audio token i: 4 frames of log10 mel power (before Whisper's per-clip
    floor, which would leak the clip's loudness into every token); video token: its 2x2x2 patches.
    Every token is scaled to norm 4."""

    def __init__(self, d_model: int = 64, seed: int = 123, norm: float = 4.0):
        import torch

        g = np.random.default_rng(seed)
        self.wa = torch.from_numpy(g.standard_normal((512, d_model)) / np.sqrt(512)).float()
        self.bias = torch.from_numpy(g.standard_normal(d_model)).float()
        self.wv = torch.from_numpy(g.standard_normal((4 * 1176, d_model)) / np.sqrt(4 * 1176)).float()
        self.norm = norm

    def __call__(self, model, example, pcm):
        import torch

        from omnisift_edge.model.preprocess import log_mel_chunks
        from omnisift_edge.train.step import Encoded

        n_audio = int((example.input_ids == model.spec.tokens.audio).sum())
        log_spec = np.concatenate(log_mel_chunks(pcm, model.spec)[0], axis=1)          # [128, n] float64
        log_spec = np.pad(log_spec, ((0, 0), (0, max(0, 4 * n_audio - log_spec.shape[1]))))[:, :4 * n_audio]
        audio = torch.from_numpy(log_spec.T.reshape(n_audio, 512) + 10.0).float() @ self.wa + self.bias
        video = torch.from_numpy(example.pixel_values).reshape(-1, 4 * 1176) @ self.wv
        scale = lambda x: self.norm * x / x.norm(dim=-1, keepdim=True)                  # noqa: E731
        return Encoded(example, scale(video), scale(audio))


def write_mp4(path, frames: np.ndarray, pcm: np.ndarray, *, fps: float = FPS, audio: bool = True):
    """Write frames [T, H, W, 3] uint8 and mono float PCM at 16 kHz as mpeg4 + AAC with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=int(fps))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=SAMPLE_RATE) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            for s in range(0, len(pcm), 1024):
                block = np.ascontiguousarray(pcm[None, s:s + 1024], dtype=np.float32)       # [1, <=1024]
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = SAMPLE_RATE, s
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


# ------------------------------------------------------------------------------------ learning task

LEARN_RHO = dict(rho_video=0.5, rho_audio=0.8)      # a chunk keeps 10 of its 50 audio tokens


def event_dataset(model, n: int, seed: int = 0) -> list:
    """[(Encoded, event mask over its audio tokens)] for `n` generated clips, encoded by ContentEncoder."""
    from omnisift_edge.train.data import example_from_arrays

    encoder, rng, data = ContentEncoder(model.hidden_size), np.random.default_rng(seed), []
    for i in range(n):
        frames, pcm, start, answer = event_clip(rng)
        example = example_from_arrays(model, i, frames, pcm, "Which sound?", answer, (56, 56), system=None)
        enc = encoder(model, example, pcm)
        data.append((enc, event_tokens(enc.audio.shape[0], start)))
    return data


def evaluate(model, selector, held) -> tuple[float, float, float]:
    """(loss per answer token, kept fraction of event audio tokens, kept fraction of all audio tokens)."""
    import torch

    from omnisift_edge.train.step import compressed_forward

    loss = tokens = kept_event = n_event = kept_audio = n_audio = 0
    with torch.no_grad():
        for enc, event in held:
            out = compressed_forward(model, selector, [enc], training=False, **LEARN_RHO)
            keep = out.keep_mask[0].numpy()[enc.example.input_ids == model.spec.tokens.audio]
            loss, tokens = loss + float(out.loss_sum), tokens + out.n_tokens
            kept_event, n_event = kept_event + keep[event].sum(), n_event + event.sum()
            kept_audio, n_audio = kept_audio + keep.sum(), n_audio + keep.size
    return loss / tokens, kept_event / n_event, kept_audio / n_audio


def learning_run(data, *, selector_seed: int, llm: str = "full", steps: int = 100, lr: float = 1e-2,
                 batch: int = 16, n_held: int = 64, pretrain_steps: int = 0) -> dict:
    """Train on `data[:-n_held]` with `Trainer.step` in train()'s example order; measure on the rest.

    `pretrain_steps` > 0 first teaches the LLM the task with every token kept (standing in for a
    pretrained LLM that already reads audio), then trains with `llm` from a fresh selector.
    """
    import time

    import torch

    from omnisift_edge.model.load import ModelSource, load_model
    from omnisift_edge.model.tiny import build_tiny_selector
    from omnisift_edge.train.loop import example_positions
    from omnisift_edge.train.step import Trainer

    torch.manual_seed(0)
    model = load_model(ModelSource())
    train, held = data[:-n_held], data[-n_held:]

    def run(trainer, n, offset=0):
        return [trainer.step([[train[i][0] for _, i in example_positions(offset + s, batch, len(train), 0)]]).loss
                for s in range(n)]

    if pretrain_steps:
        run(Trainer(model, build_tiny_selector(99), llm="full", lr=lr, total_steps=pretrain_steps, warmup_steps=5,
                    rho_video=0.0, rho_audio=0.0), pretrain_steps)
    model.selector = build_tiny_selector(selector_seed)
    before = evaluate(model, model.selector, held)
    started = time.perf_counter()
    trainer = Trainer(model, model.selector, llm=llm, lr=lr, total_steps=steps, warmup_steps=5, **LEARN_RHO)
    losses = run(trainer, steps, pretrain_steps)
    after = evaluate(model, model.selector, held)
    return {"before": before, "after": after, "seconds": time.perf_counter() - started,
            "train_loss": (float(np.mean(losses[:5])), float(np.mean(losses[-5:])))}
