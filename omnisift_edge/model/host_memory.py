"""Host memory that `export` needs, predicted from a model's config (printed by `plan`).

Measured, not derived: benchmarks/export_cost.py exports random weights at the real 3B widths with
1 and 2 layers of every stack and fits peak RSS = fixed + per_byte * thinker bytes (the thinker's
parameters in the export dtype: what the export loads). The fit's two constants are below, with
the run they came from (docs/benchmarks.md, "Real-size export cost"). The export holds the
PyTorch model, traces each graph form, validates each in ONNX Runtime (which on the CPU keeps fp32
copies of fp16 weights) and shares the weights at the end, so its peak is several times the weights.
The build's memory (TensorRT's parser and builder) is not measured here (no TensorRT board): it is
the memory plan's stated formula (engines/build_memory.py, the `build` column), not a measured fit.
"""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.model.shape import ThinkerShape

GB = 2**30
SKIP_ENV = "OMNISIFT_EDGE_SKIP_MEMORY_CHECK"   # "1": export tries even with less memory available than predicted
EXPORT_PER_BYTE = 1.128 / 0.217             # measured: +1.128 GB peak per +0.217 GB of weights (one 3B layer each)
EXPORT_FIXED_BYTES = int((6.39 - EXPORT_PER_BYTE * 1.46) * GB)   # through the 1-layer point (1.46 GB, 6.39 GB)
FLOOR_BYTES = GB // 2                        # the fit is for real widths; tiny models still load Python and torch
MEASURED = "benchmarks/export_cost.py, 3B widths, 1 and 2 layers, fp16, 2026-12-05 (shared 2-core VM)"


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


def export_peak_bytes(shape: ThinkerShape, dtype: str = "fp16") -> int:
    """Predicted peak host memory of `export` for this model (fit in the module docstring)."""
    return max(FLOOR_BYTES, int(EXPORT_FIXED_BYTES + EXPORT_PER_BYTE * thinker_bytes(shape, dtype)))


def summary(shape: ThinkerShape, dtype: str = "fp16") -> str:
    weights = thinker_bytes(shape, dtype)
    return (f"host memory: export --dtype {dtype} needs about {export_peak_bytes(shape, dtype) / GB:.1f} GB "
            f"(thinker weights {weights / GB:.1f} GB; measured fit, {MEASURED}); the TensorRT build's peak "
            "is the plan's `build` column (a stated formula, not measured; on Jetson it shares the board's memory)")
