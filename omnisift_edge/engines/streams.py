"""How many pool streams a build's target holds (`build --max-streams N`), checked before anything is built.

A stream pool (runtime/pool_trt.py) loads the engines once and keeps one KV slot per stream; its
decode steps go in one engine call of up to N rows, so N is a profile dimension of the decoder
engine (engines/profiles.py). The memory plan (engines/pool_memory.py: the engines the pool loads --
the batched encoders and compressor, not the one-chunk ones -- N slots, and its largest call: an N-row
decode, N chunks through a batched encoder, or a chunk prefill of N x K_max rows) gives the most
streams the target holds at the plan's cache; asking for more is one line naming the fix, before
TensorRT is imported.
"""

from __future__ import annotations

from omnisift_edge.engines.memory import GB, RESERVE_GB, largest_streams


def target_streams(memory, target, workspace_gb: float) -> int:
    """The most pool streams `target` holds under the memory plan `memory` (engines.memory.MemoryPlan)."""
    usable = target.memory_gb - RESERVE_GB["jetson" if target.jetson else "datacenter"]
    return largest_streams(memory.config, memory.weights, memory.host_tables, target.jetson, workspace_gb, usable)


def streams_problem(plan) -> str | None:
    """Why `plan`'s target cannot hold its --max-streams streams (one line naming the fix), or None."""
    n, memory, target = plan.max_streams, plan.memory, plan.target
    if n == 1 or memory is None:      # one stream: the memory plan's own fit; an export without sizes: unplanned
        return None
    most = target_streams(memory, target, plan.workspace_gb)
    if n <= most:
        return None
    fix = f"use --max-streams {most} or less, or" if most >= 1 else "use"
    return (f"--max-streams {n} does not fit {target.name}'s {target.memory_gb:g} GB at a {memory.cache_tokens}-token "
            f"cache: it holds {most} stream{'s' if most != 1 else ''} beside {memory.weights_total / GB:.1f} GB of "
            f"weights (build --plan prints each target's); {fix} a shorter --max-context")
