"""End-to-end export check: the ORT graphs answer exactly as the PyTorch stream does.

A generated clip of two whole chunks at the export resolution goes through both pipelines (same
preprocessing, same prompt); the greedy answer tokens must be identical. The kept sets must be
identical for identical compressor inputs: each chunk's ONNX Runtime encoder outputs go through the
compressor graph and through the PyTorch chunk compressor. (Whether the two whole pipelines kept
the same tokens is recorded too, as information: in fp16 the two backends' encoders round
differently, and a near-tie in the similarity scores may then fall either way; issue 13.1.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

E2E_SECONDS = 4.0
E2E_TOKENS = 8


@dataclass(frozen=True)
class EndToEndCheck:
    chunks: int
    kept_equal: bool             # same compressor inputs -> same kept set (the contract)
    tokens_equal: bool
    torch_tokens: list
    ort_tokens: list
    pipelines_kept_equal: bool | None = None   # information: each pipeline through its own encoders

    @property
    def ok(self) -> bool:
        return self.kept_equal and self.tokens_equal


def end_to_end_check(model, folder: Path, manifest, entry) -> EndToEndCheck:
    """The chain through the graphs vs the PyTorch stream; `manifest` is the one being built (not yet written:
    artifact.manifest.Manifest) and `entry` the RatioPlan of the compressor under test."""
    from omnisift_edge.model.preprocess import log_mel, video_patches
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.artifact.folder import ExportFolder
    from omnisift_edge.runtime.ort_pipeline import OrtStream
    from omnisift_edge.runtime.torch_pipeline import CompressionConfig, TorchStream

    height, width = manifest.resolution
    spec = model.spec
    clip = synthetic_clip(E2E_SECONDS, height, width, fps=spec.fps, sample_rate=spec.sample_rate, seed=11)
    pixels, grid_thw = video_patches(clip.frames, spec, size=(height, width))
    mel = log_mel(clip.pcm, spec)
    pieces = build_prompt(model.tokenizer, "What happens when the sound plays?", spec=spec)
    grid_hw = (int(grid_thw[1]), int(grid_thw[2]))
    compression = CompressionConfig(entry.rho_video, entry.rho_audio)
    torch_stream = TorchStream(model, pieces.prefix_ids, grid_hw=grid_hw, compression=compression)
    # the manifest is not written yet (it is written last): type the one being built, checksums aside
    export = ExportFolder(Path(folder), manifest)
    ort_stream = OrtStream(export, entry.ratio, pieces.prefix_ids)
    per_chunk = grid_hw[0] * grid_hw[1] * spec.grids_per_chunk
    window = spec.audio_window_frames
    chunks = int(grid_thw[0]) // spec.grids_per_chunk
    for j in range(chunks):
        px = pixels[j * per_chunk:(j + 1) * per_chunk]
        window_mel = mel[:, j * window:(j + 1) * window]
        torch_stream.push(px, spec.grids_per_chunk, window_mel)
        ort_stream.push(px, spec.grids_per_chunk, window_mel)
    pipelines_kept_equal = all(np.array_equal(a, b)
                               for a, b in zip(torch_stream.kept_positions, ort_stream.kept_positions))
    sessions = {name: ort_stream.sessions[name] for name in ("vision_encoder", "audio_encoder", "compressor")}
    kept_equal = all(_same_inputs_same_kept(model, sessions, manifest, entry, pixels[j * per_chunk:(j + 1) * per_chunk],
                                            mel[:, j * window:(j + 1) * window])
                     for j in range(chunks))
    stop = list(manifest.stop_token_ids)
    torch_tokens = list(torch_stream.ask(pieces.suffix_ids, max_new_tokens=E2E_TOKENS, stop_ids=stop))
    ort_tokens = list(ort_stream.ask(pieces.suffix_ids, max_new_tokens=E2E_TOKENS, stop_ids=stop))
    return EndToEndCheck(chunks, kept_equal, torch_tokens == ort_tokens, torch_tokens, ort_tokens,
                         pipelines_kept_equal)


def _same_inputs_same_kept(model, sessions: dict, manifest, entry, pixels, mel) -> bool:
    """One chunk's ONNX Runtime embeddings through the compressor graph and the PyTorch module."""
    import torch

    from omnisift_edge.artifact.tensors import AUDIO_ENCODER, COMPRESSOR, VISION_ENCODER
    from omnisift_edge.compress.chunk import ChunkCompressor

    float_type = np.float16 if manifest.dtype == "fp16" else np.float32
    dims = manifest.dims
    video = sessions["vision_encoder"].run(None, {VISION_ENCODER.input_names[0]: pixels.astype(float_type)})[0]  # [2*n_p, D]
    audio = sessions["audio_encoder"].run(None, dict(zip(AUDIO_ENCODER.input_names, (
        mel.astype(float_type), np.array([mel.shape[1]], np.int64)))))[0]                      # [La, D]
    frames = video.reshape(1, dims.grids_per_chunk, -1, video.shape[-1])                 # [1, F, n_p, D]
    n = frames.shape[1] * frames.shape[2] + audio.shape[0]
    positions = np.tile(np.arange(n, dtype=np.int64), (3, 1))                                # [3, n]
    valid = np.array([frames.shape[1]], np.int64), np.array([audio.shape[0]], np.int64)    # a whole chunk
    _, _, ort_index, _ = sessions["compressor"].run(None, dict(zip(COMPRESSOR.input_names,
                                                                   (frames, audio[None], positions, *valid))))
    module = ChunkCompressor(model.selector, entry.rho_video, entry.rho_audio, method="pairwise").eval()
    with torch.inference_mode():
        _, index = module(torch.from_numpy(frames), torch.from_numpy(audio[None]))          # [1, K]
    return bool(np.array_equal(ort_index, index.numpy()))
