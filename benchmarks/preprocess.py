"""Host preprocessing of one 2-s chunk, part by part, against the reference operations it must equal (issue 23).

Every camera pays it per chunk (frames -> normalized 14x14 patches in spatial-merge order; 2 s of PCM
-> 128-bin log-mel), in a stream pool and with separate sessions alike. Measured side by side in one
run, the two ways alternating repetition by repetition so the machine's load falls on both alike:

- **vision** (per resolution): the reference is transformers' operations as written (rescale in
  float64, normalize in float32 with a length-3 broadcast, reorder the floats: `reference_patches`,
  the package's path before issue 23, kept here only), against `model.preprocess` (bytes reordered
  first, one table lookup per pixel); transformers' own `Qwen2VLImageProcessor` is timed too where
  installed. All three are asserted equal bit for bit before anything is printed.
- **audio**: one steady-state chunk of `StreamingLogMel` (a stream's second chunk). The reference
  product is numpy's plain `filters.T @ power.T` (transformers' `np.dot`), which numpy's OpenBLAS
  splits over 2 threads; its worker then spins after the call. Printed: the chunk's time, the CPU the
  process's other threads burned meanwhile and in the 5 ms after, and the time of the chunk's patches
  computed right after the log-mel (what the spin costs the next stage, as in `append_chunk`).
- **in place**: `OmniSession.append_chunk` on the embedded default exported at --session-resolution
  (ONNX Runtime CPU), two sessions fed the same chunks alternately, one on the package's functions and
  one with the reference patches and product swapped in (module attributes, this script only): chunk
  wall time, the session's own `preprocess` timer and its share, against the same chunk's
  preprocessing alone (a tight loop); a gap between in place and alone is what to look for.

    python benchmarks/preprocess.py [--resolutions 448x448,224x224] [--repeats 30] [--chunks 8]
                                    [--session-resolution 448x448] [--work DIR] [--no-session]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]      # this checkout's omnisift_edge; pool.py's export

import omnisift_edge.model.preprocess as P                 # noqa: E402
from omnisift_edge.model.spec import OmniSpec             # noqa: E402

SPEC = OmniSpec()
SETTLE = 0.15      # s idle after a chunk: OpenBLAS's worker spins ~100 ms of CPU after one product (measured here)


# ----------------------------------------------------------------------- the reference operations

def ref_rescale(frames):
    return (frames.astype(np.float64) * (1 / 255)).astype(np.float32)                   # [T, H, W, 3]


def ref_normalize(x):
    return (x - np.asarray(P.CLIP_MEAN, np.float32)) / np.asarray(P.CLIP_STD, np.float32)   # [T, H, W, 3]


def ref_reorder(x, spec=SPEC):
    x = x.transpose(0, 3, 1, 2)                                                           # [T, 3, H, W]
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.spatial_merge_size
    if x.shape[0] % tp:
        x = np.concatenate([x, np.repeat(x[-1:], tp - x.shape[0] % tp, axis=0)])
    t, c, h, w = x.shape
    gt, gh, gw = t // tp, h // p, w // p
    x = x.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), (gt, gh, gw)


def reference_patches(frames, spec=SPEC):
    """transformers' rescale + normalize + patch order, as the package computed it before issue 23."""
    return ref_reorder(ref_normalize(ref_rescale(frames)), spec)


def plain_projection(filters, power):
    return filters.T @ power.T                                                            # [n_mels, n]


def new_reorder(frames, spec=SPEC):
    t, h, w, c = frames.shape
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.spatial_merge_size
    gt, gh, gw = t // tp, h // p, w // p
    x = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c).transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return np.ascontiguousarray(x).reshape(gt * gh * gw, c, tp * p * p)                  # [N, 3, 392] uint8


def new_lookup(x):
    table, out = P.pixel_table(), np.empty(x.shape, np.float32)
    for r in range(0, x.shape[0], P._TAKE_ROWS):
        for ch in range(x.shape[1]):
            np.take(table[ch], x[r:r + P._TAKE_ROWS, ch], out=out[r:r + P._TAKE_ROWS, ch], mode="wrap")
    return out


def transformers_patches(frames):
    import transformers

    proc = transformers.Qwen2VLImageProcessor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return proc(images=None, videos=[frames], do_resize=False, return_tensors="np")["pixel_values_videos"]


# ---------------------------------------------------------------------------------------- helpers

def other_threads_ms() -> float:
    """CPU ms used so far by this process's threads other than the caller (Linux /proc; clock ticks)."""
    me, hz, total = str(threading.get_native_id()), os.sysconf("SC_CLK_TCK"), 0
    for t in os.listdir("/proc/self/task"):
        if t != me:
            try:
                total += sum(map(int, Path(f"/proc/self/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
            except OSError:
                pass
    return total * 1e3 / hz


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - start) * 1e3


def alternate(cases: dict, repeats: int) -> dict:
    """Median ms of each case, the cases run in turn repetition by repetition (one warm-up each)."""
    for fn in cases.values():
        fn()
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            times[k].append(timed(fn)[1])
    return {k: float(np.median(v)) for k, v in times.items()}


def row(name, ref, new) -> str:
    return f"| {name} | {ref:.2f} | {new:.2f} | x{ref / new:.2f} |" if new else f"| {name} | {ref:.2f} | - | - |"


# ------------------------------------------------------------------------------------------ parts

def vision_parts(res, repeats: int, with_transformers: bool) -> None:
    from omnisift_edge.model.synthetic import synthetic_clip

    frames = synthetic_clip(2.0, *res, seed=1).frames                                   # [4, H, W, 3] uint8
    new, _ = P.video_patches(frames, SPEC, size=res)
    assert np.array_equal(new, reference_patches(frames)[0]), "the patches differ from the reference"
    if with_transformers:
        assert np.array_equal(new, transformers_patches(frames)), "the patches differ from transformers'"
    rescaled = ref_rescale(frames)
    normalized = ref_normalize(rescaled)
    ordered = new_reorder(frames)
    cases = {"ref_rescale": lambda: ref_rescale(frames), "ref_normalize": lambda: ref_normalize(rescaled),
             "ref_reorder": lambda: ref_reorder(normalized), "ref_total": lambda: reference_patches(frames),
             "new_reorder": lambda: new_reorder(frames), "new_lookup": lambda: new_lookup(ordered),
             "new_total": lambda: P.video_patches(frames, SPEC, size=res)}
    if with_transformers:
        cases["transformers"] = lambda: transformers_patches(frames)
    ms = alternate(cases, repeats)
    print(f"\n### vision, one chunk of 4 frames at {res[0]}x{res[1]} -> {new.shape} float32 (median ms of {repeats})\n")
    print("| stage | reference | new | ratio |\n|---|---|---|---|")
    print(row("rescale (uint8 -> f64 -> f32) / -", ms["ref_rescale"], None))
    print(row("normalize (f32, broadcast over 3) / -", ms["ref_normalize"], None))
    print(row("reorder floats / reorder bytes", ms["ref_reorder"], ms["new_reorder"]))
    print(f"| - / table lookup (rescale + normalize) | - | {ms['new_lookup']:.2f} | - |")
    print(row("**patches, whole**", ms["ref_total"], ms["new_total"]))
    if with_transformers:
        print(row("transformers Qwen2VLImageProcessor (no resize) / new", ms["transformers"], ms["new_total"]))


def _mel_chunk(pcm):
    """A stream's second chunk: the first one pushed (untimed), then the second's samples."""
    stream = P.StreamingLogMel(SPEC)
    stream.push(pcm[:SPEC.samples_per_chunk + 40])
    return stream


def audio_parts(res, repeats: int) -> None:
    """The log-mel chunk and the patches right after it, then SETTLE s idle: the other threads' CPU over it all."""
    from omnisift_edge.model.synthetic import synthetic_clip

    clip = synthetic_clip(6.0, *res, seed=2)
    second = clip.pcm[SPEC.samples_per_chunk + 40:2 * SPEC.samples_per_chunk + 40]
    frames = clip.frames[4:8]
    outs, stats = {}, {"ref": [], "new": []}
    for _ in range(repeats + 1):
        for mode in ("ref", "new"):
            stream = _mel_chunk(clip.pcm)
            P.mel_projection = plain_projection if mode == "ref" else NEW_PROJECTION   # the patches: the package's
            try:
                before = other_threads_ms()
                chunks, mel_ms = timed(stream.push, second)
                _, next_ms = timed(lambda: P.video_patches(frames, SPEC, size=res))
                time.sleep(SETTLE)
                stats[mode].append((mel_ms, next_ms, other_threads_ms() - before))
            finally:
                P.mel_projection = NEW_PROJECTION
            outs[mode] = chunks[0].features
    assert np.array_equal(outs["ref"], outs["new"]), "the log-mel differs from the plain product's"
    med = {m: np.median(np.array(v[1:]), axis=0) for m, v in stats.items()}
    spin = {m: float(np.mean(np.array(v[1:])[:, 2])) for m, v in stats.items()}     # ticks: a mean, not a median
    print(f"\n### audio, a stream's second 2-s chunk -> [128, 200] log-mel, then that chunk's patches at "
          f"{res[0]}x{res[1]}, then {SETTLE * 1e3:.0f} ms idle (median of {repeats})\n")
    print("| | plain product (numpy's BLAS threads) | one BLAS thread | ratio |\n|---|---|---|---|")
    print(row("log-mel chunk ms", med["ref"][0], med["new"][0]))
    print(row("patches right after it, ms", med["ref"][1], med["new"][1]))
    print(f"| other threads' CPU ms per chunk (mean, 10-ms ticks) | {spin['ref']:.0f} | {spin['new']:.0f} | - |")


def ref_segment(buf, lo, hi):
    """The index gather the stream used for every chunk before (now chunks past the first take a view)."""
    idx = np.abs(np.arange(lo, hi))
    inside = np.ones(idx.shape, bool)
    seg = np.zeros(idx.shape, np.float64)
    seg[inside] = buf[idx[inside]]
    return seg


def mel_parts(repeats: int) -> None:
    """The log-mel chunk's steps, each in a tight loop (the package's path; the product on one thread)."""
    from omnisift_edge.model.synthetic import synthetic_clip

    pcm = synthetic_clip(6.0, 28, 28, seed=4).pcm.astype(np.float64)                    # [96000]
    lo = SPEC.samples_per_chunk - SPEC.n_fft // 2
    hi = lo + SPEC.hop_length * 199 + SPEC.n_fft
    seg = pcm[lo:hi]                                                                      # [32240]
    frames = np.lib.stride_tricks.sliding_window_view(seg, SPEC.n_fft)[::SPEC.hop_length][:200]
    windowed = frames * P._hann(SPEC.n_fft)
    stft = np.fft.rfft(windowed, axis=-1)
    power = stft.real ** 2 + stft.imag ** 2                                               # [200, 201]
    filters = P.mel_filters(SPEC.n_fft, SPEC.n_mels, SPEC.sample_rate)
    mel = P.mel_projection(filters, power)
    log_spec = np.log10(np.maximum(mel, P.POWER_CLAMP))
    ms = alternate({"segment: index gather (before)": lambda: ref_segment(pcm, lo, hi),
                    "segment: buffer view (now)": lambda: pcm[lo:hi],
                    "frames x Hann window": lambda: frames * P._hann(SPEC.n_fft),
                    "rfft (float64)": lambda: np.fft.rfft(windowed, axis=-1),
                    "power": lambda: stft.real ** 2 + stft.imag ** 2,
                    "mel product, one BLAS thread": lambda: P.mel_projection(filters, power),
                    "clamp + log10": lambda: np.log10(np.maximum(mel, P.POWER_CLAMP)),
                    "floor + scale -> float32": lambda: P.floor_and_scale(log_spec, float(log_spec.max()))}, repeats)
    print(f"\n### log-mel steps of one chunk, each in a tight loop (median ms of {repeats})\n")
    print("| step | ms |\n|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.3f} |")


NEW_PROJECTION = P.mel_projection
NEW_PATCHIFY = P._patchify


# --------------------------------------------------------------------------------------- in place

def use(mode: str) -> None:
    """The package's functions ("new") or the reference patches and product swapped in ("ref")."""
    P._patchify = (lambda frames, spec: reference_patches(frames, spec)) if mode == "ref" else NEW_PATCHIFY
    P.mel_projection = plain_projection if mode == "ref" else NEW_PROJECTION


def preprocess_alone(clip, res, repeats: int) -> dict:
    """One steady-state chunk's preprocessing, each part in its own tight loop (no other work between):
    the log-mel push of 2 s (a stream's second chunk) + 4 frames' patches, median ms, summed."""
    pcm, frames, n = clip.pcm, clip.frames[4:8], SPEC.samples_per_chunk
    mel, patches = {"ref": [], "new": []}, {"ref": [], "new": []}
    for _ in range(repeats + 1):
        for mode in mel:
            use(mode)
            try:
                patches[mode].append(timed(lambda: P.video_patches(frames, SPEC, size=res))[1])
            finally:
                use("new")
    for _ in range(repeats + 1):
        for mode in mel:
            stream = P.StreamingLogMel(SPEC)
            stream.push(pcm[:n])
            use(mode)
            try:
                mel[mode].append(timed(stream.push, pcm[n:2 * n])[1])
            finally:
                use("new")
    return {m: float(np.median(mel[m][1:]) + np.median(patches[m][1:])) for m in mel}


def session_in_place(res, chunks: int, work: Path, max_context: int, repeats: int) -> None:
    from pool import export_model

    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    folder = export_model("default", work, res, max_context)
    sessions = {m: OmniSession(RuntimeConfig(folder, max_context=max_context)) for m in ("ref", "new")}
    clip = synthetic_clip(2.0 * (chunks + 2), *res, seed=3)
    n, walls, cpu = SPEC.samples_per_chunk, {m: [] for m in sessions}, {m: [] for m in sessions}
    for j in range(chunks + 2):
        for m in (("ref", "new") if j % 2 else ("new", "ref")):
            use(m)
            try:
                start = time.process_time()                  # every thread of the process
                _, ms = timed(sessions[m].append_chunk, clip.frames[4 * j:4 * j + 4], clip.pcm[j * n:(j + 1) * n])
                time.sleep(SETTLE)                           # cameras send a chunk every 2 s: idle after it
                cpu[m].append((time.process_time() - start) * 1e3)
            finally:
                use("new")
            walls[m].append(ms)
    alone = preprocess_alone(clip, res, repeats)
    med = {}
    for m, s in sessions.items():
        reports = s.reports[1:]                          # the first report (second append) warms up
        stages = {k: float(np.median([r.seconds.get(k, 0.0) for r in reports])) * 1e3 for k in reports[0].seconds}
        med[m] = dict(wall=float(np.median(walls[m][2:])), cpu=float(np.mean(cpu[m][2:])), stages=stages)
    print(f"\n### in place: `OmniSession.append_chunk`, embedded default at {res[0]}x{res[1]}, ONNX Runtime CPU "
          f"(median of {len(walls['new']) - 2} chunks, the two sessions alternating)\n")
    print("| | reference functions | package | ratio |\n|---|---|---|---|")
    print(row("append_chunk wall ms", med["ref"]["wall"], med["new"]["wall"]))
    print(row(f"process CPU ms per chunk (all threads, + {SETTLE * 1e3:.0f} ms idle; mean)", med["ref"]["cpu"],
              med["new"]["cpu"]))
    print(row("preprocess in place (session timer) ms", med["ref"]["stages"]["preprocess"],
              med["new"]["stages"]["preprocess"]))
    share = {m: 100 * med[m]["stages"]["preprocess"] / med[m]["wall"] for m in med}
    print(f"| preprocess share of the chunk | {share['ref']:.0f}% | {share['new']:.0f}% | - |")
    print(row("preprocess alone (each part in a tight loop) ms", alone["ref"], alone["new"]))
    gap = {m: med[m]["stages"]["preprocess"] - alone[m] for m in med}
    print(f"| in place - alone ms | {gap['ref']:.2f} | {gap['new']:.2f} | - |")
    for k in med["new"]["stages"]:
        if k != "preprocess":
            print(row(f"{k} ms", med["ref"]["stages"][k], med["new"]["stages"][k]))


def parse(value: str) -> tuple[int, int]:
    return P.parse_resolution(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="448x448,224x224")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--chunks", type=int, default=8, help="timed chunks per session (max_context 2048 holds 10)")
    parser.add_argument("--session-resolution", default="448x448")
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the export here")
    parser.add_argument("--no-session", action="store_true", help="parts only: no export, no session")
    args = parser.parse_args()
    try:
        import transformers

        transformers.logging.set_verbosity_error()     # its note that videos belong to the video processor
        with_transformers = True
    except ImportError:
        with_transformers = False
    print(f"# preprocess: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, numpy {np.__version__}")
    resolutions = [parse(r) for r in args.resolutions.split(",")]
    for res in resolutions:
        vision_parts(res, args.repeats, with_transformers)
    mel_parts(args.repeats)
    audio_parts(resolutions[0], args.repeats)
    if not args.no_session:
        with tempfile.TemporaryDirectory() as tmp:
            session_in_place(parse(args.session_resolution), args.chunks, args.work or Path(tmp), args.max_context,
                             args.repeats)
    print(f"\n# load average at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
