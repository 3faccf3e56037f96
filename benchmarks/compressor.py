"""Compressor speed: ours against a faithful re-implementation of the authors' per-chunk loop.

Both run on the same inputs in one process, interleaved (this machine is shared and noisy), at
real 7B widths (D=3584, the 4.86M-parameter selector) on the real Qwen2.5-Omni layout. Prints the
median time of each and their ratio, and checks the two keep masks are identical.

    python benchmarks/compressor.py --seconds 30 120 --resolution 448x448 --ratio 0.25 [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from omnisift_edge.compat import reference_loop_keep_mask
from omnisift_edge.compress.ratio import drops_for_ratio
from omnisift_edge.compress.selector import AudioSelector, SelectorConfig
from omnisift_edge.compress.sequence import compress_sequence
from omnisift_edge.model.layout import build_layout
from omnisift_edge.model.spec import OmniSpec


def make_inputs(seconds: int, height: int, width: int, d_model: int, device: str, seed: int = 0):
    spec = OmniSpec()
    grid_hw = (height // spec.patch_size, width // spec.patch_size)
    n_grids = int(seconds / spec.seconds_per_grid)
    layout = build_layout(spec, [spec.tokens.im_start, 872, 198], [spec.tokens.im_end, 198],
                          n_grids=n_grids, grid_hw=grid_hw, n_audio=25 * seconds)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(np.array(layout.input_ids))[None].to(device)                # [1, L]
    pos = torch.from_numpy(np.array(layout.position_ids))[:, None].to(device)          # [3, 1, L]
    embeds = torch.randn(1, ids.shape[1], d_model, generator=gen).to(device)          # [1, L, D]
    return spec, ids, pos, embeds, spec.tokens_per_frame(height, width)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, nargs="+", default=[30])
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    height, width = (int(v) for v in args.resolution.split("x"))
    torch.manual_seed(0)
    selector = AudioSelector(SelectorConfig()).to(args.device).eval()                 # D=3584 defaults
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, {args.resolution}, ratio {args.ratio}")
    print("| seconds | tokens | reference loop (ms) | ours (ms) | speed-up | masks equal |")
    print("|---|---|---|---|---|---|")
    for seconds in args.seconds:
        spec, ids, pos, embeds, n_p = make_inputs(seconds, height, width, 3584, args.device)
        rho_v, rho_a = drops_for_ratio(args.ratio, n_p)
        kw = dict(audio_token_id=spec.tokens.audio, video_token_id=spec.tokens.video,
                  rho_video=rho_v, rho_audio=rho_a)
        with torch.inference_mode():
            ours = lambda: compress_sequence(embeds, ids, pos, selector, training=False, **kw).keep_mask  # noqa: E731
            ref = lambda: reference_loop_keep_mask(embeds, ids, pos, selector, num_heads=8, **kw)  # noqa: E731
            equal = bool(torch.equal(ours(), ref()))                                   # also the warm-up
            t_ours, t_ref = [], []
            for _ in range(args.repeats):                                              # interleaved
                t_ref.append(timed(ref, args.device))
                t_ours.append(timed(ours, args.device))
        r, o = statistics.median(t_ref) * 1e3, statistics.median(t_ours) * 1e3
        print(f"| {seconds} | {ids.shape[1]} | {r:.1f} | {o:.1f} | {r / o:.1f}x | {equal} |")


if __name__ == "__main__":
    main()
