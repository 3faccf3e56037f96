"""What a stream pool loads and runs (`build --max-streams N` > 1): the memory plan's pool terms.

A build with N > 1 writes two sets of chunk engines: the one-chunk encoders and compressor, which a
session opens (a lone runtime session; the C++ app, cpp/src/trt_backend.cpp), and their batched forms
(profile `batch`, 1 .. N chunks), which a TensorRT stream pool (runtime/pool_trt.py) loads INSTEAD of
the one-chunk ones (a chunk alone is a batch of one). So a pool's device memory is

    batched encoders + batched compressor + decoder        (the one-chunk engines stay on disk)
    + N KV slots                                           (engines/memory.py kv_bytes)
    + the largest call of any profile the pool uses: a stream's own prefill (memory.activation_bytes),
      a decode of N rows, N chunks through a batched encoder or compressor, or a batched chunk prefill
      of N x K_max rows on a full cache (profiles `prefill_batch` / `in_place_prefill`; K_max the
      largest compressor's kept tokens, engines/profiles.py).

An export without the batched graphs (`--no-batch-graphs`) has no batched engines: its pool loads the
one-chunk ones, which then count in their place. With one stream nothing here adds anything.
"""

from __future__ import annotations

from dataclasses import replace

ONE_CHUNK = ("vision_encoder", "audio_encoder", "compressor")   # parts with a batched form `{part}_batch`
STREAMS_CAP = 1 << 20   # the stream count search stops here (printed "1048576+")
GB = 2**30


def loaded_by(weights: dict[str, int]) -> dict[str, str]:
    """graph -> which consumer loads its engine: "pool" (a batched form), "sessions" (a one-chunk engine
    whose batched form the build also holds), or "both" (the decoder; a one-chunk engine with no batched form)."""
    return {g: "pool" if g.endswith("_batch") else
            "sessions" if g in ONE_CHUNK and f"{g}_batch" in weights else "both" for g in weights}


def pool_weights(weights: dict[str, int]) -> dict[str, int]:
    """The weights a pool loads: each batched chunk engine in place of its one-chunk engine."""
    who = loaded_by(weights)
    return {g: b for g, b in weights.items() if who[g] != "sessions"}


def session_weights(weights: dict[str, int]) -> dict[str, int]:
    """The weights one session loads (the one-chunk engines and the decoder)."""
    who = loaded_by(weights)
    return {g: b for g, b in weights.items() if who[g] != "pool"}


def planned_weights(weights: dict[str, int], streams: int) -> dict[str, int]:
    """What the planned consumer loads: a pool's engines for `streams` > 1, else one session's."""
    return pool_weights(weights) if streams > 1 else session_weights(weights)


def batch_activation_bytes(cfg, streams: int) -> int:
    """The largest activations of a batched encoder or compressor call of `streams` chunks (0 for one stream)."""
    from omnisift_edge.engines.memory import activation_bytes

    one = activation_bytes(cfg, 1)                         # per chunk; the decoder's entry is not used
    return 0 if streams == 1 else streams * max(one[g] for g in ONE_CHUNK)


def decode_activation_bytes(cfg, cache_tokens: int, streams: int) -> int:
    """The decoder's activations in one decode call of `streams` rows (one new token each) on a full cache."""
    from omnisift_edge.engines.memory import activation_bytes

    return streams * activation_bytes(replace(cfg, prefill=1, prefill_chunks=1), cache_tokens)["decoder"]


def prefill_batch_activation_bytes(cfg, cache_tokens: int, streams: int) -> int:
    """The decoder's activations in one batched chunk prefill (`prefill_batch` / `in_place_prefill`): `streams`
    rows of one chunk's kept tokens each (cfg.chunk_tokens: K_max) on a full cache; 0 for one stream."""
    from omnisift_edge.engines.memory import activation_bytes

    if streams == 1:
        return 0
    rows = min(cfg.chunk_tokens, cache_tokens)
    return streams * activation_bytes(replace(cfg, prefill=rows, prefill_chunks=1), cache_tokens)["decoder"]


def pool_activations(cfg, cache_tokens: int, streams: int) -> dict[str, int]:
    """The activations of the calls only a pool of `streams` makes, by the plan's names ({} for one stream)."""
    if streams == 1:
        return {}
    return {"decoder (decode x streams)": decode_activation_bytes(cfg, cache_tokens, streams),
            "decoder (chunk prefill x streams)": prefill_batch_activation_bytes(cfg, cache_tokens, streams),
            "encoders (chunks x streams)": batch_activation_bytes(cfg, streams)}


def pool_call_bytes(cfg, cache_tokens: int, streams: int) -> int:
    """The largest of a pool's own calls (a one-row decode for one stream: below its prefill)."""
    calls = pool_activations(cfg, cache_tokens, streams)
    return max([decode_activation_bytes(cfg, cache_tokens, streams), *calls.values()])


def largest_streams(cfg, weights: dict[str, int], host: int, jetson: bool, workspace_gb: float,
                    usable_gb: float) -> int:
    """The most pool streams (up to STREAMS_CAP) whose engines (the pool's: `pool_weights`), slots and largest
    call fit `usable_gb` at cfg's cache. With one-stream `weights` the one-chunk engines stand in for the
    batched ones a pool build adds (the same tensors)."""
    from omnisift_edge.engines.memory import activation_bytes, kv_bytes

    cache = cfg.window or cfg.max_context
    acts = max(activation_bytes(cfg, cache).values())
    fixed = sum(pool_weights(weights).values()) + (host if jetson else 0) + workspace_gb * GB

    def fits(n: int) -> bool:
        calls = max(acts, pool_call_bytes(cfg, cache, n))
        return (fixed + kv_bytes(cfg, cache, n) + calls) / GB <= usable_gb

    lo, hi = 0, STREAMS_CAP
    while lo < hi:   # the need grows with the streams: bisect
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo
