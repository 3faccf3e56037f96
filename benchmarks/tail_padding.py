"""How far padding the clip's last partial chunk moves the answer (issue 13.8), side by side.

The reference is transformers' forward on the unpadded clip (OmniSIFT hooked in as the authors
hook it). Against it, on the same clip in one run:

- torch session, tail unpadded (what `--backend torch` does): expected identical;
- torch session, tail padded to 2 s (last frame repeated, silence): what the exported graphs and
  engines need, isolated from graph rounding;
- onnxruntime session (padded, through the exported graphs).

It prints, per clip length and ratio: multimodal tokens in the KV cache, the cosine similarity and
max abs difference of the first-token logits, and whether the greedy tokens agree. Clips start
with their loudest sound so the streaming log-mel floor equals the whole clip's (docs/streaming.md
rule 2) and only the tail differs.

    python benchmarks/tail_padding.py [--resolution 112x84] [--seconds 5,6.5,9] [--ratios 1,0.25]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    from omnisift_edge.export.stage import ExportConfig, export
    from omnisift_edge.model.preprocess import log_mel, video_patches
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT
    from omnisift_edge.runtime.demo import parse_resolution
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig
    from omnisift_edge.runtime.torch_pipeline import ClipFeatures, CompressionConfig, greedy_decode, whole_clip_prefill

    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", default="112x84")
    parser.add_argument("--seconds", default="5,6.5,9")
    parser.add_argument("--ratios", default="1,0.25")
    args = parser.parse_args()
    res = parse_resolution(args.resolution)
    ratios = tuple(float(r) for r in args.ratios.split(","))
    question = "What happens?"
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{dt.date.today()}, tiny default, {res[0]}x{res[1]}")
    print("| clip s | ratio | path | mm tokens | cosine | max abs | tokens == whole |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "art"
        export(ExportConfig(out=folder, ratios=ratios, resolution=res))
        for seconds in (float(s) for s in args.seconds.split(",")):
            clip = synthetic_clip(seconds, *res, seed=4)
            frames = clip.frames
            pcm = clip.pcm[:len(frames) * 8000].astype(np.float32)
            pcm[:3200] += (0.9 * np.sin(2 * np.pi * 300 * np.arange(3200) / 16000)).astype(np.float32)
            for ratio in ratios:
                runs = {}
                for name, kwargs in (("torch, tail as is", {"backend": "torch"}),
                                     ("torch, tail padded", {"backend": "torch", "pad_tail": True}),
                                     ("onnxruntime (padded)", {"backend": "onnxruntime"})):
                    session = OmniSession(RuntimeConfig(folder, ratio=ratio, **kwargs))
                    for j in range(0, len(frames), 4):
                        session.append_chunk(frames[j:j + 4], pcm[j * 8000:(j + 4) * 8000])
                    tokens = list(session.ask_ids(question, max_new_tokens=8))
                    mm = sum(r.kept_video + r.kept_audio for r in session.reports)
                    runs[name] = (np.asarray(session.stream.question_logits, dtype=np.float64).reshape(-1), mm, tokens)
                    if name.startswith("torch, tail as is"):
                        model, plan = session.stream.model, session.plan
                pixels, grid = video_patches(frames, model.spec, size=res)
                features = ClipFeatures(pixels, tuple(int(v) for v in grid), log_mel(pcm, model.spec))
                pieces = build_prompt(model.tokenizer, question, system=DEFAULT_SYSTEM_PROMPT, spec=model.spec)
                whole = whole_clip_prefill(model, features, pieces.prefix_ids, pieces.suffix_ids,
                                           CompressionConfig(plan["rho_video"], plan["rho_audio"]))
                whole_tokens = list(greedy_decode(model, whole, max_new_tokens=8, stop_ids=[
                    model.spec.tokens.im_end, model.spec.tokens.endoftext]))
                ref = whole.last_logits.double().numpy().reshape(-1)
                for name, (logits, mm, tokens) in runs.items():
                    cos = float(logits @ ref / (np.linalg.norm(logits) * np.linalg.norm(ref)))
                    print(f"| {seconds:g} | {ratio:g} | {name} | {mm} | {cos:.6f} | "
                          f"{np.abs(logits - ref).max():.2e} | {tokens == whole_tokens} |")


if __name__ == "__main__":
    main()
