"""ONNX Runtime sessions over an export's graphs, with their execution providers named explicitly.

Lives in the artifact layer because every stage opens the export's graphs the same way: export
validates them, engines records the reference outputs TensorRT is checked against, and the runtime
streams through them.

Threads: a stream runs four sessions one after another (vision, audio, compressor, decoder). With
ONNX Runtime's defaults each session owns an intra-op pool whose threads spin after every run, so
the next session's threads compete for the cores with the last one's spinning threads (measured in
docs/benchmarks.md, "ONNX Runtime threads"). `THREAD_POLICIES` names the ways out; `quiet` (each
session its own pool, no spinning) is the default because it measured fastest here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from omnisift_edge.errors import UsageError, require

# ONNX Runtime fuses a weight-only int4/int8 DequantizeLinear + MatMul into MatMulNBits; at its default
# accuracy level (4) that kernel quantizes the activations to int8 as well. Level 0 keeps them float,
# so the graph computes what it says (x @ W'), as TensorRT and the export's PyTorch check do
# (docs/quantization.md has the speed and drift of both).
QDQ_MATMULNBITS_ACCURACY_LEVEL = "0"

# quiet:   each session its own intra-op pool, threads block instead of spinning after a run (default)
# spin:    ONNX Runtime's default: per-session pools that spin (fastest for one session alone)
# shared:  one process-wide pool (ORT's global thread pools; the Python API sizes them but cannot turn
#          their spinning off). ONNX Runtime refuses per-session pools once they exist, so after the
#          first `shared` session every later session of the process uses them too.
# decoder-spin: quiet, except the decoder's pool spins (back-to-back decode steps of one session)
THREAD_POLICIES = ("quiet", "spin", "shared", "decoder-spin")
DEFAULT_THREAD_POLICY = "quiet"


def check_thread_policy(policy: str) -> str:
    if policy not in THREAD_POLICIES:
        raise UsageError(f"--ort-threads must be one of {', '.join(THREAD_POLICIES)} (got {policy!r})")
    return policy


def _use_global_pool(ort) -> None:
    """Create ONNX Runtime's process-wide pools (all cores, once); later calls keep the first pools."""
    if not getattr(_use_global_pool, "done", False):
        ort.capi._pybind_state.set_global_thread_pool_sizes(0, 1)   # 0: one thread per physical core
        _use_global_pool.done = True


_LOW_MEMORY: list[bool] = []


@contextlib.contextmanager
def low_memory_sessions():
    """Within the block, every session `ort_session` opens keeps no float32 copy of fp16 weights (the export's
    checks, issue 21). By default ONNX Runtime's CPU provider (no fp16 MatMul on x86) constant-folds a
    Cast to float32 of every fp16 weight and prepacks the result: ~2-3.5x the graph's weights in anonymous
    memory at load. Here: basic optimizations only (no folded casts), no prepacking, no CPU arena and
    priority-based node order, so each weight is cast right before its MatMul and freed after it; external
    data stays memory-mapped (clean file pages). Measured in docs/benchmarks.md ("Real-size export cost");
    slower per call, which the checks' few calls do not notice. Numerics: the same graph, fewer fusions."""
    _LOW_MEMORY.append(True)
    try:
        yield
    finally:
        _LOW_MEMORY.pop()


def low_memory_options(ort, options, optimize=None) -> None:
    """Set `low_memory_sessions`' settings on `options` (`optimize`: a graph optimization level at most basic)."""
    options.graph_optimization_level = optimize if optimize is not None else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_cpu_mem_arena = False
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED


def session_options(ort, threads: str = DEFAULT_THREAD_POLICY, *, spins: bool = False):
    """SessionOptions with this package's settings; `spins` marks the session decode runs back to back on."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if _LOW_MEMORY:
        low_memory_options(ort, options)
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", QDQ_MATMULNBITS_ACCURACY_LEVEL)
    check_thread_policy(threads)
    if threads == "shared" or getattr(_use_global_pool, "done", False):
        _use_global_pool(ort)
        options.use_per_session_threads = False
    elif threads == "quiet" or (threads == "decoder-spin" and not spins):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def ort_session(path: Path, providers=("CPUExecutionProvider",), *, threads: str = DEFAULT_THREAD_POLICY,
                spins: bool = False):
    """An ONNX Runtime session with its providers named explicitly (the CPU one by default).

    threads: one of THREAD_POLICIES (how this session's CPU threads share the cores with the others);
    spins: this is the session whose back-to-back runs gain from spinning (the decoder), for `decoder-spin`.
    """
    ort = require("onnxruntime", extra="export")
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise UsageError(f"ONNX Runtime here has no {', '.join(missing)} (it has "
                         f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA, "
                         "or use --device cpu")
    options = session_options(ort, threads, spins=spins)
    return ort.InferenceSession(str(path), options, providers=list(providers))
