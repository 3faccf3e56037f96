"""Host memory that `export` needs, predicted from a model's config (printed by `plan`, checked by `export`).

Measured, not derived: benchmarks/export_cost.py exports random weights at the real 7B widths with 3
and 4 layers of every stack (the decoder graph is then over 2 GiB, so it takes the same path as a full
model: external data, mapped by ONNX Runtime) and fits, per thinker byte (the thinker's parameters in
the export dtype), the peak *anonymous* memory (and, from the unconstrained run, the file-backed share).
The export maps the thinker's weights
from files (model/mapped.py: clean pages the kernel can drop and read back) and its checks' ONNX
Runtime sessions keep no float32 copies (artifact/onnx_runtime.py, `low_memory_sessions`), so what must
really be free is the anonymous peak plus a working set: `export_peak_bytes` (what `plan` prints and
`export` checks against the memory available) is the anonymous fit plus WORKING_SET_BYTES, and a 7B-width
export completed in a memory cgroup limited to the goal (1.5x weights + 2 GB; docs/benchmarks.md,
"Real-size export cost"). Where memory is free the RSS grows to about `export_rss_bytes` (page cache
of the mapped weights). The build's memory (TensorRT's parser and builder) is not measured here (no
TensorRT board): it is the memory plan's stated formula (engines/build_memory.py, the `build` column).
"""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.model.shape import ThinkerShape

GB = 2**30
SKIP_ENV = "OMNISIFT_EDGE_SKIP_MEMORY_CHECK"   # "1": export tries even with less memory available than predicted
# measured (docs/benchmarks.md): 7B widths, 3 and 4 layers: thinker weights 3.66 / 4.16 GB, peak anonymous
# 3.91 / 4.34 GB; the 4-layer run (no cgroup) also held 7.07 GB of file-backed pages (1.70x its weights)
ANON_PER_BYTE = (4.34 - 3.91) / (4.16 - 3.66)                      # 0.86 GB anonymous per GB of weights
ANON_FIXED_BYTES = int((3.91 - ANON_PER_BYTE * 3.66) * GB)         # through the 3-layer point
FILE_PER_BYTE = 7.07 / 4.16                                        # mapped checkpoint + graphs' data in the page cache
# measured once (docs/benchmarks.md): the same 7B-width 3-layer export with --weights int4 --calibration rtn peaked
# at 8.64 GB anonymous against fp16's 3.91: the quantize passes hold a decoder graph's float weights and its ints
# (+1.29 GB per GB of weights, assumed to scale with the weights; int8 assumed alike, not measured)
QUANT_EXTRA_PER_BYTE = (8.64 - 3.91) / 3.66
WORKING_SET_BYTES = GB                       # mapped weights and page cache the export touches at once
FLOOR_BYTES = GB // 2                        # the fit is for real widths; tiny models still load Python and torch
MEASURED = "benchmarks/export_cost.py, 7B widths, 3 and 4 layers, fp16, 2026-12-05 (shared 2-core VM)"


def available_bytes() -> int | None:
    """Host memory available to this process now: MemAvailable (/proc/meminfo), capped by the room left
    under its cgroup's memory limit (v1 or v2); None where neither can be read (not Linux)."""
    values = []
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        values.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    room = _cgroup_room()
    if room is not None:
        values.append(room)
    return min(values) if values else None


def _cgroup_room() -> int | None:
    """Limit minus anonymous usage of this process's memory cgroup (page cache is reclaimable), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        v1 = "memory" in controllers.split(",")
        if not (v1 or controllers == ""):
            continue
        folder = Path("/sys/fs/cgroup/memory" if v1 else "/sys/fs/cgroup") / path.lstrip("/")
        try:
            limit = (folder / ("memory.limit_in_bytes" if v1 else "memory.max")).read_text().strip()
            stat = dict(l.split() for l in (folder / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:
            continue
        return int(limit) - int(stat.get("rss" if v1 else "anon", 0))
    return None


def thinker_bytes(shape: ThinkerShape, dtype: str = "fp16") -> int:
    """The thinker's parameter bytes in the export dtype (what `export` loads)."""
    from omnisift_edge.model.shape import param_counts

    counts = param_counts(shape)
    return sum(counts.values()) * (2 if dtype == "fp16" else 4)


def export_anon_bytes(shape: ThinkerShape, dtype: str = "fp16", weights: str | None = None) -> int:
    """Predicted peak anonymous memory of `export` for this model (the fit in the module docstring);
    `weights` int8 | int4: plus the quantize passes' share (QUANT_EXTRA_PER_BYTE)."""
    size = thinker_bytes(shape, dtype)
    extra = QUANT_EXTRA_PER_BYTE * size if weights in ("int8", "int4") else 0
    return max(FLOOR_BYTES, int(ANON_FIXED_BYTES + ANON_PER_BYTE * size + extra))


def export_rss_bytes(shape: ThinkerShape, dtype: str = "fp16", weights: str | None = None) -> int:
    """Predicted peak RSS of `export` where memory is free (the mapped files' pages stay resident; one
    measured point's file-backed share, so a rougher figure than the anonymous fit)."""
    return export_anon_bytes(shape, dtype, weights) + int(FILE_PER_BYTE * thinker_bytes(shape, dtype))


def export_peak_bytes(shape: ThinkerShape, dtype: str = "fp16", weights: str | None = None) -> int:
    """The host memory `export` needs for this model: its anonymous peak plus a working set (module docstring)."""
    return export_anon_bytes(shape, dtype, weights) + WORKING_SET_BYTES


def summary(shape: ThinkerShape, dtype: str = "fp16", weights: str | None = None) -> str:
    size = thinker_bytes(shape, dtype)
    quant = f" --weights {weights}" if weights in ("int8", "int4") else ""
    return (f"host memory: export --dtype {dtype}{quant} needs about {export_peak_bytes(shape, dtype, weights) / GB:.1f} GB "
            f"(peak anonymous {export_anon_bytes(shape, dtype, weights) / GB:.1f} GB + a 1 GB working set; thinker "
            f"weights {size / GB:.1f} GB, mapped from files; RSS up to {export_rss_bytes(shape, dtype, weights) / GB:.1f} "
            "GB where "
            f"memory is free; measured fit, {MEASURED}); the TensorRT build's peak is the plan's `build` column "
            "(a stated formula, not measured; on Jetson it shares the board's memory)")
