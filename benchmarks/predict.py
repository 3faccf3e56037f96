"""The speed predictor (engines/speed.py) against what `profile` measures on this CPU, side by side.

Writes a random-weight thinker (512 wide, 12 layers by default: benchmarks/streaming.py's), exports it
(fp32, ratios 1 and 0.25), probes this CPU (`--target cpu`: numpy matmul rate and copy bandwidth,
measured fresh here, not the cached probe), profiles the export with ONNX Runtime, and prints each
stage's measured median next to the roofline's prediction for the same cache length, with the ratio.

    python -m benchmarks.predict --workdir /tmp/predict [--hidden 512 --layers 12 --resolution 224x224]

The published-figure check (Orin) needs no machine: tests/engines/test_speed.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


PROFILE_STAGE = {"vision_encoder": "vision", "audio_encoder": "audio", "compressor": "compressor", "prefill": "prefill"}


def compare(folder: Path, seconds: float, max_new_tokens: int, probe: dict) -> list[dict]:
    """Measured (profile, ONNX Runtime CPU) and predicted (roofline on `probe`) per ratio and stage."""
    from omnisift_edge.engines import speed
    from omnisift_edge.engines.hardware import cpu_hardware
    from omnisift_edge.profiling.profile import ProfileConfig, profile

    report = profile(ProfileConfig(folder, seconds=seconds, max_new_tokens=max_new_tokens, out=folder / "profile"),
                     bar=False)
    rows = []
    for measured in report.ratios:
        kept = measured["tokens_kept"] // measured["chunks"]
        # the prediction at the cache length the profile's stream reached (its prefill and decode ran there)
        window = speed.PROMPT_TOKENS + measured["chunks"] * kept + speed.QUESTION_TOKENS
        plan = speed.speed_for_export(folder, target="cpu", ratios=(measured["ratio"],), max_context=window,
                                      hardware=cpu_hardware(probe))
        r = plan.ratios[0]
        pairs = {s: (measured["stage_ms"][PROFILE_STAGE[s]]["median"], r.stages[s].ms) for s in speed.SPEED_STAGES}
        pairs["ttft"] = (measured["ttft_ms"], r.ttft.ms)
        pairs["decode ms/token"] = (1e3 / measured["decode_tokens_per_s"], r.decode_full.ms)
        rows.append({"ratio": measured["ratio"], "kept": kept, "window": window,
                     "stages": {k: {"measured_ms": m, "predicted_ms": p, "predicted/measured": p / m,
                                    "bound": (r.stages.get(k) or r.decode_full).bound}
                                for k, (m, p) in pairs.items()}})
    return rows


def orin_table(configs=("qwen2_5_omni_3b", "qwen2_5_omni_7b"), weights=("fp16", "int8", "int4"),
               targets=("orin-nano", "orin-nx", "orin-agx-32", "orin-agx"), ratios=(1.0, 0.5, 0.25)) -> str:
    """docs/benchmarks.md's predicted table: every Orin, 448x448, 8192-token cache, per model and weights."""
    from omnisift_edge.engines.speed import speed_for_config

    root = Path(__file__).parents[1] / "tests" / "model" / "configs"
    lines = ["| model | weights | target | RTF at 1 / 0.5 / 0.25 | chunk ms at 1 -> 0.25 | TTFT ms | decode tok/s "
             "(short / full) | window held at 1 / 0.25 |", "|---|---|---|---|---|---|---|---|"]
    for config in configs:
        for mode in weights:
            for target in targets:
                plan = speed_for_config(root / f"{config}.json", target=target, ratios=ratios, resolution=(448, 448),
                                        dtype="fp16", weights=mode, block_size=32, lm_head_quantized=False,
                                        max_context=8192)
                r1, rq = plan.ratio(ratios[0]), plan.ratio(ratios[-1])
                held = ("does not fit" if not r1.fit_context else
                        f"{r1.window_seconds:.0f} s / {rq.window_seconds:.0f} s")
                lines.append(f"| {config.split('_')[-1]} | {mode} | {target} | "
                             + " / ".join(f"{plan.ratio(r).real_time_factor:.2f}" for r in ratios)
                             + f" | {r1.chunk.ms:.0f} -> {rq.chunk.ms:.0f} | {r1.ttft.ms:.0f} | "
                             f"{1 / r1.decode_short.seconds:.1f} / {1 / r1.decode_full.seconds:.1f} | {held} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--resolution", default="224x224")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--orin-table", action="store_true", help="Print the predicted Orin table and stop.")
    args = parser.parse_args()
    if args.orin_table:
        print(orin_table())
        return
    from streaming import Plan, write_thinker_folder

    from omnisift_edge.engines.hardware import measure_cpu
    from omnisift_edge.export.stage import ExportConfig, export
    from omnisift_edge.model.load import ModelSource

    work = args.workdir or Path(tempfile.mkdtemp(prefix="predict-"))
    h, w = (int(v) for v in args.resolution.split("x"))
    plan = Plan(args.hidden, args.layers, max(args.hidden // 64, 1), 2, 3 * args.hidden, (h, w), 0, 0, 0, 0, 0, 2048)
    folder = work / f"export-{args.hidden}x{args.layers}-{h}x{w}"
    if not (folder / "manifest.json").is_file():
        model = write_thinker_folder(work / f"model-{args.hidden}x{args.layers}", plan)
        export(ExportConfig(out=folder, source=ModelSource(path=model), ratios=(1.0, 0.25), resolution=(h, w),
                            max_context=2048))
    before = measure_cpu(statistic="median")   # the load the profile will see, not the machine's best moment
    rows = compare(folder, args.seconds, 16, before)
    after = measure_cpu(statistic="median")
    print(f"probe before: {before['gflops']:.1f} GFLOP/s, {before['bandwidth_gbs']:.1f} GB/s; "
          f"after: {after['gflops']:.1f} GFLOP/s, {after['bandwidth_gbs']:.1f} GB/s")
    print("| ratio | stage | measured ms | predicted ms | predicted / measured | bound |\n|---|---|---|---|---|---|")
    for row in rows:
        for stage, v in row["stages"].items():
            print(f"| {row['ratio']:g} | {stage} | {v['measured_ms']:.2f} | {v['predicted_ms']:.2f} | "
                  f"{v['predicted/measured']:.2f} | {v['bound']} |")
    (work / "predict.json").write_text(json.dumps({"probe": [before, after], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
