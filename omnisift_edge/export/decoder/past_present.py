"""decoder.onnx: the thinker LLM with a KV cache, exported through Optimum and checked in ONNX Runtime.

One graph serves prefill (sequence_length > 1; a first prefill passes an empty past,
past_sequence_length 0) and decode (sequence_length 1). Its inputs and outputs are exactly
`tensors.decoder_graph(num_layers)`: inputs_embeds [B, S, D], position_ids [3, B, S] (TMRoPE; kept
tokens keep their original positions), attention_mask [B, P + S], past_key_values.{i}.key/value
[B, kv, P, hd] -> logits [B, 1, V] (last position only), present.{i}.key/value [B, kv, P + S, hd].

The export goes through Optimum: `decoder_config.ThinkerDecoderOnnxConfig` is registered with its
TasksManager for `qwen2_5_omni_thinker`, `optimum.exporters.onnx.convert.export` traces the
`ThinkerDecoder` wrapper under Optimum's model patcher, and `validate_model_outputs` checks the
graph at the dummy shapes. `validate_decoder` then checks what the runtime does: a prefill on an
empty cache with gapped positions, then decode steps feeding the presents back.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.artifact.tensors import Dims, decoder_graph

DTYPES = ("fp32", "fp16")
DATA_SUFFIX = ".data"          # external data of `decoder.onnx` lives in `decoder.onnx.data`
META_PREFIX = "omnisift_edge."


def decoder_dims(thinker, dims: Dims) -> Dims:
    """`dims` with the decoder's sizes (layers, kv heads, head dim, vocab) read from `thinker`."""
    from omnisift_edge.export.decoder.past_present_config import head_dim, text_config

    cfg = text_config(thinker.config)
    return dataclasses.replace(dims, hidden=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
                               kv_heads=cfg.num_key_value_heads, head_dim=head_dim(cfg), vocab=cfg.vocab_size)


def _check_dims(thinker, dims: Dims) -> None:
    want = decoder_dims(thinker, dims)
    wrong = [f"{name} {getattr(dims, name)} (model: {getattr(want, name)})"
             for name in ("hidden", "num_layers", "kv_heads", "head_dim", "vocab")
             if getattr(dims, name) != getattr(want, name)]
    if wrong:
        raise UsageError(f"decoder sizes do not match the model: {', '.join(wrong)}; "
                         "build them with omnisift_edge.export.decoder.past_present.decoder_dims(thinker, dims)")


def _decoder_module(thinker, dtype: str):
    """The module to trace, in `dtype`: the thinker's own modules when the dtype matches, else a copy."""
    from omnisift_edge.export.decoder.past_present_config import ThinkerDecoder

    return module_in_dtype(ThinkerDecoder(thinker), thinker, dtype)


def module_in_dtype(module, thinker, dtype: str):
    """`module` (a wrapper around `thinker`'s modules) in `dtype`, in eval mode; a copy when the dtype differs."""
    torch = require("torch")

    want = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    if next(thinker.model.parameters()).dtype != want:
        # never cast the caller's model in place; load it in `dtype` to avoid this copy for big models
        module = copy.deepcopy(module).to(want)
    return module.eval()


def export_decoder(thinker, dims: Dims, path, *, dtype: str = "fp32", opset: int = 17,
                   max_context: int | None = None, external_data: bool | None = None,
                   check: bool = True) -> Path:
    """Export the thinker's LLM to `path` (decoder.onnx) through Optimum; returns `path`.

    dtype "fp32" or "fp16" (the graph's float inputs/outputs and weights). max_context: the longest
    KV cache (total_sequence_length) the graph is meant for, recorded in the graph's metadata for
    engine profiles; at most the model's max_position_embeddings (the default). external_data:
    None writes `<name>.onnx.data` only when the graph is over 2 GB, True always, False never
    (an error for graphs over 2 GB). check: run Optimum's output validation at the dummy shapes.
    The files appear at `path` only when complete: everything is written in a temporary folder
    beside it and moved into place with os.replace, data first.
    """
    for module in ("onnx", "onnxruntime", "optimum.exporters.onnx"):   # optimum-onnx: Optimum's ONNX exporter
        require(module, extra="export")
    from optimum.exporters.onnx.convert import validate_model_outputs

    from omnisift_edge.export.decoder.past_present_config import onnx_config_for, text_config

    path = Path(path)
    if dtype not in DTYPES:
        raise UsageError(f"decoder dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if path.suffix != ".onnx":
        raise UsageError(f"the decoder graph file must end in .onnx (got {path.name})")
    _check_dims(thinker, dims)
    limit = text_config(thinker.config).max_position_embeddings
    max_context = limit if max_context is None else int(max_context)
    if not 0 < max_context <= limit:
        raise UsageError(f"max context must be in 1..{limit} (the model's max_position_embeddings); "
                         f"got {max_context}")
    module = _decoder_module(thinker, dtype)
    config = onnx_config_for(thinker, dtype)

    def validate(staged: Path, output_names: list[str]) -> None:
        atol = config.ATOL_FOR_VALIDATION if dtype == "fp32" else TOLERANCES["fp16"][0]
        validate_model_outputs(config, module, staged, output_names, atol=atol,
                               device=str(next(module.parameters()).device), use_subprocess=False)

    return export_staged(module, config, path, graph="decoder", dtype=dtype, opset=opset, max_context=max_context,
                         external_data=external_data, validate=validate if check else None)


def export_staged(module, config, path: Path, *, graph: str, dtype: str, opset: int, max_context: int,
                  external_data: bool | None, validate=None, rewrite=None) -> Path:
    """Trace `module` with Optimum's `export` under `config` into `path`: staged in a hidden folder beside
    it, metadata and external data finished, `rewrite(staged)` (a graph pass) and `validate(staged,
    output_names)` run if given, then moved into place (data first). Shared by the decoder's forms
    (decoder.onnx, decoder_gqa.onnx, decoder_scatter.onnx)."""
    from optimum.exporters.onnx.convert import export

    device = str(next(module.parameters()).device)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = staging / path.name
        _, output_names = export(module, config, staged, opset=opset, device=device,
                                 dtype=dtype if dtype == "fp16" else None)
        _finish(staged, external_data, {"graph": graph, "dtype": dtype, "opset": str(opset),
                                        "max_context": str(max_context)})
        if rewrite is not None:
            rewrite(staged)
        if validate is not None:
            validate(staged, output_names)
        _move_into_place(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _finish(staged: Path, external_data: bool | None, metadata: dict[str, str]) -> None:
    """Record metadata and put any external data in `<name>.onnx.data` (one file)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(staged), load_external_data=False)
    external = [t for t in _all_tensors(model) if uses_external_data(t)]
    location = staged.name + DATA_SUFFIX
    if external:
        if external_data is False:
            raise UsageError(f"the decoder graph is over 2 GB, so ONNX needs its weights in external data; "
                             f"drop external_data=False (weights: {_folder_bytes(staged.parent) / 2**30:.1f} GB)")
        old = {e.value for t in external for e in t.external_data if e.key == "location"}
        if old != {location}:
            if len(old) != 1:
                raise RuntimeError(f"expected Optimum to write one external data file, got {sorted(old)}")
            os.replace(staged.parent / old.pop(), staged.parent / location)
            for tensor in external:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = location
    _set_metadata(model, metadata)
    if external_data and not external:
        model = onnx.load(str(staged))   # small: under 2 GB
        _set_metadata(model, metadata)
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
    else:
        onnx.save_model(model, str(staged))   # tensors stay where they are


def _all_tensors(model):
    from onnx.external_data_helper import _get_all_tensors   # initializers and Constant attributes

    return list(_get_all_tensors(model))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _set_metadata(model, metadata: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value


def _move_into_place(staged: Path, path: Path) -> None:
    """Data file first, then the graph: `path` never names a graph whose data is missing."""
    data, target_data = staged.with_name(staged.name + DATA_SUFFIX), path.with_name(path.name + DATA_SUFFIX)
    if data.exists():
        os.replace(data, target_data)
    os.replace(staged, path)
    if not data.exists() and target_data.exists() and not _graph_uses_external_data(path):
        target_data.unlink()   # a stale data file of an earlier, bigger export


def _graph_uses_external_data(path: Path) -> bool:
    import onnx
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in _all_tensors(onnx.load(str(path), load_external_data=False)))


# default (atol, rtol) of validate_decoder per graph dtype (the torch side runs in the thinker's dtype)
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2)}


@dataclasses.dataclass(frozen=True)
class DecoderCheck:
    """ORT vs PyTorch on prefill chunks (the first on an empty past), then decode steps feeding presents back."""

    dtype: str
    batch_size: int
    chunk_lengths: tuple[int, ...]
    decode_steps: int
    logits_max_abs: tuple[float, ...]      # per call: each prefill chunk, then each decode step
    present_max_abs: tuple[float, ...]
    torch_tokens: tuple[tuple[int, ...], ...]   # per call, per batch row: argmax of the last logits
    onnx_tokens: tuple[tuple[int, ...], ...]
    atol: float
    rtol: float
    within_tolerance: bool                 # every logit and present within atol + rtol * |torch|

    @property
    def tokens_match(self) -> bool:
        return self.torch_tokens == self.onnx_tokens

    @property
    def ok(self) -> bool:
        # an argmax flip while every logit is within tolerance is a near-tie, not an export bug
        return self.within_tolerance


def validate_decoder(onnx_path, thinker, *, dtype: str | None = None, atol: float | None = None,
                     rtol: float | None = None, batch_size: int = 1, chunk_lengths: tuple[int, ...] = (12, 7),
                     decode_steps: int = 2, seed: int = 0) -> DecoderCheck:
    """Run `onnx_path` in ONNX Runtime (CPUExecutionProvider) and the thinker in PyTorch, as the
    runtime does: prefill chunks of `chunk_lengths` tokens with gapped 3-row positions, the first on
    an empty cache ([B, kv, 0, hd] past), then `decode_steps` greedy steps (the torch argmax token's
    embedding at the next text position, for both); the ORT presents are always fed back as past.
    Compares logits and presents after every call; attention masks are all ones. dtype (the
    graph's, read from it when None) picks the default tolerances of `TOLERANCES`.
    """
    require("torch")
    from transformers import DynamicCache

    from omnisift_edge.export.decoder.past_present_config import gapped_positions, head_dim, text_config

    if not chunk_lengths or min(chunk_lengths) < 1 or batch_size < 1 or decode_steps < 0:
        raise UsageError(f"need a batch size >= 1, positive chunk lengths and decode steps >= 0 (got "
                         f"{batch_size}, {chunk_lengths}, {decode_steps})")
    cfg = text_config(thinker.config)
    graph = decoder_graph(cfg.num_hidden_layers)
    session = ort_session(Path(onnx_path))
    types = {i.name: i.type for i in session.get_inputs()}
    graph_dtype = "fp16" if types[graph.inputs[0].name] == "tensor(float16)" else "fp32"
    if dtype is not None and dtype != graph_dtype:
        raise UsageError(f"{onnx_path} is an {graph_dtype} graph, not {dtype}; pass dtype={graph_dtype!r}")
    atol = TOLERANCES[graph_dtype][0] if atol is None else atol
    rtol = TOLERANCES[graph_dtype][1] if rtol is None else rtol
    float_np = np.float16 if graph_dtype == "fp16" else np.float32
    rng = np.random.Generator(np.random.PCG64(seed))
    b, kv, hd = batch_size, cfg.num_key_value_heads, head_dim(cfg)

    past = [np.zeros((b, kv, 0, hd), float_np)] * (2 * cfg.num_hidden_layers)           # [B, kv, 0, hd]
    cache = DynamicCache(config=cfg)
    diffs, tokens, close, total, next_position = [], [], True, 0, 3
    for step in range(len(chunk_lengths) + decode_steps):
        if step < len(chunk_lengths):   # a prefill chunk: kept tokens at gapped positions
            n = chunk_lengths[step]
            embeds = (rng.standard_normal((b, n, cfg.hidden_size)) * 0.5).astype(float_np)   # [B, n, D]
            positions = gapped_positions(b, n, start=next_position, rng=rng)                 # [3, B, n]
        else:           # a decode step: the torch greedy token at the next text position (3 rows equal)
            embeds = _embed(thinker, tokens[-1][0]).astype(float_np)                         # [B, 1, D]
            positions = np.full((3, b, 1), next_position, dtype=np.int64)                    # [3, B, 1]
        total += embeds.shape[1]
        mask = np.ones((b, total), dtype=np.int64)                                           # [B, P + n]
        got = session.run(graph.output_names, dict(zip(graph.input_names, [embeds, positions, mask, *past])))
        ref = _torch_step(thinker, cache, embeds, positions, mask)
        got = [g.astype(np.float32) for g in got]   # logits [B, 1, V], presents [B, kv, P + n, hd]
        diffs.append((float(np.abs(got[0] - ref[0]).max()),
                      max(float(np.abs(g - r).max()) for g, r in zip(got[1:], ref[1:]))))
        close &= all(np.allclose(g, r, atol=atol, rtol=rtol) for g, r in zip(got, ref))
        tokens.append((tuple(ref[0][:, -1].argmax(-1).tolist()), tuple(got[0][:, -1].argmax(-1).tolist())))
        next_position = int(positions.max()) + 1
        past = [p.astype(float_np) for p in got[1:]]    # the runtime feeds the presents back as past
    return DecoderCheck(graph_dtype, b, tuple(chunk_lengths), decode_steps,
                        logits_max_abs=tuple(d[0] for d in diffs), present_max_abs=tuple(d[1] for d in diffs),
                        torch_tokens=tuple(t[0] for t in tokens), onnx_tokens=tuple(t[1] for t in tokens),
                        atol=atol, rtol=rtol, within_tolerance=bool(close))


def _torch_step(thinker, cache, embeds: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """The reference: `thinker.model` + `lm_head` on a DynamicCache, as the PyTorch runtime calls it."""
    torch = require("torch")

    param = next(thinker.parameters())
    with torch.inference_mode():
        out = thinker.model(inputs_embeds=torch.from_numpy(embeds).to(param.device, param.dtype),     # [B, n, D]
                            position_ids=torch.from_numpy(positions).to(param.device),               # [3, B, n]
                            attention_mask=torch.from_numpy(mask).to(param.device),                  # [B, P + n]
                            past_key_values=cache, use_cache=True)
        logits = thinker.lm_head(out.last_hidden_state[:, -1:])                                      # [B, 1, V]
    presents = [x for layer in cache.layers for x in (layer.keys, layer.values)]                    # [B, kv, P + n, hd]
    return [t.float().cpu().numpy() for t in (logits, *presents)]


def _embed(thinker, ids) -> np.ndarray:
    """Text embeddings [B, 1, D] of one token id per batch row."""
    torch = require("torch")

    with torch.inference_mode():
        table = thinker.get_input_embeddings()
        return table(torch.tensor(ids, device=table.weight.device)[:, None]).float().cpu().numpy()
