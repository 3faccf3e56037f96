"""End-to-end export check: the ORT graphs answer exactly as the PyTorch stream does.

A generated clip of two whole chunks at the export resolution goes through both pipelines (same
preprocessing, same prompt); the kept tokens' positions and the greedy answer tokens must be
identical, and the logits after the question close.
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
    kept_equal: bool
    tokens_equal: bool
    torch_tokens: list
    ort_tokens: list

    @property
    def ok(self) -> bool:
        return self.kept_equal and self.tokens_equal


def end_to_end_check(model, folder: Path, manifest: dict, entry: dict) -> EndToEndCheck:
    from omnisift_edge.model.preprocess import log_mel, video_patches
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.artifact.folder import ExportFolder
    from omnisift_edge.artifact.manifest import Manifest
    from omnisift_edge.runtime.ort_pipeline import OrtStream
    from omnisift_edge.runtime.torch_pipeline import CompressionConfig, TorchStream

    height, width = manifest["resolution"]
    spec = model.spec
    clip = synthetic_clip(E2E_SECONDS, height, width, fps=spec.fps, sample_rate=spec.sample_rate, seed=11)
    pixels, grid_thw = video_patches(clip.frames, spec, size=(height, width))
    mel = log_mel(clip.pcm, spec)
    pieces = build_prompt(model.tokenizer, "What happens when the sound plays?", spec=spec)
    grid_hw = (int(grid_thw[1]), int(grid_thw[2]))
    compression = CompressionConfig(entry["rho_video"], entry["rho_audio"])
    torch_stream = TorchStream(model, pieces.prefix_ids, grid_hw=grid_hw, compression=compression)
    # the manifest is not written yet (it is written last): type the one being built, checksums aside
    export = ExportFolder(Path(folder), Manifest.from_dict({**manifest, "schema_version": 0}))
    ort_stream = OrtStream(export, entry["ratio"], pieces.prefix_ids)
    per_chunk = grid_hw[0] * grid_hw[1] * spec.grids_per_chunk
    window = spec.audio_window_frames
    chunks = int(grid_thw[0]) // spec.grids_per_chunk
    for j in range(chunks):
        px = pixels[j * per_chunk:(j + 1) * per_chunk]
        window_mel = mel[:, j * window:(j + 1) * window]
        torch_stream.push(px, spec.grids_per_chunk, window_mel)
        ort_stream.push(px, spec.grids_per_chunk, window_mel)
    kept_equal = all(np.array_equal(a, b) for a, b in zip(torch_stream.kept_positions, ort_stream.kept_positions))
    stop = manifest["stop_token_ids"]
    torch_tokens = list(torch_stream.ask(pieces.suffix_ids, max_new_tokens=E2E_TOKENS, stop_ids=stop))
    ort_tokens = list(ort_stream.ask(pieces.suffix_ids, max_new_tokens=E2E_TOKENS, stop_ids=stop))
    return EndToEndCheck(chunks, kept_equal, torch_tokens == ort_tokens, torch_tokens, ort_tokens)
