"""What `export` does inside its staging folder: graphs, tables, tokenizer, checks, manifest.

Each graph is validated against PyTorch in ONNX Runtime right after it is written (a failed check
raises `ExportValidationError` with the numbers), then the whole chain is run end to end on a
generated clip, then each weight the graphs share is stored once (`shared_weights.data`), then every
graph is linted for TensorRT 10.3; the manifest is written last.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.artifact.manifest import (DECODER, DECODER_SCATTER, TIE_RULE, GraphInfo, KvForm, Layout, Manifest,
                                            RatioPlan, Rope, SharedWeights, TextEmbeddings, Tokenizer, Weights,
                                            graph_entry, tool_versions, write_manifest)
from omnisift_edge.export.config import ExportArtifact, ExportConfig, ExportValidationError, config_summary
from omnisift_edge.artifact.tensors import AUDIO_ENCODER, COMPRESSOR, VISION_ENCODER, Dims, decoder_graph

EMBED_FILE, EMBED_TENSOR, TOKENIZER_DIR = "embed_tokens.safetensors", "embed_tokens", "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


def model_dims(model, resolution: tuple[int, int]) -> Dims:
    """Every fixed axis size of the export: the encoders' chunk shape and the decoder's widths."""
    from omnisift_edge.export.decoder import decoder_dims
    from omnisift_edge.export.encoders import encoder_dims

    return decoder_dims(model.thinker, encoder_dims(model.thinker, *resolution))


def ratio_plan(cfg: ExportConfig, dims: Dims) -> tuple[RatioPlan, ...]:
    """For each compressor graph: the target, the drops and what they achieve (integer rounding)."""
    from omnisift_edge.compress.ratio import achieved_ratio, drops_for_ratio, kept_per_chunk

    if cfg.video_drop is not None:
        pairs = [(None, cfg.video_drop, cfg.audio_drop)]
    else:
        pairs = [(r, *drops_for_ratio(r, dims.tokens_per_frame, dims.window_audio_tokens, dims.grids_per_chunk))
                 for r in cfg.ratios]
    plan = []
    for target, rho_v, rho_a in pairs:
        kept = kept_per_chunk(dims.tokens_per_frame, rho_v, rho_a, dims.window_audio_tokens, dims.grids_per_chunk)
        achieved = achieved_ratio(dims.tokens_per_frame, rho_v, rho_a, dims.window_audio_tokens, dims.grids_per_chunk)
        ratio = target if target is not None else round(achieved, 3)
        plan.append(RatioPlan(f"compressor_r{ratio:g}", ratio, rho_v, rho_a, achieved, kept.video, kept.audio, kept.total))
    return tuple(plan)


def _check(name: str, result, checks: dict) -> None:
    from omnisift_edge.export.memory_trace import mark

    mark(f"{name}: checked")
    checks[name] = asdict(result) | {"ok": bool(result.ok)}
    if not result.ok:
        raise ExportValidationError(f"{name} disagrees with PyTorch in ONNX Runtime: {checks[name]}; "
                                    "please report this with the command line (the export was not written)")


def _copy_tokenizer(model, target: Path) -> list[str]:
    target.mkdir()
    if model.source.is_default:
        from omnisift_edge.model.tokenizer import write_tiny_tokenizer

        write_tiny_tokenizer(target)
    else:
        for name in TOKENIZER_FILES:
            if (model.source.path / name).is_file():
                shutil.copy2(model.source.path / name, target / name)
    # the template the export was made with, in the file that wins at load time (issue 13.6)
    (target / "chat_template.jinja").write_text(model.tokenizer.chat_template, encoding="utf-8")
    return sorted(p.name for p in target.iterdir())


def build_folder(cfg: ExportConfig, folder: Path, progress: Callable[[str], None]) -> ExportArtifact:
    """Export, validate and lint every graph into `folder`, then write its manifest (last)."""
    require("onnx", extra="export")
    require("onnxruntime", extra="export")
    from omnisift_edge.model.load import load_model

    from omnisift_edge.artifact.onnx_runtime import low_memory_sessions

    progress("loading the model")
    model = load_model(cfg.source, map_dir=folder)   # weights mapped from files: clean pages, not anonymous
    with low_memory_sessions():   # the checks' sessions keep no float32 copies of the weights
        return _build(cfg, folder, progress, model)


def _build(cfg: ExportConfig, folder: Path, progress: Callable[[str], None], model) -> ExportArtifact:
    """build_folder's steps, after the model is loaded."""
    dims = model_dims(model, cfg.resolution)
    plan = ratio_plan(cfg, dims)
    _check_model(cfg, model, plan)
    awq = _calibrate(model, cfg, plan, progress)   # awq: scales folded into the thinker before any graph is written
    checks: dict = {}
    graphs = _export_encoders(cfg, model, dims, plan, folder, checks, progress)
    graphs.update(_export_batch_graphs(cfg, model, dims, plan, folder, checks, progress))
    decoder, weights, trt_form = _export_decoder(cfg, model, dims, folder, checks, progress, awq)
    graphs[DECODER] = decoder
    progress("decoder, in-place KV form for ONNX Runtime")
    kv_cache = _export_inplace_decoder(model, dims, folder, cfg, checks, weights)
    progress("decoder, in-place KV form for TensorRT (TensorScatter, opset 24)")
    kv_cache.update(_export_scatter_decoder(model, dims, folder, cfg, checks, weights))
    kv_cache.update(trt_form)
    progress("text embeddings and tokenizer")
    embeddings, tokenizer = _write_tables(model, cfg.dtype, folder)
    manifest = _manifest(cfg, model, dims, plan, graphs, kv_cache, embeddings, tokenizer, weights, awq)

    progress("end-to-end check: greedy answers through the graphs vs the PyTorch stream")
    from omnisift_edge.export.e2e import end_to_end_check

    with weights:   # quantized: the PyTorch stream runs the graph's dequantized weights
        for entry in plan:
            _check(f"end_to_end_{entry.graph}", end_to_end_check(model, folder, manifest, entry), checks)
    progress("one copy of the weights the graphs share")
    manifest = _share_weights(folder, manifest)
    progress("TensorRT lint")
    lint = _lint(folder)
    manifest = manifest.replace(validation=checks, lint=lint)
    write_manifest(folder, manifest)
    return ExportArtifact(folder=folder, manifest=manifest, checks=checks, lint=lint)


def _check_model(cfg: ExportConfig, model, plan: tuple[RatioPlan, ...]) -> None:
    """What the model must have for this export, refused before any graph is written."""
    if model.selector is None and any(p.rho_audio > 0 for p in plan):
        raise UsageError("this model has no OmniSIFT compressor; pass --compressor FILE (the OmniSIFT checkpoint's, "
                         "or one trained with omnisift-edge train), or export --ratio 1")
    if cfg.quantized:   # a block size that does not divide the widths fails here, before any export
        from omnisift_edge.export.decoder.quantize import check_widths

        check_widths(model.thinker.config.to_dict(), cfg.quant_config())


def _export_encoders(cfg: ExportConfig, model, dims: Dims, plan: tuple[RatioPlan, ...], folder: Path, checks: dict,
                     progress: Callable[[str], None]) -> dict[str, GraphInfo]:
    """The vision and audio encoders and one compressor per ratio, each validated against PyTorch."""
    from omnisift_edge.export.compressor import export_compressor, validate_compressor
    from omnisift_edge.export.encoders import (
        export_audio_encoder,
        export_vision_encoder,
        validate_audio_encoder,
        validate_vision_encoder,
    )

    thinker, opset, dtype = model.thinker, cfg.opset, cfg.dtype
    graphs = {}
    for key, spec, export, validate in (("vision_encoder", VISION_ENCODER, export_vision_encoder, validate_vision_encoder),
                                        ("audio_encoder", AUDIO_ENCODER, export_audio_encoder, validate_audio_encoder)):
        progress(key.replace("_", " "))
        export(thinker, dims, folder / f"{key}.onnx", dtype=dtype, opset=opset)
        _check(key, validate(folder / f"{key}.onnx", thinker, dims, dtype=dtype), checks)
        graphs[key] = _typed(key, graph_entry(spec, dims, f"{key}.onnx", opset, dtype))
    for entry in plan:
        progress(f"compressor at ratio {entry.ratio:g}")
        file = f"{entry.graph}.onnx"
        export_compressor(model.selector, dims, entry.rho_video, entry.rho_audio, folder / file, dtype=dtype, opset=opset)
        _check(entry.graph, validate_compressor(folder / file, model.selector, dims, entry.rho_video,
                                                entry.rho_audio, dtype=dtype), checks)
        kept_dims = Dims(**{**asdict(dims), "kept_tokens": entry.kept_total})
        graphs[entry.graph] = _typed(entry.graph, graph_entry(COMPRESSOR, kept_dims, file, opset, dtype,
                                                              rho_video=entry.rho_video, rho_audio=entry.rho_audio))
    return graphs


def _export_batch_graphs(cfg: ExportConfig, model, dims: Dims, plan: tuple[RatioPlan, ...], folder: Path, checks: dict,
                         progress: Callable[[str], None]) -> dict[str, GraphInfo]:
    """The batched forms of the encoders and of each compressor (export/batch_graphs.py; a stream pool's chunks in
    one call), each validated at B = 3 against the one-chunk PyTorch module per row; none with --no-batch-graphs."""
    if not cfg.batch_graphs:
        return {}
    from omnisift_edge.export.batch_graphs import batch_graphs

    graphs = {}
    for graph in batch_graphs(model, dims, plan, dtype=cfg.dtype, opset=cfg.opset):
        progress(graph.key.replace("_", " "))
        graph.export(folder / graph.file)
        _check(graph.key, graph.validate(folder / graph.file), checks)
        graphs[graph.key] = _typed(graph.key, graph_entry(graph.spec, graph.dims, graph.file, cfg.opset, cfg.dtype,
                                                          **graph.extra))
    return graphs


def _export_decoder(cfg: ExportConfig, model, dims: Dims, folder: Path, checks: dict,
                    progress: Callable[[str], None], awq=None) -> tuple[GraphInfo, "_DequantizedWeights", dict[str, KvForm]]:
    """decoder.onnx (past in, present out), quantized for --weights int8/int4, validated against PyTorch;
    int8/int4 also write decoder_trt10.onnx from the float graph first (its `kv_cache` entry is returned).
    Calibrated int4 (`awq`, an AwqReport): both take its ints, as the other decoder forms do after."""
    from omnisift_edge.export.decoder.past_present import export_decoder, validate_decoder

    progress("decoder")
    thinker, dtype = model.thinker, cfg.dtype
    # check=False: Optimum's dummy-shape check opens one more ONNX Runtime session (its own options: float32
    # copies of the weights); validate_decoder below checks prefill and decode steps in ONNX Runtime
    decoder_path = export_decoder(thinker, dims, folder / f"{DECODER}.onnx", dtype=dtype, opset=cfg.opset,
                                  max_context=cfg.max_context, check=False)
    weights, trt_form = _DequantizedWeights(thinker, None), {}
    if cfg.quantized:   # weight-only int8/int4: checked against PyTorch running the same dequantized weights
        from omnisift_edge.export.decoder.quantize import quantize_decoder
        from omnisift_edge.export.decoder.trt_int4 import export_decoder_trt10

        progress(f"decoder, {cfg.weights} form for TensorRT 10.0-10.5 (JetPack 6)")
        ints = awq.ints if awq is not None else None
        trt_form = export_decoder_trt10(folder, decoder_path, cfg.quant_config(), dims, dtype, ints)
        progress(f"decoder weights to {cfg.weights} (weight-only Q/DQ, {cfg.calibration} ints)")
        weights = _DequantizedWeights(thinker, quantize_decoder(decoder_path, decoder_path, cfg.quant_config(), ints=ints))
    with weights:
        _check(DECODER, validate_decoder(decoder_path, thinker, dtype=dtype), checks)
    entry = graph_entry(decoder_graph(dims.num_layers), dims, f"{DECODER}.onnx", weights.opset(cfg.opset), dtype,
                        external_data=(folder / f"{DECODER}.onnx.data").exists())
    return _typed(DECODER, entry), weights, trt_form


def _write_tables(model, dtype: str, folder: Path) -> tuple[TextEmbeddings, Tokenizer]:
    """The text embedding table (safetensors) and the tokenizer files the runtimes read."""
    save_file = require("safetensors.numpy").save_file
    torch = require("torch")
    weight = model.thinker.get_input_embeddings().weight.detach()     # [V, D]; no copy when already in dtype
    table = weight.to(torch.float16 if dtype == "fp16" else torch.float32).numpy()
    save_file({EMBED_TENSOR: table}, str(folder / EMBED_FILE))
    files = _copy_tokenizer(model, folder / TOKENIZER_DIR)
    return (TextEmbeddings(EMBED_FILE, EMBED_TENSOR, tuple(table.shape), "float16" if dtype == "fp16" else "float32"),
            Tokenizer(TOKENIZER_DIR, tuple(files)))


def _manifest(cfg: ExportConfig, model, dims: Dims, plan: tuple[RatioPlan, ...], graphs: dict[str, GraphInfo],
              kv_cache: dict[str, KvForm], embeddings: TextEmbeddings, tokenizer: Tokenizer,
              weights: "_DequantizedWeights", awq=None) -> Manifest:
    """The export's manifest, all but the checksums (write_manifest adds them) and the checks' results."""
    source = "embedded default" if model.source.is_default else str(model.source.path.resolve())
    return Manifest(
        dtype=cfg.dtype, resolution=tuple(cfg.resolution), max_context=cfg.max_context, dims=dims,
        layout=Layout.from_dict(asdict(model.spec)), rope=Rope.from_dict(_rope_settings(model)), ratios=plan,
        graphs=graphs, kv_cache=kv_cache, text_embeddings=embeddings, tokenizer=tokenizer,
        weights=Weights.from_dict({**weights.record(cfg.dtype, kv_cache),
                                   **({"calibration": awq.record()} if awq else {})}),
        stop_token_ids=(model.spec.tokens.im_end, model.spec.tokens.endoftext),
        sections={"model": dict(model.identity, source=source), "selector": _selector_record(model),
                  "tie_rule": TIE_RULE, "thinker_shape": _thinker_shape(model), "tools": tool_versions(),
                  "export_config": config_summary(cfg),
                  "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


def _typed(key: str, entry: dict) -> GraphInfo:
    return GraphInfo.from_dict(key, entry, f"graphs.{key}")


def _lint(folder: Path) -> dict:
    """The TensorRT 10.3 lint of every graph (export/lint.py); an error stops the export."""
    from omnisift_edge.export.lint import format_findings, has_errors, lint_folder

    findings = lint_folder(folder)
    if has_errors(findings):
        raise UsageError("the graphs use what TensorRT 10.3 cannot build:\n" + format_findings(findings))
    return {graph: [asdict(f) for f in items] for graph, items in findings.items()}


def _calibrate(model, cfg: ExportConfig, plan: tuple[RatioPlan, ...], progress: Callable[[str], None]):
    """--calibration gptq | awq: activation-aware scales from the export's own clips, folded into the
    thinker, then each linear's ints (clip search; GPTQ rounding for gptq) (export/decoder/awq.py,
    gptq.py); its AwqReport, or None for rtn and float exports."""
    if not cfg.quantized or cfg.calibration not in ("awq", "gptq"):
        return None
    from omnisift_edge.export.decoder.awq import apply_awq, calibration_clips, collect_inputs

    progress(f"int4 calibration ({cfg.calibration}): activations of the calibration clips through the PyTorch stream")
    clips, record = calibration_clips(model, cfg.resolution, cfg.calibration_data)
    inputs = collect_inputs(model, clips, cfg.resolution, plan[0].rho_video, plan[0].rho_audio)
    record["rows"] = int(next(iter(inputs.values())).shape[0])
    progress(f"int4 calibration ({cfg.calibration}): per-group scale search, folded into the norms, up_proj and "
             "v_proj; then each linear's ints")
    return apply_awq(model.thinker, inputs, cfg.block_size, record, cfg.calibration)


def _share_weights(folder: Path, manifest: Manifest) -> Manifest:
    """Store each weight the graphs share once (export/shared_weights.py; the decoder forms hold the same
    LLM) and record it: `shared_weights`, and `external_data` on the graph entries that now point there."""
    from omnisift_edge.export.shared_weights import share_weights

    shared = share_weights(folder)
    if shared is None:
        return manifest

    def point(entry: GraphInfo) -> GraphInfo:
        return dataclasses.replace(entry, external_data=True) if entry.file in shared.graphs else entry

    forms = {k: dataclasses.replace(f, entry=point(f.entry)) if f.entry is not None else f
             for k, f in manifest.kv_cache.items()}
    return manifest.replace(shared_weights=SharedWeights.from_dict(shared.record()),
                            graphs={k: point(g) for k, g in manifest.graphs.items()}, kv_cache=forms)


class _DequantizedWeights:
    """Context for the checks: a quantized export's PyTorch reference runs the dequantized weights."""

    def __init__(self, thinker, report):
        self.thinker, self.report, self._context = thinker, report, None

    def __enter__(self):
        if self.report is not None:
            from omnisift_edge.export.decoder.quantize import dequantized_weights

            self._context = dequantized_weights(self.thinker, self.report)
            self._context.__enter__()
        return self

    def __exit__(self, *exc):
        context, self._context = self._context, None
        return context.__exit__(*exc) if context is not None else False

    def opset(self, opset: int) -> int:
        from omnisift_edge.export.decoder.quantize import QDQ_OPSET

        return QDQ_OPSET if self.report is not None else opset

    def record(self, dtype: str, kv_cache: dict[str, KvForm]) -> dict:
        """The manifest's `weights`: mode, form, bits, block size, method and the graph file per backend."""
        if self.report is None:
            return {"mode": dtype, "form": "float", "bits": 16 if dtype == "fp16" else 32,
                    "graphs": {"onnxruntime": "decoder.onnx", "tensorrt": "decoder.onnx"}}
        from omnisift_edge.export.decoder.quantize import backend_graphs
        from omnisift_edge.export.decoder.trt_int4 import tensorrt_forms

        return {**self.report.record(), "graphs": backend_graphs("decoder.onnx"),
                "tensorrt_forms": tensorrt_forms("decoder.onnx", DECODER_SCATTER in kv_cache)}


def _thinker_shape(model) -> dict:
    """The thinker's sizes (model/shape.py), so `build --plan` can plan memory from the folder alone."""
    from omnisift_edge.model.shape import ThinkerShape

    return ThinkerShape.from_config(model.thinker.config.to_dict()).record()


def _export_inplace_decoder(model, dims: Dims, folder: Path, cfg: ExportConfig, checks: dict,
                            weights: _DequantizedWeights) -> dict[str, KvForm]:
    """decoder_gqa.onnx (ONNX Runtime's in-place KV form), with the same weights as decoder.onnx (quantized
    the same way for --weights int8/int4), validated; returns the manifest's `kv_cache`. Not in `graphs`:
    those are what TensorRT builds, and it cannot parse GroupQueryAttention."""
    from omnisift_edge.artifact.tensors import decoder_gqa_graph
    from omnisift_edge.export.decoder.gqa import GRAPH, export_decoder_gqa, kv_cache_record, validate_decoder_gqa

    file = f"{GRAPH}.onnx"
    path = export_decoder_gqa(model.thinker, dims, folder / file, dtype=cfg.dtype, opset=cfg.opset,
                              max_context=cfg.max_context)
    if cfg.quantized:
        from omnisift_edge.export.decoder.quantize import quantize_decoder

        quantize_decoder(path, path, cfg.quant_config(), ints=weights.report.ints)
    entry = graph_entry(decoder_gqa_graph(dims.num_layers), dims, file, weights.opset(cfg.opset), cfg.dtype,
                        external_data=(folder / f"{file}.data").exists())
    with weights:
        _check(GRAPH, validate_decoder_gqa(path, model.thinker, entry, _rope_settings(model)), checks)
    record = kv_cache_record(dims, cfg.max_context, file)
    record[GRAPH]["entry"] = entry
    return {key: KvForm.from_dict(key, form, f"kv_cache.{key}") for key, form in record.items()}


def _export_scatter_decoder(model, dims: Dims, folder: Path, cfg: ExportConfig, checks: dict,
                            weights: _DequantizedWeights) -> dict[str, KvForm]:
    """decoder_scatter.onnx (TensorRT's in-place KV form: TensorScatter, opset 24), the same weights as
    decoder.onnx (quantized the same way), validated; returns its `kv_cache` entry. Not in `graphs`
    either: the engines stage builds it instead of `decoder` where the target's TensorRT has KVCacheUpdate."""
    from omnisift_edge.export.decoder.scatter import (GRAPH, SCATTER_OPSET, export_decoder_scatter, graph_entry_for,
                                                      kv_cache_record, validate_decoder_scatter)

    file = f"{GRAPH}.onnx"
    path = export_decoder_scatter(model.thinker, dims, folder / file, dtype=cfg.dtype, max_context=cfg.max_context)
    if cfg.quantized:
        from omnisift_edge.export.decoder.quantize import quantize_decoder

        quantize_decoder(path, path, cfg.quant_config(), metadata={"opset": str(SCATTER_OPSET)},
                         ints=weights.report.ints)
    entry = graph_entry_for(dims, file, cfg.dtype, (folder / f"{file}.data").exists())
    with weights:
        _check(GRAPH, validate_decoder_scatter(path, model.thinker, entry), checks)
    return {GRAPH: KvForm.from_dict(GRAPH, kv_cache_record(cfg.max_context, file, entry), f"kv_cache.{GRAPH}")}


def _rope_settings(model) -> dict:
    text = model.thinker.config.text_config
    scaling = getattr(text, "rope_scaling", None) or {}
    return {"rope_theta": getattr(text, "rope_theta", None), "mrope_section": scaling.get("mrope_section"),
            "position_id_per_seconds": model.spec.position_id_per_seconds,
            "seconds_per_chunk": model.spec.seconds_per_chunk, "rows": ["time", "height", "width"],
            "max_position_embeddings": getattr(text, "max_position_embeddings", None)}


def _selector_record(model) -> dict | None:
    """The manifest's `selector`: None when the export has no selector (every ratio keeps all audio)."""
    if model.selector is None:
        return None
    from omnisift_edge.compress.selector import selector_record

    source = model.source
    origin = (str(source.compressor) if source.compressor is not None
              else "embedded default" if source.is_default else f"{source.path} (model folder)")
    return selector_record(model.selector, origin)
