"""Grouped prefill of a clip (issue 25.3), side by side in one run on ONNX Runtime CPU.

A 30-s clip of generated media streams through `OmniSession` on the 512-wide, 12-layer thinker of
benchmarks/streaming.py (its export, 224x224, ratios 1 and 0.25) as a file does: chunk by chunk (one
decoder call per chunk) and grouped (`prefill_chunks` = all: one decoder call for the clip's kept
tokens at the end of the media; `--group K`: K chunks per call). Printed per ratio and mode: the decoder's prefill seconds (sum over
chunks), the time to the first answer token after the media ended, and the whole-stream time to
the first answer token; the four runs interleaved over `--rounds`.

    PYTHONPATH=. python benchmarks/grouped_prefill.py --workdir DIR [--seconds 30] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from streaming import chunk_media  # noqa: E402


def run(art: Path, ratio: float, seconds: float, grouped: bool, group: int = 0) -> dict:
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    chunks = int(round(seconds / 2))
    per_call = (group or chunks) if grouped else 1
    session = OmniSession(RuntimeConfig(art, ratio=ratio, system_prompt="You are a helpful assistant.",
                                        prefill_chunks=per_call))
    session.stream.prefill_chunks = per_call       # as OmniSession.append_file sets it for a file's chunks
    start = time.perf_counter()
    for j in range(chunks):
        session.append_chunk(*chunk_media(session, j))
    media_end = time.perf_counter()
    first = None
    for _ in session.ask_ids("What happens in the video, and what do you hear?", max_new_tokens=1):
        first = time.perf_counter()
    return dict(prefill=sum(r.seconds["prefill"] for r in session.reports), after_media=first - media_end,
                total=first - start, cached=session.stream.kv_length())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="benchmarks/streaming.py's workdir (its export)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--group", type=int, default=0, help="chunks per grouped call (default 0: the whole clip)")
    args = parser.parse_args()
    import onnxruntime

    art = args.workdir / "export"
    print(f"{args.seconds:g}-s clip, {art}, onnxruntime {onnxruntime.__version__} CPU, {time.strftime('%Y-%m-%d %H:%M')}",
          flush=True)
    runs = {(r, g): [] for r in (1.0, 0.25) for g in (False, True)}
    for _ in range(args.rounds):
        for key in runs:
            runs[key].append(run(art, key[0], args.seconds, key[1], args.group))

    def med(key, name):
        return statistics.median(x[name] for x in runs[key])

    print("\n| ratio | prefill | decoder prefill s | first token after media s | media + first token s | cached |")
    print("|---|---|---|---|---|---|")
    for (ratio, grouped) in runs:
        print(f"| {ratio:g} | {'grouped' if grouped else 'chunk by chunk'} | {med((ratio, grouped), 'prefill'):.2f} | "
              f"{med((ratio, grouped), 'after_media'):.2f} | {med((ratio, grouped), 'total'):.2f} | "
              f"{runs[ratio, grouped][0]['cached']} |")
    for grouped in (False, True):
        name = "grouped" if grouped else "chunk by chunk"
        print(f"decoder prefill, ratio 1 / 0.25, {name}: {med((1.0, grouped), 'prefill') / med((0.25, grouped), 'prefill'):.2f}x")
    for ratio in (1.0, 0.25):
        print(f"ratio {ratio:g}: grouped vs chunk by chunk, decoder prefill "
              f"{med((ratio, False), 'prefill') / med((ratio, True), 'prefill'):.2f}x, media + first token "
              f"{med((ratio, False), 'total') / med((ratio, True), 'total'):.2f}x")


if __name__ == "__main__":
    main()
