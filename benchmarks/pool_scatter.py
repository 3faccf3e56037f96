"""Chunk prefills of several streams in one `decoder_scatter` call on the pool's slots (issue 23), measured.

GroupQueryAttention (`decoder_gqa`) refuses S > 1 new rows over a past at batch > 1, so a pool can batch
its streams' chunk prefills only through `decoder_scatter` (ONNX TensorScatter, a write index per row).
For the model at --resolution, ratio 0.25, --max-context (each part side by side in one process):

1. in place: one decode step of `decoder_scatter` with the present bound to the past's OrtValue against
   the present bound to a new buffer, at growing cache lengths (a copy of the cache grows with it; ONNX
   Runtime 1.32 also logs "in-place optimization not activated" when it copies);
2. cost: the chunk prefill of 4 streams (K kept rows each) over pasts of several lengths up to the pool's
   max_context: 4 `decoder_gqa` calls (what the pool does) against one `decoder_scatter` call of B = 4 on
   the slot span, and one row of each (min over rounds of the median of --repeats, alternating);
3. memory: VmRSS of a pool (4 streams, one chunk each) with and without the scatter session, each in a
   fresh child process.

    python benchmarks/pool_scatter.py [--models default,mid] [--resolution 448x448] [--max-context 2048]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def _graphs(folder: Path):
    from omnisift_edge.artifact.folder import ExportFolder
    from omnisift_edge.artifact.onnx_runtime import ort_session
    from omnisift_edge.artifact.tensors import decoder_gqa_graph, decoder_scatter_graph

    export = ExportFolder.open(folder)
    layers = export.manifest.dims.num_layers
    return (export, ort_session(folder / "decoder_gqa.onnx", spins=True), decoder_gqa_graph(layers),
            ort_session(folder / "decoder_scatter.onnx", spins=True), decoder_scatter_graph(layers))


class Caller:
    """The two decoder forms bound on one set of slot buffers [B, kv, cache, hd] per layer and kind."""

    def __init__(self, folder: Path, batch: int, cache: int):
        import onnxruntime as ort

        self.ort = ort
        self.export, self.gqa, self.gqa_graph, self.scatter, self.scatter_graph = _graphs(folder)
        d = self.export.manifest.dims
        rng = np.random.default_rng(0)
        self.arrays = {n: (rng.standard_normal((batch, d.kv_heads, cache, d.head_dim)) * 0.1).astype(np.float32)
                       for n in self.scatter_graph.input_names[4:]}

    def _bind(self, binding, graph, first: int, lo: int, hi: int, same: bool) -> None:
        binding.bind_output(graph.output_names[0], "cpu")
        for past, present in zip(graph.input_names[first:], graph.output_names[1:]):
            value = self.ort.OrtValue.ortvalue_from_numpy(self.arrays[past][lo:hi])        # [B, kv, cache, hd]
            binding.bind_ortvalue_input(past, value)
            if same:
                binding.bind_ortvalue_output(present, value)                                # in place
            else:
                binding.bind_output(present, "cpu")                                         # a new buffer

    def scatter_call(self, lo, embeds, positions, writes, logits=(), same=True) -> None:
        """decoder_scatter on slots [lo, lo + B): embeds [B, S, D], positions [3, B, S], writes [B]."""
        b = self.scatter.io_binding()
        self._bind(b, self.scatter_graph, 4, lo, lo + embeds.shape[0], same)
        for name, value in zip(self.scatter_graph.input_names[:4],
                               (embeds, positions, np.asarray(writes, np.int64), np.asarray(logits, np.int64))):
            b.bind_cpu_input(name, value)
        self.scatter.run_with_iobinding(b)

    def gqa_call(self, row, embeds, positions, length) -> None:
        """decoder_gqa on slot `row`: embeds [1, S, D] after `length` cached rows, no logits."""
        b = self.gqa.io_binding()
        self._bind(b, self.gqa_graph, 5, row, row + 1, True)
        n = embeds.shape[1]
        for name, value in zip(self.gqa_graph.input_names[:5],
                               (embeds, positions, np.array([length + n - 1], np.int32),
                                np.array([length + n], np.int32), np.zeros(0, np.int64))):
            b.bind_cpu_input(name, value)
        self.gqa.run_with_iobinding(b)


def _median_ms(fn, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)) * 1e3


def in_place(folder: Path, repeats: int) -> None:
    print("\n| cache rows | cache (all layers) | present bound to the past | present to a new buffer |")
    print("|---|---|---|---|")
    for cache in (1025, 16385, 32769):
        caller = Caller(folder, 1, cache)
        d = caller.export.manifest.dims
        embeds, positions = np.zeros((1, 1, d.hidden), np.float32), np.full((3, 1, 1), 50)
        ms = {True: [], False: []}
        for _ in range(3):
            for same in (True, False):
                ms[same].append(_median_ms(lambda: caller.scatter_call(0, embeds, positions, [50], [0], same), repeats))
        mib = sum(a.nbytes for a in caller.arrays.values()) / 2**20
        print(f"| {cache} | {mib:.0f} MiB | {min(ms[True]):.2f} ms | {min(ms[False]):.2f} ms |", flush=True)


def cost(folder: Path, max_context: int, repeats: int) -> None:
    caller = Caller(folder, 4, max_context + 1)
    k = caller.export.manifest.ratio_plan(0.25).kept_total
    d = caller.export.manifest.dims
    embeds = np.random.default_rng(1).standard_normal((4, k, d.hidden)).astype(np.float32)       # [4, K, D]
    print(f"\nchunk prefill of 4 streams, K = {k} kept rows each, slots of {max_context + 1} rows")
    print("| pasts | 4 decoder_gqa calls | 1 decoder_scatter call, B = 4 | scatter / gqa | "
          "1 row: gqa | 1 row: scatter |\n|---|---|---|---|---|---|")
    longest = max_context - k - 1
    for pasts in ([200] * 4, [longest // 2] * 4, [longest] * 4, [200, longest // 3, 2 * longest // 3, longest]):
        positions = np.stack([np.tile(np.arange(w, w + k), (3, 1)) for w in pasts], axis=1)   # [3, 4, K]
        ways = {"gqa": lambda: [caller.gqa_call(i, embeds[i:i + 1], positions[:, i:i + 1], pasts[i]) for i in range(4)],
                "scatter": lambda: caller.scatter_call(0, embeds, positions, pasts),
                "gqa1": lambda: caller.gqa_call(3, embeds[3:], positions[:, 3:], pasts[3]),
                "scatter1": lambda: caller.scatter_call(3, embeds[3:], positions[:, 3:], pasts[3:])}
        ms = {name: [] for name in ways}
        for _ in range(3):
            for name, fn in ways.items():
                ms[name].append(_median_ms(fn, repeats))
        ms = {name: min(v) for name, v in ms.items()}
        print(f"| {pasts} | {ms['gqa']:.1f} ms | {ms['scatter']:.1f} ms | x{ms['scatter'] / ms['gqa']:.2f} | "
              f"{ms['gqa1']:.1f} ms | {ms['scatter1']:.1f} ms |", flush=True)


def rss_child(folder: str, max_context: int, scatter: bool) -> None:
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.runtime.pool import open_pool
    from omnisift_edge.runtime.session import RuntimeConfig

    pool = open_pool(RuntimeConfig(folder, max_context=max_context), max_streams=4, batch_prefill=scatter)
    streams = [pool.open_stream() for _ in range(4)]
    for i, s in enumerate(streams):
        clip = synthetic_clip(4.0, *s.resolution, seed=i)
        s.append_chunk(clip.frames, clip.pcm)
        s.finish()
    status = Path("/proc/self/status").read_text()
    print(int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024)


def memory(folder: Path, max_context: int) -> None:
    got = {}
    for scatter in (False, True, False, True):
        done = subprocess.run([sys.executable, __file__, "--rss-child", str(folder), str(max_context), str(int(scatter))],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        got.setdefault(scatter, []).append(float(done.stdout.split()[-1]))
    print(f"\npool of 4 streams, one prefilled chunk each, VmRSS: without the scatter session {min(got[False]):.0f} MiB, "
          f"with it {min(got[True]):.0f} MiB (+{min(got[True]) - min(got[False]):.0f} MiB)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,mid")
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the exports in this folder")
    args = parser.parse_args()
    from pool import export_model

    resolution = tuple(int(x) for x in args.resolution.split("x"))
    print(f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {dt.date.today()}, "
          f"onnxruntime cpu, {args.resolution}, ratio 0.25, max_context {args.max_context}, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="pool-scatter-") as tmp:
        for name in args.models.split(","):
            folder = export_model(name, args.work or Path(tmp), resolution, args.max_context)
            print(f"\n### {'embedded default' if name == 'default' else 'random thinker 512 x 12'}")
            in_place(folder, args.repeats)
            cost(folder, args.max_context, args.repeats)
            memory(folder, args.max_context)
    print(f"\nload at the end: {os.getloadavg()[0]:.2f} (2 cores shared with other engineers)")


if __name__ == "__main__":
    main()
