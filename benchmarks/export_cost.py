"""Real-size export cost: peak host memory and time of `export` at the real 3B / 7B widths (issue 21).

Nothing real-size can be downloaded, so a model folder with *random* weights is written at the real
widths of tests/model/configs/qwen2_5_omni_{3b,7b}.json (hidden size, heads, intermediate size,
vocab, tower widths) but only --layers decoder / vision / audio layers each. `export` runs in a
child process (the CLI, as a user runs it; ratio 1, 112x84, so no selector and small towers
inputs) with OMNISIFT_EDGE_TRACE_MEMORY set: each step's exact peak RSS and sampled peak anonymous /
file-backed RSS are printed (export/memory_trace.py). A straight line through the runs (every layer
adds the same weights and graph nodes) predicts the full depth. Use layer counts whose decoder graph
is over 2 GiB (7B: 3 and more), the path a full model takes; below it torch and Optimum hold the
graph in memory as one protobuf (docs/benchmarks.md).

--limit-goal / --limit-gb run the child in a cgroup v1 memory group under this process's own, with a
hard limit (root): the kernel must reclaim the mapped weights' pages before it OOM-kills the export.
The checkpoint's page cache is dropped before each run so its reads are charged to the export.

    python -m benchmarks.export_cost --size 7b --layers 3 --limit-goal
    python -m benchmarks.export_cost --size 7b --layers 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "model" / "configs"
FULL_LAYERS = {"3b": 36, "7b": 28}


def thinker_config(size: str, layers: int) -> dict:
    """The real thinker config with `layers` decoder, vision and audio layers."""
    config = json.loads((CONFIGS / f"qwen2_5_omni_{size}.json").read_text())["thinker_config"]
    config["text_config"]["num_hidden_layers"] = layers
    config["vision_config"]["depth"] = layers
    config["vision_config"]["fullatt_block_indexes"] = [layers - 1]
    config["audio_config"]["encoder_layers"] = layers
    return config


def write_folder(folder: Path, config: dict, seed: int = 0) -> int:
    """A thinker-only model folder with random fp16 weights (std 0.02, norms 1); its weight bytes."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers.modeling_utils import no_init_weights

    from omnisift_edge.model.tokenizer import write_tiny_tokenizer

    transformers.logging.set_verbosity_error()
    cfg = transformers.Qwen2_5OmniThinkerConfig(**{k: v for k, v in config.items() if k != "model_type"})
    with no_init_weights(), torch.device("meta"):
        thinker = transformers.Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    generator = torch.Generator().manual_seed(seed)
    state, total = {}, 0
    for name, param in thinker.named_parameters():
        if "norm" in name and param.dim() == 1:
            tensor = torch.ones(param.shape, dtype=torch.float16)
        else:
            tensor = (torch.randn(param.shape, generator=generator) * 0.02).to(torch.float16)
        state[name] = tensor
        total += tensor.numel() * 2
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tiny_tokenizer(folder)
    return total


CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def own_memory_cgroup() -> Path:
    """This process's cgroup v1 memory group (/proc/self/cgroup's `memory` line)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_V1 / path.lstrip("/")
    return CGROUP_V1


class MemoryCgroup:
    """A cgroup v1 memory group with a hard limit (root only): the child runs inside it, so the kernel
    reclaims its clean file pages (mapped weights, page cache) before it OOM-kills it at `limit` bytes;
    `peak` is the group's memory.max_usage_in_bytes (anonymous + page cache charged to it)."""

    def __init__(self, limit: int):
        self.path = own_memory_cgroup() / f"omnisift_export_cost_{os.getpid()}"   # nested: the parent's limits hold
        if not (CGROUP_V1 / "memory.limit_in_bytes").exists():
            raise SystemExit("--limit-gb needs cgroup v1's memory controller at /sys/fs/cgroup/memory (Linux, as root)")
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(int(limit)))
        if (self.path / "memory.memsw.limit_in_bytes").exists():    # no swapping out of the limit either
            (self.path / "memory.memsw.limit_in_bytes").write_text(str(int(limit)))

    def enter(self) -> None:
        """Put the calling process in the group (Popen's preexec_fn: the child, before it execs)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        stat = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return int(stat.get("oom_kill", 0))

    def remove(self) -> None:
        self.path.rmdir()


def run_export(model: Path, out: Path, dtype: str, weights: str, trace: Path | None = None,
               cgroup: MemoryCgroup | None = None) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of `omnisift-edge export` in a child process; `trace`: a file for
    the per-step memory trace (export/memory_trace.py); `cgroup`: run the child inside it."""
    args = [sys.executable, "-m", "omnisift_edge.cli", "export", "--model", str(model), "--dtype", dtype,
            "--weights", weights, "--ratio", "1", "--resolution", "112x84", "--max-context", "1024",
            "--default-chat-template", "-o", str(out)]
    if weights == "int4":
        args += ["--calibration", "rtn"]
    env = dict(os.environ, OMNISIFT_EDGE_SKIP_MEMORY_CHECK="1",    # it measures what the check predicts
               **({"OMNISIFT_EDGE_TRACE_MEMORY": str(trace)} if trace else {}))
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=cgroup.enter if cgroup else None)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        killed = f" (killed by the cgroup's OOM killer: {cgroup.oom_kills()})" if cgroup and cgroup.oom_kills() else ""
        raise ExportFailed(f"export failed, status {status}{killed}:\n{output[-3000:]}")
    # the trace resets VmHWM at each step (so does ru_maxrss with it): then the peak is the steps' largest
    return seconds, max([usage.ru_maxrss * 1024] + ([trace_peaks(trace)["VmHWM"]] if trace else []))


class ExportFailed(RuntimeError):
    pass


def print_trace(trace: Path) -> None:
    """The export's steps: seconds, peak RSS, peak anonymous and file-backed RSS (GB)."""
    gb = 2**30
    print(f"  {'step':<72} {'s':>6} {'peak':>6} {'anon':>6} {'file':>6}   (GB: exact peak RSS, sampled anon/file)")
    for line in trace.read_text().splitlines():
        r = json.loads(line)
        print(f"  {r['step'][:72]:<72} {r['seconds']:>6.1f} {r['VmHWM'] / gb:>6.2f} {r['RssAnon'] / gb:>6.2f} "
              f"{r['RssFile'] / gb:>6.2f}", flush=True)


def trace_peaks(trace: Path) -> dict[str, int]:
    """The export's peaks over all its steps (bytes): RSS (exact), anonymous and file-backed RSS (sampled)."""
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    return {key: max(r[key] for r in records) for key in ("VmHWM", "RssAnon", "RssFile")}


def fit(xs, ys) -> tuple[float, float]:
    """(a, b) of y = a + b x through the points (least squares; exact through two)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def drop_page_cache(file: Path) -> None:
    """Flush `file` and drop its cached pages: written by this process, they would be charged to this
    process's cgroup, not the export's, and the export would read its weights for free."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def limits_for(args, weight_bytes: int) -> list[float | None]:
    """The cgroup limits (bytes) to run one model under: none, --limit-gb, and/or the goal for its weights."""
    gb = 2**30
    limits = [g * gb for g in args.limit_gb or []]
    if args.limit_goal:
        limits.append(1.5 * weight_bytes + 2 * gb)     # the goal: 1.5x the weights + 2 GB
    return limits or [None]


def measure(args, layers: int, tmp: Path) -> list[tuple]:
    """One model folder at `layers`, exported under each limit: (layers, weights, seconds, peak RSS, limit,
    cgroup peak, ok) rows, with each run's step table printed."""
    gb = 2**30
    weight_bytes = write_folder(tmp / "model", thinker_config(args.size, layers))
    drop_page_cache(tmp / "model" / "model.safetensors")
    rows = []
    for limit in limits_for(args, weight_bytes):
        trace, out = tmp / "trace.jsonl", tmp / "out"
        trace.unlink(missing_ok=True)
        cgroup = MemoryCgroup(limit) if limit else None
        drop_page_cache(tmp / "model" / "model.safetensors")   # every run reads its weights from disk
        try:
            seconds, peak = run_export(tmp / "model", out, "fp16", args.weights, trace, cgroup)
            ok = True
        except ExportFailed as exc:
            seconds, peak, ok = float("nan"), 0, False
            print(str(exc)[-1500:], flush=True)
        finally:
            charged = cgroup.peak() if cgroup else 0
            if cgroup:
                cgroup.remove()
        if trace.exists():
            print_trace(trace)
        where = f" under a {limit / gb:.2f} GB cgroup limit (cgroup peak {charged / gb:.2f} GB)" if limit else ""
        anon = trace_peaks(trace)["RssAnon"] if trace.exists() else 0
        print(f"{args.size} {args.weights} layers {layers}: weights {weight_bytes / gb:.2f} GB, "
              f"{'export' if ok else 'FAILED after'} {seconds:.0f} s, peak RSS {peak / gb:.2f} GB "
              f"({peak / weight_bytes:.2f}x weights), peak anonymous {anon / gb:.2f} GB{where}", flush=True)
        rows.append((layers, weight_bytes, seconds, peak, limit, charged, ok, anon))
        shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(FULL_LAYERS), default="3b")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--weights", choices=["fp16", "int4"], default="fp16")
    parser.add_argument("--limit-gb", type=float, nargs="+", default=None,
                        help="also run each export in a memory cgroup with this hard limit (GB; root, cgroup v1)")
    parser.add_argument("--limit-goal", action="store_true",
                        help="also run each export in a memory cgroup limited to 1.5x its weights + 2 GB")
    args = parser.parse_args()
    gb = 2**30
    rows = []
    for layers in args.layers:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            rows += [r for r in measure(args, layers, Path(tmp)) if r[6]][:1]   # its first completed run
    if len(rows) < 2:
        return
    full = FULL_LAYERS[args.size]
    a_w, b_w = fit([r[0] for r in rows], [r[1] for r in rows])
    a_t, b_t = fit([r[0] for r in rows], [r[2] for r in rows])
    a_m, b_m = fit([r[0] for r in rows], [r[3] for r in rows])
    a_a, b_a = fit([r[0] for r in rows], [r[7] for r in rows])
    weights, seconds, peak, anon = a_w + b_w * full, a_t + b_t * full, a_m + b_m * full, a_a + b_a * full
    print(f"per layer: weights {b_w / gb:.3f} GB, time {b_t:.1f} s, peak RSS {b_m / gb:.3f} GB, peak anonymous "
          f"{b_a / gb:.3f} GB; predicted at {full} layers: weights {weights / gb:.1f} GB, export {seconds / 60:.0f} "
          f"min, peak RSS {peak / gb:.1f} GB, peak anonymous {anon / gb:.1f} GB; goal 1.5x weights + 2 GB = "
          f"{(1.5 * weights + 2 * gb) / gb:.1f} GB", flush=True)


if __name__ == "__main__":
    main()
