"""Profiling stage: export + ratios -> per-stage latency, RTF, TTFT, decode tokens/s and memory.

Entry: `run(ProfileConfig) -> ProfileReport` (= `profile.profile`): JSON, Markdown and a PNG plot.
"""

from __future__ import annotations


def run(cfg, *, bar: bool = True):
    """Profile `cfg` (a `profile.ProfileConfig`); see omnisift_edge.profiling.profile.profile."""
    from omnisift_edge.profiling.profile import profile

    return profile(cfg, bar=bar)
