"""TensorRT optimization profiles, derived from the manifest's graph entries.

Nothing here spells a tensor name: each input's shape comes from the manifest's `graphs.<g>.inputs`
(ints for fixed axes, the axis name for dynamic ones, as declared in artifact/tensors.py) and only
the dynamic axes get ranges. Graphs without dynamic axes (vision_encoder, audio_encoder,
compressor_r*) get one fixed profile. The decoder gets two:

- prefill (profile 0): sequence_length 1 .. S_max with S_max = max(P x K of every compressor, the
  longest prompt), P = `--prefill-chunks` (chunks a grouped file prefill puts in one call, default 1);
  opt = K of the main ratio. past_sequence_length 0 .. max_context - S_max.
- decode (profile 1): sequence_length 1; past_sequence_length 1 .. max_context - 1.

total_sequence_length = past + sequence at min, opt and max, so each profile covers exactly the
calls whose cache ends within max_context. batch_size is 1 for a prefill (a stream's own chunk or
question); for a decode it is 1 .. N (opt N), N = `--max-streams` (default 1): a stream pool
(runtime/pool_trt.py) runs the decode steps of every answering stream in one call. With N > 1 a third
profile, `prefill_batch`: the chunks of N streams that arrived together in one call, batch 1 .. N, each
row one chunk's kept tokens (sequence_length 1 .. K_max, the largest compressor's K), past 0 ..
max_context - K_max; its activations are N x K_max rows, not N x S_max (a prompt's 512).

The in-place decoder (`decoder_scatter`, declared in the manifest's `kv_cache`) gets one profile,
`in_place`: sequence_length 1 .. S_max (opt K), logits_length 0 .. 1 (none on a chunk prefill),
cache_length fixed at max_context (the cache is static: TensorRT's KVCacheUpdate wants a static
cache axis, see engines/kv_form.py), and the value range of `write_index`, 0 .. max_context - 1: with
the batch fixed at 1 TensorRT makes it a shape tensor (max(write_index) + S sizes the attention's
slice); with a dynamic batch (`--max-streams` > 1) it stays data and the range is not used.
With `--max-streams N` > 1 it gets a second profile, `in_place_decode`: batch 1 .. N (opt N), one new
row and one logits row per batch row, each row with its own write_index (the form takes one per row,
artifact/tensors.py); batch 1 prefills keep profile 0 unchanged, and their activations do not grow.
And a third, `in_place_prefill`: batch 1 .. N, sequence_length 1 .. K_max (one chunk's kept tokens per
row, each row written at its own write_index), logits_length 0 .. 1 (a chunk prefill reads none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.manifest import DECODER_SCATTER, GraphInfo, Manifest, as_manifest  # noqa: F401
from omnisift_edge.artifact.tensors import DYNAMIC_AXES, is_batch_form

DEFAULT_MAX_PROMPT = 512      # longest text prefill (system prompt + question) the decoder profile covers
Range = tuple[int, int, int]  # (min, opt, max)


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


@dataclass(frozen=True)
class Profile:
    """One optimization profile: per input (in graph order) its min/opt/max shapes, and the axis ranges used."""

    name: str                                    # "static", "prefill" or "decode"
    inputs: tuple[tuple[str, ShapeRange], ...]
    axes: tuple[tuple[str, Range], ...] = ()
    dynamic: frozenset[str] = frozenset()        # inputs with a dynamic axis
    values: tuple[tuple[str, Range], ...] = ()   # value ranges of inputs TensorRT may take as shape tensors

    @property
    def shapes(self) -> dict[str, ShapeRange]:
        return dict(self.inputs)

    @property
    def dynamic_inputs(self) -> dict[str, ShapeRange]:
        """Inputs with a dynamic axis: the ones a TensorRT profile must name."""
        return {name: r for name, r in self.inputs if name in self.dynamic}

    def to_dict(self) -> dict:
        return {"name": self.name, "axes": {a: list(r) for a, r in self.axes},
                "inputs": {n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in self.inputs},
                **({"values": {n: list(r) for n, r in self.values}} if self.values else {})}


@dataclass(frozen=True)
class DecoderLimits:
    max_context: int
    max_sequence: int           # S_max of a prefill
    opt_sequence: int           # K of the main ratio
    main_ratio: float
    prefill_chunks: int = 1     # chunks' kept tokens one prefill call takes (grouped prefill of a file)
    max_streams: int = 1        # decode rows one call takes: a stream pool's answering streams (build --max-streams)
    max_kept: int = 0           # K_max: the most kept tokens of one chunk (a batched chunk prefill's rows per stream)


def check_max_streams(value) -> int:
    """`--max-streams` as a whole number >= 1 (an int, or its text from the command line), or a one-line UsageError."""
    text = str(value).strip()
    if isinstance(value, bool) or isinstance(value, float) or not text.isdigit() or int(text) < 1:
        raise UsageError(f"--max-streams must be a whole number of streams, at least 1 (got {value!r}); "
                         "1 builds one stream per engine context, as before")
    return int(text)


def check_prefill_chunks(value) -> int:
    """`--prefill-chunks` as a whole number >= 1, or a one-line UsageError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--prefill-chunks must be a whole number of chunks, at least 1 (got {value!r})")
    return value


def kept_tokens(manifest: Manifest) -> dict[str, int]:
    """K of every one-chunk compressor graph, read from its outputs' `kept_tokens` axis (a batched form's is its one's)."""
    found = {}
    for name, entry in as_manifest(manifest).graphs.items():
        for tensor in entry.outputs if not is_batch_form(name) else ():
            if "kept_tokens" in tensor.axes:
                found[name] = int(tensor.shape[tensor.axes.index("kept_tokens")])
                break
    return found


def main_ratio(manifest: Manifest, ratio: float | None = None) -> tuple[float, str]:
    """(ratio, compressor graph) the decoder's prefill is tuned for: `ratio`, else the export's smallest."""
    manifest = as_manifest(manifest)
    graphs = {float(r.ratio): r.graph for r in manifest.ratios if r.graph in manifest.graphs}
    if not graphs:
        raise UsageError("this export has no compressor graph; export again with --ratios")
    if ratio is None:
        ratio = min(graphs)
    if float(ratio) not in graphs:
        raise UsageError(f"this export has no compressor for ratio {ratio:g} (it has "
                         f"{', '.join(f'{r:g}' for r in sorted(graphs))}); pass one of those")
    return float(ratio), graphs[float(ratio)]


def decoder_limits(manifest: Manifest, *, max_context: int | None = None, ratio: float | None = None,
                   max_prompt: int = DEFAULT_MAX_PROMPT, prefill_chunks: int = 1, max_streams: int = 1) -> DecoderLimits:
    """The decoder's ranges, validated against the manifest (whose max_context the export checked against
    the model's max_position_embeddings); a prefill call takes `prefill_chunks` chunks' kept tokens, a
    decode call up to `max_streams` rows."""
    manifest = as_manifest(manifest)
    exported = manifest.max_context
    ratio, graph = main_ratio(manifest, ratio)
    ks = kept_tokens(manifest)
    if max_prompt < 1:
        raise UsageError(f"the longest prompt must be at least 1 token (got {max_prompt})")
    chunks = check_prefill_chunks(prefill_chunks)
    s_max = max(chunks * max(ks.values()), max_prompt)
    if max_context is None:
        max_context = exported
    if isinstance(max_context, bool) or not isinstance(max_context, int):
        raise UsageError(f"--max-context must be a whole number of tokens (got {max_context!r})")
    if max_context > exported:
        positions = (manifest.rope and manifest.rope.max_position_embeddings) or 32768
        fix = (f"export again with --max-context {max_context}" if max_context <= positions else
               f"the model has {positions} positions, so an export holds at most that: export again with "
               f"--max-context {positions} or less")
        raise UsageError(f"--max-context {max_context} is longer than the export's {exported}; {fix}")
    if chunks > 1 and max_context <= chunks * max(ks.values()):
        most = (max_context - 1) // max(ks.values())
        raise UsageError(f"--prefill-chunks {chunks} needs {chunks * max(ks.values())} rows per call ({max(ks.values())} "
                         f"kept per chunk), more than --max-context {max_context} leaves; use --prefill-chunks {most} "
                         "or less, or a longer --max-context")
    if max_context <= s_max:
        raise UsageError(f"--max-context {max_context} leaves no room after one prefill of {s_max} tokens "
                         f"(the largest kept count or prompt); use at least {s_max + 1}")
    return DecoderLimits(max_context, s_max, ks[graph], ratio, chunks, check_max_streams(max_streams), max(ks.values()))


def axis_ranges(limits: DecoderLimits) -> dict[str, dict[str, Range]]:
    """profile name -> dynamic axis -> (min, opt, max). total = past + sequence at each point."""
    c, s_max, k = limits.max_context, limits.max_sequence, limits.opt_sequence
    pre_past = (0, (c - s_max) // 2, c - s_max)
    pre_seq = (1, k, s_max)
    dec_past = (1, (c - 1) // 2, c - 1)
    dec_seq = (1, 1, 1)
    streams = limits.max_streams
    total = lambda past, seq: tuple(p + s for p, s in zip(past, seq))  # noqa: E731
    ranges = {
        "prefill": {"batch_size": (1, 1, 1), "sequence_length": pre_seq, "past_sequence_length": pre_past,
                    "total_sequence_length": total(pre_past, pre_seq)},
        "decode": {"batch_size": (1, streams, streams), "sequence_length": dec_seq, "past_sequence_length": dec_past,
                   "total_sequence_length": total(dec_past, dec_seq)},
    }
    if streams > 1:                          # the chunks of every stream that arrived together: one call
        kept = limits.max_kept or s_max
        batch_past, batch_seq = (0, (c - kept) // 2, c - kept), (1, min(k, kept), kept)
        ranges["prefill_batch"] = {"batch_size": (1, streams, streams), "sequence_length": batch_seq,
                                   "past_sequence_length": batch_past,
                                   "total_sequence_length": total(batch_past, batch_seq)}
    return ranges


def _graph_dynamic_axes(manifest: Manifest, entry: GraphInfo) -> set[str]:
    declared = set(manifest.dynamic_axes or DYNAMIC_AXES)
    unknown = declared - set(DYNAMIC_AXES)
    if unknown:
        raise UsageError(f"the manifest declares dynamic axes {sorted(unknown)} this omnisift-edge has no profile "
                         "ranges for; build with the omnisift-edge that exported it")
    return {d for t in entry.inputs for d in t.shape if isinstance(d, str) and d in declared}


def _profile(name: str, entry: GraphInfo, ranges: dict[str, Range]) -> Profile:
    inputs, dynamic = [], set()
    for tensor in entry.inputs:
        dims = []
        for d in tensor.shape:
            if isinstance(d, int):
                dims.append((d, d, d))
            elif d in ranges:
                dims.append(ranges[d])
                dynamic.add(tensor.name)
            else:
                raise UsageError(f"input {tensor.name} has an axis {d!r} with no range; the manifest is damaged "
                                 "or from another omnisift-edge version")
        inputs.append((tensor.name, ShapeRange(*(tuple(x[i] for x in dims) for i in range(3)))))
    used = sorted({d for t in entry.inputs for d in t.shape if isinstance(d, str)})
    return Profile(name, tuple(inputs), tuple((a, ranges[a]) for a in used), frozenset(dynamic))


SCATTER = DECODER_SCATTER     # the in-place form's key in the manifest's kv_cache


def graph_entry(manifest: Manifest, graph: str) -> GraphInfo:
    """A graph's manifest entry: from `graphs`, or the in-place decoder's from `kv_cache`."""
    return as_manifest(manifest).form_entry(graph)


def in_place_ranges(limits: DecoderLimits) -> dict[str, Range]:
    """The `in_place` profile's axes: new rows, logits rows, and the static cache (see the module docstring)."""
    c, s_max, k = limits.max_context, limits.max_sequence, limits.opt_sequence
    return {"batch_size": (1, 1, 1), "sequence_length": (1, k, s_max), "logits_length": (0, 1, 1),
            "cache_length": (c, c, c)}


def in_place_profiles(manifest: Manifest, limits: DecoderLimits) -> tuple[Profile, ...]:
    """The profiles of `decoder_scatter`, with the value range of its write_index input: `in_place`, and
    `in_place_decode` (batch 1 .. max_streams, one row each) for a stream pool's batched decode."""
    c, s_max, n = limits.max_context, limits.max_sequence, limits.max_streams
    entry = graph_entry(manifest, SCATTER)
    write_index = as_manifest(manifest).kv_cache[SCATTER].write_index
    profile = _profile("in_place", entry, in_place_ranges(limits))
    profiles = (dataclasses.replace(profile, values=((write_index, (0, (c - s_max) // 2, c - 1)),)),)
    if n == 1:
        return profiles
    if "batch_size" not in next(t.shape for t in entry.inputs if t.name == write_index):
        raise UsageError(f"this export's decoder_scatter takes one write_index per call, not one per stream (exported "
                         f"before stream pools); export again for --max-streams {n}, or build with --max-streams 1")
    ranges = {**in_place_ranges(limits), "batch_size": (1, n, n), "sequence_length": (1, 1, 1), "logits_length": (1, 1, 1)}
    decode = _profile("in_place_decode", entry, ranges)
    kept = limits.max_kept or s_max
    ranges = {**ranges, "sequence_length": (1, min(limits.opt_sequence, kept), kept), "logits_length": (0, 0, 1)}
    prefill = _profile("in_place_prefill", entry, ranges)
    return profiles + tuple(dataclasses.replace(p, values=((write_index, (0, (c - 1) // 2, c - 1)),))
                            for p in (decode, prefill))


def batch_profiles(entry: GraphInfo, max_streams: int) -> tuple[Profile, ...]:
    """The one profile of a batched encoder or compressor (artifact/tensors.py BATCH_FORMS): its dynamic axis,
    `batch_size`, takes 1 .. max_streams chunks (opt max_streams: every stream's chunk arrived together)."""
    dynamic = {d for t in entry.inputs for d in t.shape if isinstance(d, str)}
    if dynamic != {"batch_size"}:
        raise UsageError(f"{entry.key} has dynamic axes {sorted(dynamic)}, not only batch_size; the manifest is "
                         "damaged or from another omnisift-edge version")
    return (_profile("batch", entry, {"batch_size": (1, max_streams, max_streams)}),)


def graph_profiles(manifest: Manifest, graph: str, limits: DecoderLimits | None = None) -> tuple[Profile, ...]:
    """The profiles of one graph: one fixed profile, prefill + decode for a graph with dynamic axes, the
    in-place decoder's, or a batched form's one (batch 1 .. max_streams)."""
    manifest = as_manifest(manifest)
    entry = graph_entry(manifest, graph)
    if graph == SCATTER:
        return in_place_profiles(manifest, limits or decoder_limits(manifest))
    if is_batch_form(graph):
        return batch_profiles(entry, (limits or decoder_limits(manifest)).max_streams)
    if not _graph_dynamic_axes(manifest, entry):
        return (_profile("static", entry, {}),)
    limits = limits or decoder_limits(manifest)
    return tuple(_profile(name, entry, ranges) for name, ranges in axis_ranges(limits).items())


def engine_profiles(manifest: Manifest, *, max_context: int | None = None, ratio: float | None = None,
                    max_prompt: int = DEFAULT_MAX_PROMPT, prefill_chunks: int = 1,
                    max_streams: int = 1) -> dict[str, tuple[Profile, ...]]:
    """graph -> its profiles, for every graph in the manifest (the batched forms with `max_streams` > 1 only)."""
    manifest = as_manifest(manifest)
    limits = decoder_limits(manifest, max_context=max_context, ratio=ratio, max_prompt=max_prompt,
                            prefill_chunks=prefill_chunks, max_streams=max_streams)
    return {graph: graph_profiles(manifest, graph, limits) for graph in manifest.graphs
            if max_streams > 1 or not is_batch_form(graph)}
