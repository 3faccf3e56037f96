"""ONNX Runtime thread policies for a stream's four sessions, measured side by side in one run (issue 25).

A stream runs vision, audio, compressor and decoder sessions one after another. The script exports the
512-wide, 12-layer random thinker of benchmarks/streaming.py (ratios 1 and 0.25), then streams the
same generated clip through `OmniSession` under each policy of `artifact.onnx_runtime.THREAD_POLICIES`,
the policies interleaved round by round so that the machine's load falls on all of them alike (each
stream in a fresh child process: ONNX Runtime's global pools, once made, are the process's only pools):

- chunk time (`append_chunk` wall, host preprocessing included) and RTF of the stream;
- one chunk's prefill (median of the chunks after the first), at ratio 1 and 0.25, and their ratio;
- decode tokens/s of the answer.

    python benchmarks/ort_threads.py [--workdir DIR] [--resolution 224x224] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from streaming import FULL, answer, stage_median, stream, write_thinker_folder   # noqa: E402


def one_stream(art: Path, ratio: float, seconds: float, policy: str) -> dict:
    session, times, _ = stream(art, ratio, seconds, ort_threads=policy)
    _, decode, _ = answer(session, 16)
    out = dict(chunk=statistics.median(times[1:]), rtf=sum(times) / seconds, prefill=stage_median(session, "prefill"),
               decode=decode, rows=session.reports[-1].kept_video + session.reports[-1].kept_audio)
    for stage in ("preprocess", "vision", "audio", "compressor"):
        out[stage] = stage_median(session, stage)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model folder and export here")
    parser.add_argument("--resolution", default="224x224")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--policies", default="spin,quiet,shared,decoder-spin")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)   # one stream: [export, ratio, seconds, policy]
    args = parser.parse_args()
    if args.child:
        art, ratio, seconds, policy = json.loads(args.child)
        print(json.dumps(one_stream(Path(art), ratio, seconds, policy)))
        return
    import onnxruntime

    from omnisift_edge.export.stage import ExportConfig, export
    from omnisift_edge.model.load import ModelSource
    from omnisift_edge.model.preprocess import parse_resolution

    plan = dataclasses.replace(FULL, resolution=parse_resolution(args.resolution))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ort-threads-"))
    model_dir, art = work / "model", work / "export"
    if not (art / "manifest.json").is_file():
        if not (model_dir / "config.json").is_file():
            write_thinker_folder(model_dir, plan)
        export(ExportConfig(out=art, source=ModelSource(path=model_dir), ratios=(1.0, 0.25),
                            resolution=plan.resolution, max_context=plan.max_context, overwrite=True))
    policies = args.policies.split(",")
    print(f"thinker {plan.hidden} wide x {plan.layers} layers, {args.resolution}, {args.seconds:g} s streams, "
          f"onnxruntime {onnxruntime.__version__} CPU, {time.strftime('%Y-%m-%d %H:%M')}, policies interleaved "
          f"over {args.rounds} rounds", flush=True)
    runs = {(p, r): [] for p in policies for r in (1.0, 0.25)}
    for _ in range(args.rounds):
        for ratio in (1.0, 0.25):
            for policy in policies:
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps([str(art), ratio, args.seconds,
                                                                                        policy])],
                                     check=True, capture_output=True, text=True).stdout
                runs[policy, ratio].append(json.loads(out.strip().splitlines()[-1]))
    report(runs, policies)


def report(runs: dict, policies: list[str]) -> None:
    def med(policy, ratio, key):
        return statistics.median(x[key] for x in runs[policy, ratio])

    base = policies[0]
    print(f"\n| policy | ratio | chunk ms | RTF | preprocess | vision | audio | compress | prefill ms (rows) | "
          f"decode tok/s | chunk vs {base} | decode vs {base} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ratio in (1.0, 0.25):
        for p in policies:
            print(f"| {p} | {ratio:g} | {med(p, ratio, 'chunk') * 1e3:.0f} | {med(p, ratio, 'rtf'):.3f} | "
                  + " | ".join(f"{med(p, ratio, s) * 1e3:.1f}" for s in ("preprocess", "vision", "audio", "compressor"))
                  + f" | {med(p, ratio, 'prefill') * 1e3:.1f} ({runs[p, ratio][0]['rows']}) | "
                  f"{med(p, ratio, 'decode'):.1f} | {med(base, ratio, 'chunk') / med(p, ratio, 'chunk'):.2f}x | "
                  f"{med(p, ratio, 'decode') / med(base, ratio, 'decode'):.2f}x |")
    print("\none chunk's prefill, ratio 1 / 0.25 (goal >= 3.3x):")
    for p in policies:
        print(f"  {p}: {med(p, 1.0, 'prefill') * 1e3:.1f} / {med(p, 0.25, 'prefill') * 1e3:.1f} ms = "
              f"{med(p, 1.0, 'prefill') / med(p, 0.25, 'prefill'):.2f}x")


if __name__ == "__main__":
    main()
