"""Profiling stage: pipeline + ratios -> per-stage latency, TTFT, tokens/s and memory.

Not built yet (see the runtime and profiling issue); the package exists so the stage layout is fixed.
"""
