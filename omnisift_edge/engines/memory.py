"""Device memory plan: what each part of the pipeline needs on a target, before anything is built.

`plan_memory(MemoryConfig) -> MemoryPlan` from a `ThinkerShape` (a bare config.json, or the sizes an
export recorded) and the run settings. Parts, in bytes:

- weights per graph: vision/audio encoders and compressor at the float dtype; the decoder's linear
  layers at `weights` (int4: K*N/2 + one scale per block; int8: K*N + one scale per output
  channel), its LM head in float unless quantized, biases and norms in float. When planned from an
  export folder, the real ONNX initializers are counted instead (`graph_weight_bytes`).
- text embeddings: the runtime's host table (embed_tokens.safetensors); counted on Jetson only,
  where host and GPU share one memory.
- KV cache at the max context (or at the sliding window): 2 (K, V) x layers x kv_heads x head_dim
  per token, twice over: the decoder graph takes the cache as `past` and returns it as `present`,
  so both buffers are live during a call.
- activations at the profiles' largest shapes: the decoder's prefill of `prefill` tokens (at least
  `prefill_chunks` chunks' kept tokens: a grouped file prefill, `--prefill-chunks`) on a full
  cache (attention scores and probabilities [heads, S, T] in the graph's dtype, repeated K/V, MLP,
  last-position logits), the vision encoder on one chunk (full-attention layers: scores over a
  frame), the audio encoder on one window. Engines run one after another, so the largest counts.
- workspace: the target's builder workspace (the preset's default), and a fixed runtime reserve
  (CUDA context + TensorRT runtime; on Jetson also the OS) -- both stated, both assumptions.

A stream pool (`streams` N > 1, `build --max-streams`; engines/pool_memory.py): the engines the pool
loads (the batched encoders and compressor instead of the one-chunk ones, which sessions and the C++ app
load; the weights table lists both, each with its consumer), N KV slots (in place: one buffer each;
past/present: the slot plus the batch gathered into past and present, three), and the largest call of
any profile it uses: a stream's own prefill, a decode of N rows, N chunks through a batched encoder, a
batched chunk prefill of N x K_max rows. Each target's largest stream count at the planned cache
(`Fit.max_streams`) is solved as the largest context is.

The decoder's activations and the KV cache grow with the context, so the largest max context that
fits is solved from the rest. Checked against ONNX Runtime CPU peak memory (tests, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omnisift_edge.errors import UsageError
from omnisift_edge.model.shape import ThinkerShape, decoder_linear_shapes, param_counts

GB = 2**30
FLOAT_BYTES = {"fp32": 4, "fp16": 2}
RESERVE_GB = {"jetson": 1.5, "datacenter": 1.0}   # OS + CUDA context + TensorRT runtime (assumption, docs/quantization.md)
SELECTOR_PARAMS_PER_D = 2 * 512                    # the selector's two projections D -> 512 dominate its size
FIT_TARGETS = ("orin-nano", "orin-nx", "orin-agx-32", "orin-agx", "l4", "a100", "h100")
BATCH_ENCODERS = ("vision_encoder_batch", "audio_encoder_batch")   # with compressor_batch: a pool's batched chunk graphs


@dataclass(frozen=True)
class MemoryConfig:
    shape: ThinkerShape
    dtype: str = "fp16"                 # float graphs / engines: fp16 | fp32
    weights: str | None = None          # decoder linear layers: fp32 | fp16 | int8 | int4 (None: dtype)
    block_size: int = 32
    lm_head_quantized: bool = False
    max_context: int = 8192
    window: int | None = None           # sliding window: the cache holds this many tokens
    resolution: tuple[int, int] = (448, 448)
    kept_per_chunk: int | None = None   # K of the compressor; None: every token of a chunk (ratio 1)
    prefill: int = 512                  # longest prefill call (prompt or one chunk's K)
    kv_in_place: bool = False           # the in-place decoder (decoder_scatter): one cache buffer, no present copy
    prefill_chunks: int = 1             # chunks one prefill call takes (grouped prefill of a file)
    streams: int = 1                    # a stream pool's streams (build --max-streams): N KV slots, N-row decodes

    def __post_init__(self):
        from omnisift_edge.engines.profiles import check_max_streams, check_prefill_chunks

        check_prefill_chunks(self.prefill_chunks)
        object.__setattr__(self, "streams", check_max_streams(self.streams))
        if self.dtype not in FLOAT_BYTES:
            raise UsageError(f"--dtype must be fp16 or fp32 (got {self.dtype!r})")
        if self.weights is None:
            object.__setattr__(self, "weights", self.dtype)
        if self.weights not in ("fp32", "fp16", "int8", "int4"):
            raise UsageError(f"--weights must be fp32, fp16, int8 or int4 (got {self.weights!r})")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise UsageError(f"--block-size must be a whole number of weight rows >= 1, e.g. 32 (got {self.block_size!r})")
        if self.weights == "int4":
            bad = sorted({k for k, _ in decoder_linear_shapes(self.shape.text) if k % self.block_size})
            if bad:
                raise UsageError(f"int4 block size {self.block_size} does not divide the layer width "
                                 f"{', '.join(map(str, bad))}; pass a --block-size that divides it (e.g. 32)")
        if not 1 <= self.max_context <= self.shape.text.max_position:   # internal plans; the CLI's rule: plan_config
            raise UsageError(f"--max-context must be in 1..{self.shape.text.max_position} (the model's "
                             f"max_position_embeddings); got {self.max_context}")
        if self.window is not None and not 1 <= self.window <= self.max_context:
            raise UsageError(f"--window must be in 1..--max-context ({self.max_context}); got {self.window}")
        h, w = self.resolution
        if h % 28 or w % 28 or h <= 0 or w <= 0:
            raise UsageError(f"--resolution must be multiples of 28 (got {h}x{w}); try 448x448")

    @property
    def chunk_tokens(self) -> int:
        """Tokens of one chunk the decoder receives: the compressor's K, or every token (ratio 1)."""
        if self.kept_per_chunk is not None:
            return self.kept_per_chunk
        h, w = self.resolution
        v = self.shape.vision
        return 2 * (h // v.patch) * (w // v.patch) // v.merge ** 2 + 50    # 2 grids per chunk + 50 audio tokens

    @property
    def prefill_rows(self) -> int:
        """Rows of the largest prefill call: `prefill`, or more when a call takes several chunks."""
        return max(self.prefill, self.prefill_chunks * self.chunk_tokens) if self.prefill_chunks > 1 else self.prefill


@dataclass(frozen=True)
class Fit:
    target: str
    memory_gb: float
    usable_gb: float                   # memory minus the reserve
    need_gb: float
    fits: bool
    max_context: int                   # largest context that fits (0: not even an empty cache)
    decoder_form: str = ""             # the decoder graph this target builds (kv_form.decoder_form; exports only)
    build_gb: float = 0.0              # the largest engine build's peak (engines/build_memory.py)
    build_fits: bool | None = None     # unified memory (Jetson): the build fits usable; None: discrete GPU, not checked
    max_streams: int = 0               # most pool streams that fit at the planned cache (0: not even one)


@dataclass(frozen=True)
class MemoryPlan:
    config: MemoryConfig
    weights: dict[str, int]            # graph -> bytes
    host_tables: int                   # text embeddings (device memory on Jetson only)
    kv_cache: int                      # past + present buffers (one when in place) at the planned cache, every stream
    kv_per_token: int                  # bytes per cached token, every buffer
    activations: dict[str, int]        # graph -> bytes at its largest profile shape
    cache_tokens: int                  # max_context, or the window
    fits: tuple[Fit, ...] = field(default=())
    onnx_weights: dict[str, int] | None = None   # graph -> bytes as the ONNX files store them (None: = weights)

    @property
    def loaded_weights(self) -> dict[str, int]:
        """The engines the planned consumer loads: a pool's (batched chunk engines) for streams > 1, else a session's."""
        from omnisift_edge.engines.pool_memory import planned_weights

        return planned_weights(self.weights, self.config.streams)

    @property
    def weights_total(self) -> int:
        return sum(self.loaded_weights.values())

    def device_bytes(self, jetson: bool, workspace_gb: float) -> int:
        return (self.weights_total + (self.host_tables if jetson else 0) + self.kv_cache
                + max(self.activations.values()) + int(workspace_gb * GB))

    def _loaded_by(self) -> dict[str, str]:
        from omnisift_edge.engines.pool_memory import loaded_by

        return loaded_by(self.weights) if self.config.streams > 1 else {g: "session" for g in self.weights}

    def to_dict(self) -> dict:
        c = self.config
        return {"dtype": c.dtype, "weights_mode": c.weights, "block_size": c.block_size if c.weights == "int4" else None,
                "max_context": c.max_context, "window": c.window, "streams": c.streams, "cache_tokens": self.cache_tokens,
                "resolution": list(c.resolution), "prefill_tokens": c.prefill_rows, "prefill_chunks": c.prefill_chunks,
                "weights_bytes": self.weights, "text_embeddings_bytes": self.host_tables,
                "loaded_weights_bytes": self.weights_total, "weights_loaded_by": self._loaded_by(),
                "kv_cache_bytes": self.kv_cache, "kv_bytes_per_token": self.kv_per_token,
                "activations_bytes": self.activations,
                "fits": [f.__dict__ for f in self.fits], "reserve_gb": RESERVE_GB,
                "build_peak": "parser (ONNX bytes) + builder (weights) + workspace + engine (weights), largest graph"}

    def _weight_lines(self) -> list[str]:
        """The weights table; for a pool build each engine's consumer, and what the pool loads in all."""
        from omnisift_edge.engines.pool_memory import loaded_by, session_weights

        pool = self.config.streams > 1
        who = {"pool": "loaded by the pool", "sessions": "loaded by a session / the C++ app",
               "both": "loaded by the pool and a session"}
        width = max(18, *map(len, self.weights))
        lines = [f"  weights {graph:<{width}} {size / GB:8.2f} GB" + (f"  ({who[w]})" if pool else "")
                 for (graph, size), w in zip(self.weights.items(), loaded_by(self.weights).values())]
        if pool:
            session = sum(session_weights(self.weights).values())
            lines.append(f"  {'weights the pool loads':<{width + 8}} {self.weights_total / GB:8.2f} GB  (the needs below; one session "
                         f"loads {session / GB:.2f} GB)")
        return lines

    def summary(self) -> str:
        c = self.config
        lines = [f"memory plan: {c.weights} decoder weights" + (f" (block {c.block_size})" if c.weights == "int4" else "")
                 + f", {c.dtype} elsewhere, cache {self.cache_tokens} tokens"
                 + (f" (sliding window of max context {c.max_context})" if c.window else "")
                 + (f", a pool of {c.streams} streams" if c.streams > 1 else "")]
        lines += self._weight_lines()
        lines.append(f"  text embeddings (host)     {self.host_tables / GB:8.2f} GB  (device memory on Jetson)")
        kind = "in place" if c.kv_in_place else "past + present"
        kind += f", {c.streams} slots" if c.streams > 1 else ""
        lines.append(f"  KV cache ({kind})".ljust(28) + f"{self.kv_cache / GB:8.2f} GB  ({self.kv_per_token / 1024:.0f} KiB/token)")
        width = max(14, *map(len, self.activations))
        for graph, size in self.activations.items():
            lines.append(f"  activations {graph:<{width}} {size / GB:8.2f} GB"
                         + (f"  (prefill of {c.prefill_rows} rows, {c.prefill_chunks} chunks per call)"
                            if graph == "decoder" and c.prefill_chunks > 1 else ""))
        forms = any(f.decoder_form for f in self.fits)
        lines.append(f"  {'target':<12} {'memory':>7} {'usable':>7} {'needs':>7}  fits  largest max context"
                     f"  streams  {'build':>6}  builds" + ("  decoder form" if forms else ""))
        for f in self.fits:
            builds = "host" if f.build_fits is None else "yes " if f.build_fits else "NO  "
            lines.append(f"  {f.target:<12} {f.memory_gb:6.0f}G {f.usable_gb:6.1f}G {f.need_gb:6.1f}G  "
                         f"{'yes ' if f.fits else 'NO  '}  {f.max_context if f.max_context else 'none':<19}"
                         f"  {f.max_streams if f.max_streams < STREAMS_CAP else f'{STREAMS_CAP}+':>7}"
                         f"  {f.build_gb:5.1f}G  {builds}" + (f"  {f.decoder_form}" if forms else ""))
        lines.append(f"  (needs = weights{' the pool loads' if c.streams > 1 else ''} + KV + largest activations + the target's workspace; usable = memory minus "
                     f"{RESERVE_GB['jetson']:g} GB on Jetson, {RESERVE_GB['datacenter']:g} GB elsewhere; streams = the "
                     f"most pool streams at cache {self.cache_tokens}: build --max-streams)")
        lines.append("  (build = the largest engine's build peak: parser (ONNX bytes) + builder (weights) + workspace + "
                     "engine (weights), docs/engines.md; on Jetson it shares the board's memory and must fit usable; "
                     "host = discrete GPU, host RAM not checked)")
        return "\n".join(lines)


def weight_bytes(cfg: MemoryConfig) -> tuple[dict[str, int], int]:
    """Analytic weights per graph, and the host embedding table."""
    shape, fb = cfg.shape, FLOAT_BYTES[cfg.dtype]
    counts = param_counts(shape)
    t = shape.text
    per_layer = decoder_linear_shapes(t)
    if cfg.weights == "int4":
        linear = t.layers * sum(k * n // 2 + (k // cfg.block_size) * n * fb for k, n in per_layer)
    elif cfg.weights == "int8":
        linear = t.layers * sum(k * n + n * fb for k, n in per_layer)
    else:
        linear = counts["decoder_linear"] * FLOAT_BYTES[cfg.weights]
    head = counts["lm_head"] or counts["embed_tokens"]   # tied: the graph still holds the head's copy
    if cfg.lm_head_quantized and cfg.weights in ("int8", "int4"):
        k, n = t.hidden, t.vocab
        head_bytes = k * n // 2 + (k // cfg.block_size) * n * fb if cfg.weights == "int4" else k * n + n * fb
    else:
        head_bytes = head * fb
    selector = SELECTOR_PARAMS_PER_D * t.hidden
    weights = {"vision_encoder": counts["vision_encoder"] * fb, "audio_encoder": counts["audio_encoder"] * fb,
               "compressor": selector * fb, "decoder": linear + head_bytes + counts["decoder_other"] * fb}
    if cfg.streams > 1:   # a pool's batched encoders and compressor: engines of their own, weights copied in
        weights.update({f"{g}_batch": weights[g] for g in ("vision_encoder", "audio_encoder", "compressor")})
    return weights, counts["embed_tokens"] * fb


def activation_bytes(cfg: MemoryConfig, cache_tokens: int, *, attention_copies: int = 2,
                     mask_bytes: int = 0) -> dict[str, int]:
    """Largest live activations per graph at its profile's largest shape (see the module docstring).

    attention_copies: live [heads, S, T] tensors of the decoder's attention (2 for TensorRT: scores
    and probabilities, unfused worst case); mask_bytes: bytes per [S, T] element of the masks.
    """
    s, b = cfg.shape, FLOAT_BYTES[cfg.dtype]
    t, v, a = s.text, s.vision, s.audio
    seq = min(cfg.prefill_rows, cache_tokens)
    total = cache_tokens                                                             # T = past + S at the largest call
    decoder = (attention_copies * t.heads * seq * total * b + mask_bytes * seq * total   # scores, probs [H, S, T]
               + 2 * t.heads * total * t.head_dim * b                                # K, V repeated to every head
               + 3 * seq * t.intermediate * b + 4 * seq * t.hidden * b               # MLP; hidden, q, residual
               + t.vocab * b)                                                        # logits [1, 1, V]
    h, w = cfg.resolution
    frame = (h // v.patch) * (w // v.patch)                                          # patches per frame (grid)
    chunk_patches = 2 * frame                                                        # 2 temporal grids (4 frames) per chunk
    vision = (2 * v.heads * chunk_patches * frame * b                                # full-attention layers: per frame
              + 3 * chunk_patches * v.intermediate * b + 4 * chunk_patches * v.hidden * b
              + chunk_patches * v.in_channels * v.temporal_patch * v.patch ** 2 * b)
    frames = 100                                                                     # 200 mel frames -> 100 after the stride-2 conv
    audio = 2 * a.heads * frames * frames * b + 3 * frames * a.ffn * b + 4 * frames * a.d_model * b \
        + a.n_mels * 200 * b
    tokens = chunk_patches // s.vision.merge ** 2 + 50
    compressor = 8 * tokens * t.hidden * b
    return {"vision_encoder": vision, "audio_encoder": audio, "compressor": compressor, "decoder": decoder}


def kv_per_token(cfg: MemoryConfig) -> int:
    t = cfg.shape.text
    buffers = 1 if cfg.kv_in_place else 2                 # in place: present aliases past; else past + present
    return buffers * (2 * t.layers * t.kv_heads * t.head_dim * FLOAT_BYTES[cfg.dtype])   # (K + V) x buffers


def kv_bytes(cfg: MemoryConfig, cache_tokens: int, streams: int = 1) -> int:
    """KV bytes of `streams` streams at `cache_tokens`: one stream as `kv_per_token` says; a pool's slots one
    buffer each in place, three past/present (the slot, the gathered past, the present; runtime/pool_trt.py)."""
    if streams == 1:
        return kv_per_token(cfg) * cache_tokens
    one = kv_per_token(cfg) // (1 if cfg.kv_in_place else 2)
    return streams * one * cache_tokens * (1 if cfg.kv_in_place else 3)


def plan_memory(cfg: MemoryConfig, *, targets=FIT_TARGETS, weights: dict[str, int] | None = None,
                onnx_weights: dict[str, int] | None = None) -> MemoryPlan:
    """The plan; `weights` (graph -> bytes) replaces the analytic weights when the graphs exist, and
    `onnx_weights` gives their bytes as stored (the build's parser term; default: `weights`)."""
    from omnisift_edge.engines.build_memory import build_peak
    from omnisift_edge.engines.pool_memory import pool_activations
    from omnisift_edge.engines.presets import get_target

    analytic, host = weight_bytes(cfg)
    weights = dict(weights) if weights is not None else analytic
    cache = cfg.window or cfg.max_context
    per_token = kv_per_token(cfg)
    acts = activation_bytes(cfg, cache)
    if cfg.streams > 1:   # a pool's own calls: N-row decodes, N-chunk encoder calls, N-chunk prefills
        acts.update(pool_activations(cfg, cache, cfg.streams))
    plan = MemoryPlan(cfg, weights, host, kv_bytes(cfg, cache, cfg.streams), per_token, acts, cache,
                      onnx_weights=onnx_weights)
    stored = onnx_weights or weights
    fits = []
    for name in targets:
        target = _fit_target(name, get_target)
        jetson = target.jetson
        usable = target.memory_gb - RESERVE_GB["jetson" if jetson else "datacenter"]
        need = plan.device_bytes(jetson, target.workspace_gb) / GB
        build = build_peak({g: (stored.get(g, b), b) for g, b in weights.items()}, target.workspace_gb).total / GB
        fits.append(Fit(target.name, target.memory_gb, usable, round(need, 2), need <= usable,
                        _largest_context(cfg, weights, host, jetson, target.workspace_gb, usable),
                        build_gb=round(build, 2), build_fits=build <= usable if jetson else None,
                        max_streams=largest_streams(cfg, weights, host, jetson, target.workspace_gb, usable)))
    return MemoryPlan(**{**plan.__dict__, "fits": tuple(fits)})


def _fit_target(name: str, get_target):
    """A preset, or the 32 GB AGX Orin (same GPU and software as the 64 GB preset)."""
    if name == "orin-agx-32":
        from dataclasses import replace

        agx = get_target("orin-agx")
        return replace(agx, name="orin-agx-32", description="Jetson AGX Orin 32 GB (JetPack 6)", memory_gb=32)
    return get_target(name)


def _largest_context(cfg: MemoryConfig, weights: dict[str, int], host: int, jetson: bool, workspace_gb: float,
                     usable_gb: float) -> int:
    """The largest max context (multiple of 256, at most max_position) whose plan fits `usable_gb`."""
    from dataclasses import replace

    from omnisift_edge.engines.pool_memory import planned_weights, pool_call_bytes

    loaded = sum(planned_weights(weights, cfg.streams).values())

    def need(tokens: int) -> float:
        c = replace(cfg, max_context=max(tokens, 1), window=None)
        acts = max(max(activation_bytes(c, tokens).values()), pool_call_bytes(c, tokens, c.streams))
        total = loaded + (host if jetson else 0) + kv_bytes(c, tokens, c.streams) + acts
        return (total + workspace_gb * GB) / GB

    if cfg.window is not None:   # the cache stops growing at the window: any context fits once the window does
        return cfg.shape.text.max_position if need(cfg.window) <= usable_gb else 0
    lo, hi = 0, cfg.shape.text.max_position // 256
    while lo < hi:   # need() grows with the context: bisect on multiples of 256
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid * 256) <= usable_gb else (lo, mid - 1)
    return lo * 256


def read_config(path) -> ThinkerShape:
    """A bare config.json (a file, or a model folder holding one) -> ThinkerShape; one-line errors."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UsageError(f"no such file: {path}; pass a Qwen2.5-Omni config.json (or the model folder)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not JSON ({exc}); pass a Qwen2.5-Omni config.json") from None
    return ThinkerShape.from_config(config, source=str(path))


def plan_config(path, **settings) -> MemoryPlan:
    """`omnisift-edge plan CONFIG.json`: the memory plan of a model from its config alone (no weights)."""
    from omnisift_edge.artifact.limits import check_max_context

    shape = read_config(path)
    check_max_context(settings.get("max_context", 8192), most=shape.text.max_position,
                      fix="the model's max_position_embeddings")
    return plan_memory(check_prefill_fits(MemoryConfig(shape, **settings)))


def check_prefill_fits(cfg: MemoryConfig) -> MemoryConfig:
    """`cfg`, or a one-line UsageError when a grouped prefill call has more rows than the cache holds."""
    cache = cfg.window or cfg.max_context
    if cfg.prefill_chunks > 1 and cfg.prefill_rows >= cache:
        raise UsageError(f"--prefill-chunks {cfg.prefill_chunks} needs {cfg.prefill_rows} rows per call "
                         f"({cfg.chunk_tokens} per chunk), not less than the {cache}-token cache; "
                         "use fewer chunks or a longer --max-context")
    return cfg


def write_plan_json(plan: MemoryPlan, path, *, speeds=()) -> None:
    """The memory plan as JSON, with the speed predictions (engines/speed.py) under "speed" when given."""
    import json

    from omnisift_edge.atomic import atomic_path

    record = plan.to_dict()
    if speeds:
        record["speed"] = [s.to_dict() for s in speeds]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


ONNX_BYTES = {1: 4, 2: 1, 3: 1, 6: 4, 7: 8, 9: 1, 10: 2, 16: 2, 21: 0.5, 22: 0.5}   # TensorProto type -> bytes


def graph_weight_bytes(path, float_bytes: int) -> int:
    """Bytes of a graph's initializers as an engine holds them: float ones at `float_bytes` (the
    engine's precision), int4 packed, others as stored. Reads the proto only, never external data."""
    import math

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0.0
    for t in model.graph.initializer:
        n = math.prod(t.dims)
        total += n * (float_bytes if t.data_type in (1, 10, 16) else ONNX_BYTES.get(t.data_type, 4))
    return int(total)


def plan_export(folder, manifest: dict, *, precision: str, max_context: int, prefill: int,
                kv_in_place: bool = False, prefill_chunks: int = 1, streams: int = 1) -> MemoryPlan | None:
    """The memory plan of an export folder at a build's precision and profiles (`build --plan`).

    Weights are the graphs' file sizes at the engine's float precision (the int8/int4 bytes the
    manifest records kept as they are); the rest follows the sizes the export recorded
    (`thinker_shape`, written since issue 15; None for older exports).
    """
    from pathlib import Path

    from omnisift_edge.artifact.manifest import as_manifest, graph_file_bytes
    from omnisift_edge.artifact.tensors import is_batch_form

    manifest = as_manifest(manifest)
    record = manifest.section("thinker_shape")
    if record is None:
        return None
    shape = ThinkerShape.from_record(record)
    dtype = "fp32" if precision == "fp32" else "fp16"     # what the engines hold weights, cache and activations in
    quant = manifest.weights
    quantized = quant is not None and quant.bits in (4, 8)
    cfg = MemoryConfig(shape, dtype=dtype, weights=quant.mode if quantized else dtype,
                       block_size=(quant and quant.block_size) or 32, lm_head_quantized=bool(quant and quant.lm_head_quantized),
                       max_context=min(max_context, shape.text.max_position),
                       resolution=manifest.resolution, prefill=prefill, kv_in_place=kv_in_place,
                       prefill_chunks=prefill_chunks, kept_per_chunk=_largest_kept(manifest), streams=streams)
    check_prefill_fits(cfg)
    weights: dict[str, int] = {}
    stored: dict[str, int] = {}
    scale = FLOAT_BYTES[dtype] / FLOAT_BYTES[manifest.dtype]   # float weights: graph -> engine dtype
    for graph, entry in manifest.graphs.items():
        if is_batch_form(graph) and streams == 1:
            continue   # batched encoders / compressors: engines of a stream pool only (build --max-streams N > 1)
        part = graph if graph in ("vision_encoder", "audio_encoder", "decoder", *BATCH_ENCODERS) else \
            "compressor_batch" if is_batch_form(graph) else "compressor"
        size = file = graph_file_bytes(Path(folder), manifest, entry.file)
        fixed = quant.quantized_weight_bytes if part == "decoder" and quant is not None else 0   # packed ints stay as they are
        size = int((size - fixed) * scale + fixed)   # file sizes, not the protos: planning imports no onnx
        one = part.startswith("compressor")          # one compressor (and one batched) runs: the largest counts
        weights[part] = max(weights.get(part, 0), size) if one else size
        stored[part] = max(stored.get(part, 0), file) if one else file
    return with_forms(plan_memory(cfg, weights=weights, onnx_weights=stored), manifest)


def _largest_kept(manifest) -> int | None:
    """The largest kept count per chunk among the export's ratios (what one chunk's prefill receives)."""
    return max((r.kept_total for r in manifest.ratios), default=None)


def with_forms(plan: MemoryPlan, manifest) -> MemoryPlan:
    """The plan with each target's decoder form (engines/kv_form.py): which graph its TensorRT builds."""
    from dataclasses import replace

    from omnisift_edge.engines.kv_form import decoder_form
    from omnisift_edge.engines.presets import get_target

    fits = []
    for fit in plan.fits:
        target = _fit_target(fit.target, get_target)
        newest = target.tensorrt[-1].rstrip(".")     # a datacenter preset takes any 10.x/11.x: plan the newest
        form, _ = decoder_form(manifest, target.flavour, newest)
        rtx = "-RTX" if target.flavour == "tensorrt_rtx" else ""
        streams = largest_streams(replace(plan.config, kv_in_place=form == "decoder_scatter"), plan.weights,   # its form's slots
                                  plan.host_tables, target.jetson, target.workspace_gb, fit.usable_gb)
        fits.append(replace(fit, decoder_form=f"{form} (TensorRT{rtx} {' or '.join(p.rstrip('.') for p in target.tensorrt)})",
                            max_streams=streams))
    return replace(plan, fits=tuple(fits))


# ONNX Runtime CPU's decoder peak (the plan's check) lives in ort_peak.py; its names stay importable from here
from omnisift_edge.engines.ort_peak import (ORT_ATTENTION_COPIES, ORT_MASK_BYTES, ORT_SESSION_BYTES,  # noqa: E402,F401
                                            ort_cpu_decoder_peak)
# a stream pool's terms (what it loads, its calls, its most streams) live in pool_memory.py; importable from here
from omnisift_edge.engines.pool_memory import (STREAMS_CAP, batch_activation_bytes,  # noqa: E402,F401
                                               decode_activation_bytes, largest_streams)
