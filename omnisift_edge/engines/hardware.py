"""What each target can do: memory bandwidth, math rates per precision, memory, and where each figure
comes from; the efficiency a kind of work reaches; and a probe that measures this CPU once.

The roofline (roofline.py) needs two numbers per target: bytes per second from memory and
operations per second from the math units. The preset figures are NVIDIA's published board
specifications, dense (no 2:4 sparsity: NVIDIA's headline "TOPS" for Orin are sparse and count the
DLAs; the GPU's dense rate is half its sparse rate). Where a sheet gives only the sparse INT8 rate,
the dense FP16 tensor rate is half the dense INT8 rate (Ampere/Ada tensor cores: 2 INT8 ops per
FP16 op). `cpu` has no published figures: `probe_cpu` measures numpy's float32 matrix product and a
large array copy once and keeps the result in the user cache (`OMNISIFT_CPU_PROBE` overrides the file).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from omnisift_edge.errors import UsageError


@dataclass(frozen=True)
class Hardware:
    """A target's peak figures (dense). Rates in 1e12 operations/s, bandwidth in 1e9 bytes/s."""

    bandwidth_gbs: float          # DRAM/HBM bandwidth (Jetson: LPDDR5 shared with the CPU)
    fp16_tflops: float            # dense FP16 tensor-core rate (FP32 accumulate)
    int8_tops: float              # dense INT8 tensor-core rate
    fp32_tflops: float            # FP32 on the CUDA cores (no TF32: the builds pass --noTF32)
    memory_gb: float
    source: str
    kind: str = "gpu"             # gpu | cpu: selects the efficiency factors

    def math_rate(self, precision: str) -> float:
        """Operations/s of the matrix products in `precision` (the activations' type: weight-only
        int8/int4 dequantize into fp16 products, so they run at the fp16 rate)."""
        tflops = {"fp16": self.fp16_tflops, "bf16": self.fp16_tflops, "int8": self.int8_tops,
                  "fp32": self.fp32_tflops}[precision]
        return tflops * 1e12

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_gbs * 1e9


_ORIN_SHEET = "NVIDIA Jetson Orin module data sheets / Jetson Orin technical brief (GPU cores, tensor cores, clock, LPDDR5)"
FIGURES: dict[str, Hardware] = {
    # GPU sparse INT8 TOPS from the sheets: nano 40, nx 60, agx-64 170 -> dense = half; fp16 = half of dense int8
    "orin-nano": Hardware(68.0, 10.0, 20.0, 1.28, 8, f"{_ORIN_SHEET}: Orin Nano 8GB, 1024 cores/32 TC @625 MHz, "
                          "40 sparse INT8 TOPS, 68 GB/s (JetPack 6.2 'super' mode raises clock and bandwidth: not used)"),
    "orin-nx": Hardware(102.4, 15.0, 30.0, 1.88, 16, f"{_ORIN_SHEET}: Orin NX 16GB, 1024 cores/32 TC @918 MHz, "
                        "GPU 60 sparse INT8 TOPS (100 with the DLAs), 102.4 GB/s"),
    "orin-agx": Hardware(204.8, 42.5, 85.0, 5.3, 64, f"{_ORIN_SHEET}: AGX Orin 64GB, 2048 cores/64 TC @1.3 GHz, "
                         "GPU 170 sparse INT8 TOPS (275 with the DLAs), 5.3 FP32 TFLOPS, 204.8 GB/s"),
    "orin-agx-32": Hardware(204.8, 26.7, 53.3, 3.3, 32, f"{_ORIN_SHEET}: AGX Orin 32GB, 1792 cores/56 TC @930 MHz, "
                            "GPU 108 sparse INT8 TOPS (200 with the DLAs), 204.8 GB/s"),
    "a100": Hardware(2039.0, 312.0, 624.0, 19.5, 80, "NVIDIA A100 data sheet (80GB SXM): 2,039 GB/s, FP16 tensor 312 "
                     "TFLOPS, INT8 624 TOPS, FP32 19.5 TFLOPS (dense)"),
    "l4": Hardware(300.0, 121.0, 242.5, 30.3, 24, "NVIDIA L4 data sheet: 300 GB/s, FP16 tensor 242 / INT8 485 with "
                   "sparsity (half dense), FP32 30.3 TFLOPS"),
    "h100": Hardware(3350.0, 989.0, 1979.0, 67.0, 80, "NVIDIA H100 data sheet (SXM 80GB): 3.35 TB/s, FP16 tensor 1,979 "
                     "/ INT8 3,958 with sparsity (half dense), FP32 67 TFLOPS"),
    # the rtx preset's nominal card (8 GB, the smallest common): GeForce RTX 4060
    "rtx": Hardware(272.0, 30.3, 121.0, 15.1, 8, "NVIDIA Ada Lovelace architecture whitepaper (per-SM tensor rates, "
                    "GeForce FP16 with FP32 accumulate at half the FP16-accumulate rate) scaled to the RTX 4060: "
                    "24 SMs @2.46 GHz, 272 GB/s, 15.1 FP32 TFLOPS; nominal, as the preset's 8 GB is"),
}


@dataclass(frozen=True)
class Efficiency:
    value: float
    source: str


# The share of the peak a kind of work reaches, per kind of target. Stated, each with where it comes from.
EFFICIENCY: dict[tuple[str, str], Efficiency] = {
    ("gpu", "stream"): Efficiency(0.80, "reading weights and KV cache once per call (decode, small calls): the "
                                  "usual share of peak DRAM bandwidth a streaming kernel reaches on LPDDR5/HBM "
                                  "(STREAM-type copies: 75-90%); NVIDIA's published Orin decode rates sit at 77% "
                                  "(AGX) and 90% (NX) of the bound (docs/benchmarks.md)"),
    ("gpu", "math"): Efficiency(0.50, "tensor-core matrix products of a few hundred rows (prefill, encoders) in "
                                "TensorRT: well below the 70-80% cuBLAS reaches on large square products, since the "
                                "rows are few and layers add norms, rotary and softmax; NVIDIA's published "
                                "Qwen2.5-VL-7B prefill on AGX Orin implies 44% (docs/benchmarks.md)"),
    ("cpu", "stream"): Efficiency(0.80, "the probe's copy measures what a large streaming read-write reaches; ONNX "
                                  "Runtime's matrix-vector products reach about as much (assumption)"),
    ("cpu", "math"): Efficiency(0.60, "ONNX Runtime's MLAS products of 50-560 rows against numpy's large square "
                                "product (the probe): 53-108 GFLOP/s measured on this CPU's 512x12 decoder "
                                "(docs/benchmarks.md, 2026-12-03) against the probe's ~150"),
}


def efficiency(hardware: Hardware, kind: str) -> Efficiency:
    return EFFICIENCY[(hardware.kind, kind)]


def _probe_path() -> Path:
    if os.environ.get("OMNISIFT_CPU_PROBE"):
        return Path(os.environ["OMNISIFT_CPU_PROBE"])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omnisift-edge"
    return root / f"cpu-probe-{platform.node() or 'host'}.json"


def measure_cpu(*, size: int = 1024, copy_mb: int = 256, repeats: int = 5, statistic: str = "min") -> dict:
    """numpy float32 matmul rate (GFLOP/s) and array-copy bandwidth (GB/s, read + write) over `repeats`
    runs: the best (`min` time: what the machine can do) or the `median` (what it does under its load now)."""
    import statistics
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size), np.float32), rng.standard_normal((size, size), np.float32)
    a @ b                                                           # warm-up (threads, pages)
    pick = min if statistic == "min" else statistics.median
    best = pick([_seconds(lambda: a @ b) for _ in range(repeats)])
    src = np.ones(copy_mb * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copy = pick([_seconds(lambda: np.copyto(dst, src)) for _ in range(repeats)])
    return {"gflops": 2 * size**3 / best / 1e9, "bandwidth_gbs": 2 * src.nbytes / copy / 1e9,
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def probe_cpu(*, refresh: bool = False) -> Hardware:
    """This CPU's figures, measured once (a second) and kept in the user cache."""
    from omnisift_edge.atomic import atomic_path

    path = _probe_path()
    probe = None
    if path.is_file() and not refresh:
        try:
            probe = json.loads(path.read_text())
            float(probe["gflops"]), float(probe["bandwidth_gbs"])
        except (ValueError, KeyError, TypeError):
            probe = None
    if probe is None:
        probe = measure_cpu()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(probe, indent=2) + "\n")
        except OSError:
            pass                                                    # a read-only home: measure again next time
    return cpu_hardware(probe)


def cpu_hardware(probe: dict) -> Hardware:
    """ONNX Runtime's CPU provider runs fp16 and weight-only int8/int4 graphs in fp32 (Casts and
    dequantized copies of the weights folded at load): every precision runs at the fp32 rate."""
    rate = float(probe["gflops"]) / 1e3
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = 0.0
    return Hardware(float(probe["bandwidth_gbs"]), rate, rate, rate, round(memory, 1),
                    f"measured on this machine {probe.get('date', '')} ({probe.get('cpus')} CPUs): numpy float32 "
                    f"matmul {float(probe['gflops']):.0f} GFLOP/s, copy {float(probe['bandwidth_gbs']):.1f} GB/s",
                    kind="cpu")


def hardware_for(name: str) -> Hardware:
    """The figures of target `name` (a preset, or `cpu`: probed); a target with none is a one-line error."""
    if name == "cpu":
        return probe_cpu()
    if name not in FIGURES:
        raise UsageError(f"no speed figures for --target {name!r}; choose one of {', '.join(speed_targets())}")
    return FIGURES[name]


def speed_targets() -> tuple[str, ...]:
    return (*FIGURES, "cpu")


def figures_table() -> str:
    """The targets' figures as a Markdown table, with their sources (docs/engines.md)."""
    lines = ["| target | bandwidth GB/s | fp16 TFLOPS | int8 TOPS | fp32 TFLOPS | memory GB | source |",
             "|---|---|---|---|---|---|---|"]
    for name, h in FIGURES.items():
        lines.append(f"| {name} | {h.bandwidth_gbs:g} | {h.fp16_tflops:g} | {h.int8_tops:g} | {h.fp32_tflops:g} | "
                     f"{h.memory_gb:g} | {h.source} |")
    return "\n".join(lines)


def record(hardware: Hardware) -> dict:
    return asdict(hardware)
