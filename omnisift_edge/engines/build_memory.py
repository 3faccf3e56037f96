"""Memory a TensorRT build needs at its peak, and the refusal where a Jetson cannot hold it.

On a Jetson (Orin) the CPU and GPU share one memory, so everything the build holds counts against
the board: the parser's ONNX model, the builder's weights, its tactic workspace and the engine it
serializes. The peak of one engine's build (engines are built one after another) is stated as

    build peak = parser + builder + workspace + engine
      parser    = the graph's ONNX bytes (protobuf + the initializers the parser holds)
      builder   = the weights at the engine's precision (the builder's own copy)
      workspace = the builder's workspace pool limit (the largest tactic's scratch memory)
      engine    = the weights at the engine's precision (the serialized engine, IHostMemory)

Sources (docs/engines.md, "Build memory"): NVIDIA's "How TensorRT Works / Memory / The Build
Phase" says there are typically at least two copies of the weights in host memory while building
(the original network's and the engine's), that the workspace pool limit caps the tactics'
scratch memory, and that a serialized engine holds nearly all the weights. That the serialized
engine is a third copy alive at once (Polygraphy serializes before it frees the parser and
builder) is our assumption, as is leaving out temporary weights from fusions (none in our
decoders); it matches users' reports of 3-4x the parameter bytes for NVIDIA's edge builder.

Only unified-memory targets are refused: on a discrete GPU the weights are in host RAM and the
workspace on the GPU, and this module does not know the build machine's RAM.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from omnisift_edge.errors import UsageError

GB = 2**30
ORINS = ("orin-nano", "orin-nx", "orin-agx-32", "orin-agx")   # same GPU (sm_87) and JetPack, ascending memory


@dataclass(frozen=True)
class BuildPeak:
    """The largest engine build's memory, term by term (bytes)."""

    graph: str
    parser: int
    builder: int
    workspace: int
    engine: int

    @property
    def total(self) -> int:
        return self.parser + self.builder + self.workspace + self.engine

    def terms(self) -> str:
        return (f"parser {self.parser / GB:.1f} + builder {self.builder / GB:.1f} + workspace "
                f"{self.workspace / GB:.1f} + engine {self.engine / GB:.1f} GB")


def build_peak(graphs: dict[str, tuple[int, int]], workspace_gb: float) -> BuildPeak:
    """graph -> (ONNX bytes, weight bytes at the engine's precision): the largest build's peak."""
    workspace = int(workspace_gb * GB)
    peaks = [BuildPeak(g, onnx, weights, workspace, weights) for g, (onnx, weights) in graphs.items()]
    return max(peaks, key=lambda p: p.total)


def usable_gb(memory_gb: float) -> float:
    """A Jetson's memory less the OS + CUDA reserve (the run plan's, engines/memory.py)."""
    from omnisift_edge.engines.memory import RESERVE_GB

    return memory_gb - RESERVE_GB["jetson"]


def build_memory_problem(peak: BuildPeak, target, machine_gb: float | None = None, *,
                         int4_peak: BuildPeak | None = None) -> str | None:
    """Why `target`'s build cannot fit the board it runs on, naming what would; None when it fits or
    the target has a discrete GPU. `machine_gb`: the build machine's memory when it is a detected
    Orin (a larger Orin may build a smaller one's engines), else the target's own."""
    if not target.jetson:
        return None
    memory = machine_gb or target.memory_gb
    if peak.total / GB <= usable_gb(memory):
        return None
    fixes = []
    if int4_peak is not None and int4_peak.total / GB <= usable_gb(memory):
        fixes.append(f"export again with --weights int4 (its build needs about {int4_peak.total / GB:.1f} GB)")
    larger = larger_orin(peak, memory)
    if larger is not None:
        fixes.append(f"build on a {larger.description}, same JetPack (`build --target {target.name}` there needs "
                     f"about {peak.total / GB:.1f} of its {usable_gb(larger.memory_gb):.1f} GB usable), then copy the "
                     f"export folder with engines/{target.name}/ back (an engine built for compute capability 8.7 "
                     "with the same TensorRT runs on any Orin)")
    fix = " or ".join(fixes) or "no Orin holds this build: export with --weights int4 or a smaller model"
    return (f"building the {peak.graph} engine for {target.name} needs about {peak.total / GB:.1f} GB "
            f"({peak.terms()}; docs/engines.md) but this board has {usable_gb(memory):.1f} GB usable of its "
            f"{memory:g} GB shared by CPU and GPU; {fix}")


def larger_orin(peak: BuildPeak, memory_gb: float):
    """The smallest Orin with more memory than `memory_gb` whose usable memory holds `peak`, or None."""
    from omnisift_edge.engines.memory import _fit_target
    from omnisift_edge.engines.presets import get_target

    for name in ORINS:
        board = _fit_target(name, get_target)
        if board.memory_gb > memory_gb and peak.total / GB <= usable_gb(board.memory_gb):
            return board
    return None


def plan_peak(plan) -> BuildPeak:
    """A BuildPlan's peak: each engine's ONNX file bytes and its weights at the engine's precision."""
    return build_peak({e.graph: (e.onnx_bytes or e.weight_bytes, e.weight_bytes) for e in plan.engines},
                      plan.workspace_gb)


def int4_alternative(memory_plan, workspace_gb: float) -> BuildPeak | None:
    """The build peak the same model would have with int4 decoder weights (analytic), or None when it
    already is int4 (or int4 does not apply: a block size that does not divide a width)."""
    from omnisift_edge.engines.memory import weight_bytes

    if memory_plan is None or memory_plan.config.weights == "int4":
        return None
    try:
        cfg = replace(memory_plan.config, weights="int4")
    except UsageError:
        return None
    weights, _ = weight_bytes(cfg)
    return build_peak({g: (b, b) for g, b in weights.items()}, workspace_gb)


def check_build_memory(plan, device=None) -> None:
    """Refuse (UsageError, one line) a build that cannot fit the unified memory it runs in: before
    TensorRT is imported or any graph parsed. `device`: the build machine's GPU when detected."""
    target = plan.target
    machine = device.memory_gb if device is not None and device.compute_capability == (8, 7) else None
    problem = build_memory_problem(plan_peak(plan), target, machine,
                                   int4_peak=int4_alternative(plan.memory, plan.workspace_gb))
    if problem:
        raise UsageError(problem)
