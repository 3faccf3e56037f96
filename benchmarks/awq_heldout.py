"""Held-out check of GPTQ rounding on the mid-size random model (issue 21): are the calibration rows overfit?

GPTQ ints (no AWQ scales, RTN block scales) from calibration clips 100-101; each decoder linear's output
error relative to RTN on those rows and on the rows of other clips (200-202), summed per linear kind;
plus how far from full rank the calibration rows are (share of dims holding 99% of the singular values).

    python -m benchmarks.awq_heldout
"""

from __future__ import annotations

import time

import torch

from benchmarks.awq import SIZE
from benchmarks.pipeline import build_model
from omnisift_edge.export.decoder import awq, gptq
from omnisift_edge.model.synthetic import synthetic_clip
from omnisift_edge.runtime.torch_pipeline import CompressionConfig


def main() -> None:
    t0 = time.time()
    model = build_model("mid", "cpu", torch.float32)
    spec = model.spec
    comp = CompressionConfig.for_ratio(0.25, spec.tokens_per_frame(*SIZE))
    clips = lambda seeds: [(c.frames, c.pcm) for c in (synthetic_clip(4.0, *SIZE, fps=spec.fps, sample_rate=spec.sample_rate, seed=s) for s in seeds)]
    with torch.inference_mode(False):
        cal = awq.collect_inputs(model, clips([100, 101]), SIZE, comp.rho_video, comp.rho_audio)
        ev = awq.collect_inputs(model, clips([200, 201, 202]), SIZE, comp.rho_video, comp.rho_audio)
        print("rows", {k: tuple(v.shape) for k, v in list(cal.items())[:4]}, "eval rows", next(iter(ev.values())).shape[0], flush=True)
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.3.mlp.gate_proj", "model.layers.3.mlp.down_proj"):
            s = torch.linalg.svdvals(cal[name].double()); print(name, "rank99%", int((s.cumsum(0) / s.sum() < 0.99).sum()) + 1, "of", cal[name].shape[1], flush=True)
        tot = {}
        for g in awq.layer_groups(model.thinker)[0]:
            hc, he = gptq.hessian(cal[g.linears[0]]), gptq.hessian(ev[g.linears[0]])
            for name in g.linears:
                w = model.thinker.get_submodule(name).weight.detach().float()
                sc = gptq.rtn_scales(w, 32)
                q0 = gptq.round_with(w, sc, 32); q1 = gptq.gptq_round(w, hc, sc, 32)
                kind = tot.setdefault(name.rsplit(".", 1)[-1], [0, 0, 0, 0])
                for i, (q, h) in enumerate(((q0, hc), (q1, hc), (q0, he), (q1, he))):
                    kind[i] += gptq.output_error(w, q, sc, h, 32)
        print("gptq/rtn layer output error, calibration rows | held-out eval rows:", flush=True)
        for k, (rc, gc, re, ge) in tot.items():
            print(f"  {k}: {gc / rc:.3f} | {ge / re:.3f}", flush=True)
        print("all:", sum(v[1] for v in tot.values()) / sum(v[0] for v in tot.values()), "|", sum(v[3] for v in tot.values()) / sum(v[2] for v in tot.values()), f"{time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
