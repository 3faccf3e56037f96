"""The profiling stage: `profile(ProfileConfig) -> ProfileReport`, one run over several ratios.

For each ratio a generated clip streams through an `OmniSession` (same backend, same machine, one
process: ratios are compared side by side), measuring per chunk the host preprocessing (pixel
patches, log-mel), vision, audio, compressor and prefill latency (median and p90 after warm-up;
they add up to the chunk time, the rest is reported as `unaccounted_ms`), the real-time factor
(chunk time / 2 s), every chunk's time across the stream (the growth curve), time to first token
after the question, decode tokens/s, tokens kept, KV-cache bytes, peak host memory and (torch on
CUDA) peak GPU memory, plus the graphs' sizes. Before measuring, `context_check` says in one line
per ratio whether the clip fits the context (or the sliding policy), and refuses one that does not.
Writes JSON (for machines), a Markdown table (for people) and a PNG plot: latency by stage against
ratio, and chunk time across the stream against the 2-second real-time budget.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from omnisift_edge.atomic import atomic_path
from omnisift_edge.errors import UsageError, require
from omnisift_edge.runtime.context import ContextPolicy
from omnisift_edge.runtime.session import SESSION_STAGES as STAGES


@dataclass(frozen=True)
class ProfileConfig:
    folder: Path
    backend: str = "onnxruntime"
    ratios: tuple[float, ...] | None = None     # None: every ratio the export has
    seconds: float = 30.0
    device: str = "cpu"
    warmup_chunks: int = 1
    question: str = "What happens in the video, and what do you hear?"
    max_new_tokens: int = 16
    out: Path | None = None                      # None: FOLDER/profile
    target: str | None = None                    # tensorrt: which built engines
    context_policy: str = "error"                # error | sliding (runtime/context.py)
    window_seconds: float | None = None          # sliding: seconds of media kept
    model: Path | None = None                    # torch: the model folder (default: the manifest's record)
    overwrite: bool = False                      # replace output files a previous profile did not write
    ort_threads: str = "quiet"                   # onnxruntime: how the sessions share the CPU (artifact.onnx_runtime)

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))
        ContextPolicy(self.context_policy, self.window_seconds)       # validates both
        if self.out is not None:
            from omnisift_edge.paths import check_output_dir

            object.__setattr__(self, "out", check_output_dir(self.out))
        if not 2.0 * (self.warmup_chunks + 1) <= self.seconds <= 3600:
            raise UsageError(f"--seconds must cover the warm-up plus one measured chunk "
                             f"({2.0 * (self.warmup_chunks + 1):g} s) and at most 3600 (got {self.seconds:g})")
        if self.ratios is not None and not all(0 < r <= 1 for r in self.ratios):
            raise UsageError(f"ratios must be in (0, 1] (got {self.ratios})")
        if self.max_new_tokens < 2:
            raise UsageError("--max-new-tokens must be at least 2 to measure decode speed")


@dataclass
class RatioProfile:
    ratio: float
    achieved: float
    chunks: int
    stage_ms: dict                 # stage -> {"median": ms, "p90": ms}
    chunk_ms: dict                 # whole chunk -> {"median", "p90"}
    real_time_factor: float        # median chunk time / 2 s (< 1: keeps up with a live feed)
    ttft_ms: float
    decode_tokens_per_s: float
    tokens_kept: int
    tokens_total: int
    kv_bytes: int
    peak_host_mb: float
    peak_gpu_mb: float | None
    chunk_curve_ms: list = field(default_factory=list)   # every chunk's time, warm-up included (growth curve)
    unaccounted_ms: float = 0.0    # median chunk time not in any stage (bookkeeping, copies between stages)
    evicted_chunks: int = 0        # sliding policy: chunks evicted from the KV cache


@dataclass
class ProfileReport:
    machine: dict
    config: dict
    graph_bytes: dict
    ratios: list = field(default_factory=list)
    files: dict = field(default_factory=dict)


def _stats(values: list[float]) -> dict:
    ms = [v * 1e3 for v in values]
    return {"median": statistics.median(ms), "p90": float(np.percentile(ms, 90))}


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:   # not Linux: the process peak is all there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _machine(backend: str, device: str) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "backend": backend, "device": device,
            "date": time.strftime("%Y-%m-%d")}
    if device.startswith("cuda"):
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name()
        except Exception:
            info["gpu"] = "unknown"
    return info


def _profile_ratio(cfg: ProfileConfig, ratio: float, bar) -> RatioProfile:
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    session = OmniSession(RuntimeConfig(cfg.folder, backend=cfg.backend, ratio=ratio, device=cfg.device,
                                        target=cfg.target, context_policy=cfg.context_policy,
                                        window_seconds=cfg.window_seconds, model=cfg.model,
                                        ort_threads=cfg.ort_threads))
    gpu = None
    if cfg.backend == "torch" and cfg.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    clip = synthetic_clip(cfg.seconds, *session.resolution, fps=session.spec.fps,
                          sample_rate=session.spec.sample_rate, seed=0)
    per_chunk, samples = session.spec.raw_frames_per_chunk, session.spec.samples_per_chunk
    peak = _rss_mb()
    chunk_seconds, pending = [], 0.0

    def timed(call) -> None:
        # a chunk is pushed once its audio window is complete (40 samples into the next chunk's), so a
        # call's time goes to the chunks it pushed, with the time of calls that pushed none
        nonlocal pending
        start = time.perf_counter()
        reports = call()
        pending += time.perf_counter() - start
        if reports:
            chunk_seconds.extend([pending / len(reports)] * len(reports))
            pending = 0.0

    for j in range(-(-len(clip.frames) // per_chunk)):
        timed(lambda: session.append_chunk(clip.frames[j * per_chunk:(j + 1) * per_chunk],
                                           clip.pcm[j * samples:(j + 1) * samples]))
        peak = max(peak, _rss_mb())
        bar.update(1)
    timed(session.finish)
    measured = session.reports[cfg.warmup_chunks:]
    start = time.perf_counter()
    stamps = []
    for _ in session.ask_ids(cfg.question, max_new_tokens=cfg.max_new_tokens):
        stamps.append(time.perf_counter())
    peak = max(peak, _rss_mb())
    if cfg.backend == "torch" and cfg.device.startswith("cuda"):
        import torch

        gpu = torch.cuda.max_memory_allocated() / 2**20
    dims = session.manifest.dims
    width = 2 if session.manifest.dtype == "fp16" else 4
    kv_bytes = session.stream.kv_length() * dims.num_layers * 2 * dims.kv_heads * dims.head_dim * width
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    chunk_stats = _stats(chunk_seconds[cfg.warmup_chunks:])
    rest = [c - sum(r.seconds.values()) for c, r in zip(chunk_seconds[cfg.warmup_chunks:], measured)]
    return RatioProfile(
        ratio=ratio, achieved=session.plan.achieved, chunks=len(session.reports),
        stage_ms={stage: _stats([r.seconds[stage] for r in measured]) for stage in STAGES},
        chunk_ms=chunk_stats, real_time_factor=chunk_stats["median"] / 1e3 / session.spec.seconds_per_chunk,
        ttft_ms=(stamps[0] - start) * 1e3, decode_tokens_per_s=decode,
        tokens_kept=sum(r.kept_video + r.kept_audio for r in session.reports),
        tokens_total=sum(r.video_tokens + r.audio_tokens for r in session.reports),
        kv_bytes=kv_bytes, peak_host_mb=peak, peak_gpu_mb=gpu, chunk_curve_ms=[c * 1e3 for c in chunk_seconds],
        unaccounted_ms=statistics.median(rest) * 1e3, evicted_chunks=session.stream.window.evicted_chunks)


def markdown(report: ProfileReport) -> str:
    m = report.machine
    lines = [f"Profile of {report.config['folder']} ({m['backend']} on {m.get('gpu', m['processor'])}, "
             f"{m['cpus']} CPUs, {m['date']}), {report.config['seconds']:g} s clip, median (p90) ms per chunk",
             "",
             "| ratio | kept | " + " | ".join(STAGES) + " | chunk | RTF | TTFT ms | decode tok/s | KV MB | host MB |",
             "|---" * (len(STAGES) + 8) + "|"]
    for r in report.ratios:
        cells = [f"{r['stage_ms'][s]['median']:.1f} ({r['stage_ms'][s]['p90']:.1f})" for s in STAGES]
        lines.append(f"| {r['ratio']:g} | {r['tokens_kept']}/{r['tokens_total']} | " + " | ".join(cells) +
                     f" | {r['chunk_ms']['median']:.1f} | {r['real_time_factor']:.3f} | {r['ttft_ms']:.1f} | "
                     f"{r['decode_tokens_per_s']:.1f} | {r['kv_bytes'] / 2**20:.1f} | {r['peak_host_mb']:.0f} |")
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in report.graph_bytes.items())
    return "\n".join(lines + ["", f"graphs: {sizes}", ""])


def _plot(report: ProfileReport, path: Path) -> None:
    matplotlib = require("matplotlib", extra="profile")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r["ratio"] for r in report.ratios]
    x = np.arange(len(ratios))
    fig, (ax, curve) = plt.subplots(1, 2, figsize=(13, 4))
    bottom = np.zeros(len(ratios))
    for stage in STAGES:
        values = np.array([r["stage_ms"][stage]["median"] for r in report.ratios])
        ax.bar(x, values, bottom=bottom, label=stage)
        bottom += values
    ax.set_xticks(x, [f"{r:g}" for r in ratios])
    ax.set_xlabel("ratio of audio+video tokens kept")
    ax.set_ylabel("median ms per 2-second chunk")
    ax.set_title(f"latency by stage ({report.machine['backend']}, {report.machine.get('gpu', 'CPU')})")
    ax.legend()
    budget_ms = 2000.0
    for r in report.ratios:
        ms = r["chunk_curve_ms"]
        curve.plot(np.arange(1, len(ms) + 1) * 2.0, ms, marker=".", label=f"ratio {r['ratio']:g}")
    curve.axhline(budget_ms, color="red", linestyle="--", label="real-time budget (2 s per chunk)")
    curve.set_xlabel("seconds of stream")
    curve.set_ylabel("ms per 2-second chunk")
    curve.set_title("chunk time across the stream")
    curve.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


OUTPUTS = ("profile.json", "profile.md", "profile.png")


def is_our_profile(folder: Path) -> bool:
    """`folder/profile.json` was written by `profile` (a JSON object with its keys)."""
    try:
        report = json.loads((folder / OUTPUTS[0]).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"machine", "config", "ratios", "graph_bytes"} <= report.keys()


def check_outputs(out: Path, overwrite: bool) -> None:
    """Refuse to overwrite profile.json/.md/.png in `out` that a previous `profile` did not write, unless
    `overwrite` (a user's own profile.md in the folder they named is not ours to replace)."""
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite and not is_our_profile(out):
        raise UsageError(f"{out} already holds {', '.join(existing)} that `profile` did not write; pass --overwrite "
                         "to replace them, or choose another -o")


def _write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def context_check(cfg: ProfileConfig, manifest: dict, ratios) -> list[str]:
    """One line per ratio: does the clip (prompt, chunks, question, answer) fit the context, or the
    sliding policy? A UsageError naming the fix when it does not (instead of failing minutes later)."""
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.model.tokenizer import load_tokenizer
    from omnisift_edge.artifact.manifest import as_manifest
    from omnisift_edge.runtime.exported import spec_from_layout

    manifest = as_manifest(manifest)
    spec = spec_from_layout(manifest.layout)
    tokenizer = load_tokenizer(cfg.folder / manifest.tokenizer.folder)
    pieces = build_prompt(tokenizer, cfg.question, spec=spec)
    chunks = -(-int(round(cfg.seconds * spec.fps)) // spec.raw_frames_per_chunk)
    limit = manifest.max_context
    positions = (manifest.rope and manifest.rope.max_position_embeddings) or 32768
    text = len(pieces.prefix_ids) + 4 + len(pieces.suffix_ids) + cfg.max_new_tokens
    last_position = text + chunks * spec.time_ids_per_chunk
    lines = []
    for ratio in ratios:
        per_chunk = manifest.ratio_plan(ratio).kept_total
        need = text + chunks * per_chunk
        if cfg.context_policy == "sliding":
            lines.append(f"ratio {ratio:g}: {cfg.seconds:g} s needs {need} tokens; sliding window in max_context "
                         f"{limit} ({per_chunk} per chunk), re-based before position {positions}")
            continue
        if need > limit or last_position >= positions:
            fit = max(0, min((limit - text) // per_chunk, (positions - 1 - text) // spec.time_ids_per_chunk))
            raise UsageError(f"a {cfg.seconds:g} s clip at ratio {ratio:g} needs {need} tokens of context and "
                             f"positions up to {last_position}; this export holds {limit} tokens and {positions} "
                             "positions: use "
                             f"--seconds {fit * spec.seconds_per_chunk:g} or less, or --context-policy sliding")
        lines.append(f"ratio {ratio:g}: {cfg.seconds:g} s needs {need} of {limit} tokens of context: fits")
    return lines


def profile(cfg: ProfileConfig, *, bar: bool = True) -> ProfileReport:
    """Stream a generated clip through the export at each ratio and measure every stage (docs/runtime.md)."""
    from omnisift_edge.artifact.manifest import PROFILE_DIR, load_manifest

    from omnisift_edge.paths import check_output_dir

    tqdm = require("tqdm").tqdm
    require("matplotlib", extra="profile")           # the plot is written last: fail before measuring
    manifest = load_manifest(cfg.folder)
    check_output_dir(cfg.out or cfg.folder / PROFILE_DIR)
    check_outputs(cfg.out or cfg.folder / PROFILE_DIR, cfg.overwrite)     # before minutes of measuring
    ratios = cfg.ratios or manifest.ratio_values
    fits = context_check(cfg, manifest, ratios)
    chunks = -(-int(round(cfg.seconds * 2)) // 4)
    report = ProfileReport(machine=_machine(cfg.backend, cfg.device),
                           config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                           graph_bytes={g.file: manifest.files[g.file].bytes for g in manifest.graphs.values()})
    report.config["context_check"] = fits
    for line in fits if bar else ():       # before the bar starts: a log or pipe gets them on lines of their own
        print(line, file=sys.stderr, flush=True)
    with tqdm(total=chunks * len(ratios), desc="profiling", unit="chunk", disable=not bar) as chunk_bar:
        for ratio in ratios:
            chunk_bar.set_postfix(ratio=f"{ratio:g}")
            report.ratios.append(asdict(_profile_ratio(cfg, ratio, chunk_bar)))
    out = cfg.out or cfg.folder / PROFILE_DIR
    out.mkdir(parents=True, exist_ok=True)
    report.files = {"json": str(out / "profile.json"), "markdown": str(out / "profile.md"),
                    "plot": str(out / "profile.png")}
    _write(out / "profile.json", lambda p: p.write_text(json.dumps(asdict(report), indent=2)))
    _write(out / "profile.md", lambda p: p.write_text(markdown(report)))
    _write(out / "profile.png", lambda p: _plot(report, p))
    return report
