"""The `omnisift-edge` command line. Commands parse options and call one stage function each
(the options several commands share are declared once, in cli/options.py).

A `UsageError` anywhere becomes one line on stderr and exit code 1; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from omnisift_edge import __version__
from omnisift_edge.artifact.onnx_runtime import DEFAULT_THREAD_POLICY, THREAD_POLICIES
from omnisift_edge.cli.options import (_parse_ratios, _precisions, _targets, _user_errors, built_target, model_options,
                                       resolution_option)
from omnisift_edge.errors import UsageError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnisift-edge")
def main() -> None:
    """Ship OmniSIFT-compressed Qwen2.5-Omni to NVIDIA GPUs.

    With no --model, every command uses the embedded default: a tiny random-weight thinker with
    the real token ids and layout, built from a seed, so the whole pipeline runs without a download.
    """


@main.command()
@_user_errors
def doctor() -> None:
    """Print what this machine has (torch, CUDA, ONNX Runtime, TensorRT...) and what each command needs."""
    from omnisift_edge.doctor import report

    click.echo(report())


@main.command()
@model_options()
@click.option("--video", type=click.Path(path_type=Path), default=None,
              help="A video file with an audio track. Default: a generated clip.")
@click.option("--audio", type=click.Path(path_type=Path), default=None, help="Separate audio file for --video.")
@click.option("--seconds", type=float, default=6.0, show_default=True, help="Length of the generated clip.")
@resolution_option("112x112")
@click.option("--ratio", type=float, default=0.25, show_default=True,
              help="Overall fraction of audio+video tokens kept, in (0, 1].")
@click.option("--question", default="What happens in the video, and what do you hear?", show_default=True)
@click.option("--max-new-tokens", type=int, default=16, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--default-chat-template", is_flag=True,
              help="A --model folder without a chat template: use Qwen2.5-Omni's built-in one (else refused).")
@_user_errors
def demo(model_dir, compressor, compressor_heads, model_seed, video, audio, seconds, resolution, ratio, question,
         max_new_tokens, dtype, device, default_chat_template):
    """Stream a clip through OmniSIFT + the thinker in PyTorch, chunk by chunk, and answer a question."""
    from omnisift_edge.model.load import ModelSource
    from omnisift_edge.runtime.demo import DemoConfig, run_demo

    cfg = DemoConfig(source=ModelSource(path=model_dir, compressor=compressor, seed=model_seed, dtype=dtype,
                                         selector_heads=compressor_heads, device=device,
                                         default_chat_template=default_chat_template),
                     video=video, audio=audio, seconds=seconds, resolution=resolution, ratio=ratio,
                     question=question, max_new_tokens=max_new_tokens)
    result = run_demo(cfg, echo=click.echo)
    click.echo(result.summary())


@main.command()
@model_options()
@click.option("--ratio", type=float, default=None, help="Overall fraction of audio+video tokens kept, in (0, 1]. Default 0.25.")
@click.option("--ratios", default=None, help="Several ratios, comma separated (one compressor graph each), e.g. 1,0.5,0.35,0.25.")
@click.option("--video-drop", type=float, default=None, help="Explicit per-frame video drop in [0, 1) instead of --ratio.")
@click.option("--audio-drop", type=float, default=None, help="Explicit per-chunk audio drop in [0, 1) (with --video-drop).")
@resolution_option("448x448")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--max-context", type=int, default=8192, show_default=True, help="Longest KV cache to plan for.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--weights", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default=None,
              help="Decoder linear layers: int8 (per channel) / int4 (block-wise) weight-only Q/DQ (int4: calibrated, see --calibration). "
                   "Default: as --dtype.")
@click.option("--block-size", type=int, default=32, show_default=True, help="int4: weight rows sharing one scale.")
@click.option("--quantize-lm-head", is_flag=True, help="int8/int4: quantize the LM head too (default: kept in float).")
@click.option("--calibration", type=click.Choice(["gptq", "awq", "rtn"]), default=None,
              help="int4 ints: gptq (AWQ scales folded into the norms, clip search, GPTQ rounding; default), "
                   "awq (scales + clip search, round-to-nearest) or rtn (round-to-nearest, no calibration).")
@click.option("--calibration-data", type=click.Path(path_type=Path), multiple=True,
              help="gptq/awq: a clip to calibrate on (repeat for several); default: generated clips.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="Export folder to create.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder (only once the new export passed).")
@click.option("--default-chat-template", is_flag=True,
              help="A --model folder without a chat template: use Qwen2.5-Omni's built-in one (else refused).")
@click.option("--batch-graphs/--no-batch-graphs", default=True, show_default=True,
              help="Also write the batched forms of the encoders and compressors (a stream pool's chunks in one call).")
@_user_errors(interrupted="interrupted; nothing was written (the output folder is as it was)")
def export(model_dir, compressor, compressor_heads, model_seed, ratio, ratios, video_drop, audio_drop, resolution,
           dtype, max_context, opset, weights, block_size, quantize_lm_head, calibration, calibration_data, out,
           overwrite, default_chat_template, batch_graphs):
    """Export ONNX graphs + manifest.json for the per-chunk streaming pipeline, validated and linted."""
    from omnisift_edge.export.stage import ExportConfig, export as run_export
    from omnisift_edge.model.load import ModelSource
    from omnisift_edge.model.preprocess import parse_resolution

    cfg = ExportConfig(out=out, source=ModelSource(path=model_dir, compressor=compressor, seed=model_seed, dtype=dtype,
                                                   selector_heads=compressor_heads,
                                                   default_chat_template=default_chat_template),
                       ratios=_parse_ratios(ratio, ratios), resolution=parse_resolution(resolution), dtype=dtype,
                       max_context=max_context, video_drop=video_drop, audio_drop=audio_drop,
                       overwrite=overwrite, opset=opset, weights=weights, block_size=block_size,
                       quantize_lm_head=quantize_lm_head, calibration=calibration,
                       calibration_data=tuple(calibration_data), batch_graphs=batch_graphs)
    artifact = run_export(cfg, progress=lambda step: click.echo(f"- {step}", err=True))
    for entry in artifact.manifest.ratios:
        click.echo(f"ratio {entry.ratio:g}: video drop {entry.rho_video:.4f}, audio drop {entry.rho_audio:.4f}, "
                   f"{entry.kept_total} tokens kept per chunk ({entry.kept_video} video + {entry.kept_audio} audio), "
                   f"achieved {entry.achieved:.3f}")
    files = artifact.onnx_files
    click.echo(f"exported {len(files)} ONNX graphs ({', '.join(files)}) to {artifact.folder} in {artifact.seconds:.0f}s "
               "(validated in ONNX Runtime, TensorRT lint clean)")


@main.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help='JSONL, one {"video", "audio"?, "question", "answer"} per line; paths relative to the file.')
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Folder for checkpoints, log.jsonl and the final compressor.safetensors (empty, or --resume).")
@model_options(compressor_help="Selector checkpoint to start from (default: the folder's, else a new one).")
@click.option("--ratio", type=float, default=None, help="Overall fraction of audio+video tokens kept, in (0, 1). Default 0.25.")
@click.option("--video-drop", type=float, default=None, help="Explicit per-frame video drop in [0, 1) instead of --ratio.")
@click.option("--audio-drop", type=float, default=None, help="Explicit per-chunk audio drop in (0, 1) (with --video-drop).")
@resolution_option("448x448")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Passes over the good lines.")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, default=1e-5, show_default=True, help="Peak learning rate (the authors': 1e-5).")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.03, show_default=True, help="Linear warmup share, then cosine to 0.")
@click.option("--warmup-steps", type=int, default=None, help="Warmup steps (instead of --warmup-ratio).")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Clips per forward.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Forwards per optimizer step.")
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping; 0 turns it off.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Training randomness: example order, a new selector's init, LoRA init (--model-seed: the model).")
@click.option("--llm", type=click.Choice(["frozen", "full", "lora"]), default="frozen", show_default=True,
              help="The thinker LLM: frozen (selector only), full fine-tuning (the authors'), or LoRA (needs [train]).")
@click.option("--lora-rank", type=int, default=16, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--lora-dropout", type=float, default=0.0, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 on a GPU, fp32 on the CPU.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--on-bad-line", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="skip: report bad lines and train on the rest; stop: report them and train nothing.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its newest checkpoint.")
@click.option("--save-every", type=int, default=500, show_default=True, help="Checkpoint every N steps (0: at the end).")
@click.option("--keep-checkpoints", type=int, default=2, show_default=True, help="Step folders kept.")
@click.option("--max-seconds", type=float, default=None, help="Cut every clip to this many seconds.")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Threads decoding clips ahead of training (0: in the main thread); results do not change.")
@click.option("--selector-hidden", type=int, default=512, show_default=True, help="A new selector's width.")
@click.option("--selector-heads", type=int, default=8, show_default=True, help="A new selector's heads.")
@click.option("--system-prompt", default=None,
              help="The chat's system message for every example (default: Qwen2.5-Omni's; '' for none).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_user_errors(interrupted="interrupted; the newest complete checkpoint in the output folder is kept "
                          "(continue with --resume)")
def train(data, out, model_dir, compressor, compressor_heads, model_seed, ratio, video_drop, audio_drop, resolution, epochs,
          max_steps, lr, weight_decay, warmup_ratio, warmup_steps, batch_size, grad_accum, max_grad_norm, seed, llm,
          lora_rank, lora_alpha, lora_dropout, dtype, device, on_bad_line, resume, save_every, keep_checkpoints,
          max_seconds, workers, selector_hidden, selector_heads, system_prompt, no_progress):
    """Train OmniSIFT's audio selector (and optionally the LLM) with the straight-through estimator."""
    from omnisift_edge.model.load import ModelSource
    from omnisift_edge.train import TrainConfig, train as run_train

    cfg = TrainConfig(data=data, out=out, source=ModelSource(path=model_dir, compressor=compressor, seed=model_seed,
                                                             selector_heads=compressor_heads, device=device),
                      ratio=ratio, video_drop=video_drop, audio_drop=audio_drop, resolution=resolution,
                      epochs=epochs, max_steps=max_steps, lr=lr, weight_decay=weight_decay,
                      warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, batch_size=batch_size,
                      grad_accum=grad_accum, max_grad_norm=max_grad_norm or None, seed=seed, llm=llm,
                      lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, dtype=dtype,
                      on_bad_line=on_bad_line, resume=resume, save_every=save_every,
                      keep_checkpoints=keep_checkpoints, max_seconds=max_seconds, workers=workers,
                      selector_hidden=selector_hidden, selector_heads=selector_heads,
                      **({} if system_prompt is None else {"system_prompt": system_prompt or None}))
    artifact = run_train(cfg, progress=lambda text: click.echo(text, err=True), bar=not no_progress)
    click.echo(artifact.summary())


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@_user_errors
def lint(folder):
    """Check exported graphs against what the TensorRT 10.3 ONNX parser (JetPack 6) accepts."""
    from omnisift_edge.export.lint import format_findings, has_errors, lint_export

    findings = lint_export(folder)
    click.echo(format_findings(findings))
    if has_errors(findings):
        sys.exit(1)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--video", type=click.Path(path_type=Path), required=True, help="Video file with an audio track.")
@click.option("--audio", type=click.Path(path_type=Path), default=None, help="Separate audio file for --video.")
@click.option("--question", "questions", multiple=True, required=True,
              help="A question; repeat for follow-up questions on the same context.")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--target", default=None, callback=built_target,
              help="tensorrt: which built engines (default: the only one built).")
@click.option("--ratio", type=float, default=None,
              help="One of the export's ratios (needed when it has several; printed either way).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="torch: the model folder (default: the one recorded at export).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--max-context", type=int, default=None, help="KV cache limit (default: the export's).")
@click.option("--context-policy", default="error", show_default=True,
              help="error (refuse when the context is full) or sliding (evict the oldest chunks; docs/runtime.md).")
@click.option("--window-seconds", type=float, default=None,
              help="sliding: seconds of media kept (default: what --max-context holds).")
@click.option("--ort-threads", type=click.Choice(THREAD_POLICIES), default=DEFAULT_THREAD_POLICY, show_default=True,
              help="onnxruntime: how the graphs' sessions share the CPU: quiet (own pools, no spinning), spin "
              "(ONNX Runtime's default), shared (one process-wide pool), decoder-spin (only the decoder spins).")
@click.option("--prefill-chunks", type=int, default=None,
              help="Chunks per decoder prefill call (default: the file's all at once; 1: chunk by chunk).")
@_user_errors
def run(folder, video, audio, questions, backend, target, ratio, model_dir, device, max_new_tokens, max_context,
        context_policy, window_seconds, ort_threads, prefill_chunks):
    """Stream a video through an export folder chunk by chunk, then answer questions (streamed)."""
    from omnisift_edge.runtime.session import RuntimeConfig, open_session

    session = open_session(RuntimeConfig(folder=folder, backend=backend, ratio=ratio, device=device,
                                         max_context=max_context, target=target, context_policy=context_policy,
                                         window_seconds=window_seconds, model=model_dir, ort_threads=ort_threads,
                                         prefill_chunks=prefill_chunks))
    reports = session.append_file(video, audio_path=audio)
    kept = sum(r.kept_video + r.kept_audio for r in reports)
    total = sum(r.video_tokens + r.audio_tokens for r in reports)
    click.echo(f"{len(reports)} chunks, kept {kept}/{total} audio+video tokens ({kept / max(1, total):.1%}) "
               f"at ratio {session.ratio:g} [{backend}]", err=True)
    for question in questions:
        click.echo(f"Q: {question}", err=True)
        text = ""
        for piece in session.ask(question, max_new_tokens=max_new_tokens):
            click.echo(piece, nl=False)
            text += piece
        if text:
            click.echo("")
        elif session.last_answer_ids:   # as demo says it: never a silent blank line
            click.echo("(no text: the answer tokens decode to nothing; special tokens or outside the "
                       "tokenizer's vocabulary, as a random-weight model answers)")
        else:
            click.echo("(no answer)")
        click.echo(f"answer ids: {session.last_answer_ids}", err=True)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--engine", "target", default=None, callback=built_target, help="tensorrt: the target whose engines to profile (e.g. orin-agx, rtx); "
              "implies --backend tensorrt.")
@click.option("--ratios", default=None, help="Comma-separated ratios to profile (default: every ratio the export has).")
@click.option("--seconds", type=float, default=30.0, show_default=True, help="Length of the generated clip.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--max-new-tokens", type=click.IntRange(2, 4096), default=16, show_default=True)
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="Folder for profile.json/.md/.png (default: FOLDER/profile).")
@click.option("--overwrite", is_flag=True, help="Replace profile.json/.md/.png there even if a previous `profile` "
              "did not write them.")
@click.option("--context-policy", default="error", show_default=True,
              help="error (the clip must fit the context) or sliding (evict the oldest chunks; docs/runtime.md).")
@click.option("--window-seconds", type=float, default=None,
              help="sliding: seconds of media kept (default: what the export's max context holds).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="torch: the model folder (default: the one recorded at export).")
@click.option("--ort-threads", type=click.Choice(THREAD_POLICIES), default=DEFAULT_THREAD_POLICY, show_default=True,
              help="onnxruntime: how the graphs' sessions share the CPU: quiet (own pools, no spinning), spin "
              "(ONNX Runtime's default), shared (one process-wide pool), decoder-spin (only the decoder spins).")
@_user_errors
def profile(folder, backend, target, ratios, seconds, device, max_new_tokens, out, overwrite, context_policy,
            window_seconds, model_dir, ort_threads):
    """Measure per-stage latency, TTFT, decode speed and memory at each ratio, side by side."""
    from omnisift_edge.profiling.profile import ProfileConfig, markdown, profile as run_profile

    if target is not None:
        backend = "tensorrt"
    cfg = ProfileConfig(folder=folder, backend=backend, ratios=_parse_ratios(None, ratios) if ratios else None,
                        seconds=seconds, device=device, max_new_tokens=max_new_tokens, out=out, target=target,
                        context_policy=context_policy, window_seconds=window_seconds, model=model_dir,
                        overwrite=overwrite, ort_threads=ort_threads)
    report = run_profile(cfg)
    click.echo(markdown(report))
    click.echo(f"wrote {report.files['json']}, {report.files['markdown']}, {report.files['plot']}", err=True)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(_targets()), default="auto", show_default=True,
              help="A GPU preset (full TensorRT, built on that GPU), auto (this GPU), or rtx (TensorRT-RTX: "
              "built ahead of time on any machine for RTX GPUs).")
@click.option("--precision", type=click.Choice(_precisions()), default=None,
              help="Engine precision. Default: fp16; for --target rtx the export's dtype (strongly typed only).")
@click.option("--compute-capability", "compute_capabilities", default=None,
              help="--target rtx: the GPUs to compile for, e.g. 8.6,8.9,12.0 (the default).")
@click.option("--max-context", type=int, default=None, help="Longest KV cache for the decoder profiles (<= the export's).")
@click.option("--workspace", "workspace_gb", type=float, default=None, help="Builder workspace in GB (default: the preset's).")
@click.option("--prefill-chunks", type=int, default=1, show_default=True,
              help="Chunks' kept tokens one decoder prefill call takes (grouped prefill of a file; the profiles and "
              "the memory plan grow with it).")
@click.option("--max-streams", default="1", show_default=True,
              help="Streams a stream pool runs on these engines: the decoder's decode profile takes up to this many rows "
              "per call (the memory plan prints each target's most).")
@click.option("--plan", "plan_only", is_flag=True, help="Print and write the profiles, flags and trtexec/polygraphy "
              "command lines without building (works without TensorRT).")
@_user_errors
def build(folder, target, precision, max_context, workspace_gb, compute_capabilities, prefill_chunks, max_streams,
          plan_only):
    """Build TensorRT engines (one per graph) for a target; --plan works anywhere, --target rtx builds anywhere."""
    from omnisift_edge.engines import BuildConfig, build_engines, plan_build
    from omnisift_edge.paths import check_writable_folder

    check_writable_folder(folder)
    cfg = BuildConfig(folder, target=target, precision=precision, max_context=max_context, workspace_gb=workspace_gb,
                      compute_capabilities=compute_capabilities, prefill_chunks=prefill_chunks, max_streams=max_streams)
    if plan_only:
        click.echo(plan_build(cfg).summary())
        return
    result = build_engines(cfg, progress=lambda step: click.echo(f"- {step}", err=True))
    r = result.report
    click.echo(f"built {len(result.engines)} engines for {result.target.name} ({r['flavour']} {r['tensorrt']}, "
               f"compute capability {r['compute_capability']}) in {result.seconds:.0f}s: "
               + ", ".join(str(p) for p in result.engines.values()))


@main.command("plan")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--weights", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default=None,
              help="Decoder linear layers (default: as --dtype).")
@click.option("--dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Everything else (towers, compressor, KV cache, activations).")
@click.option("--block-size", type=int, default=32, show_default=True, help="int4: weight rows sharing one scale.")
@click.option("--quantize-lm-head", is_flag=True, help="int8/int4: the LM head quantized too.")
@click.option("--max-context", type=int, default=8192, show_default=True, help="Longest KV cache.")
@click.option("--window", type=int, default=None, help="Sliding window: the cache holds this many tokens.")
@click.option("--resolution", default="448x448", show_default=True, help="Frame HxW, multiples of 28.")
@click.option("--target", "targets", multiple=True,
              help="Also predict speed on this target (repeatable): an Orin/RTX/datacenter preset, or cpu "
                   "(this machine, measured once by a probe). docs/engines.md.")
@click.option("--ratio", "ratios", type=float, multiple=True,
              help="With --target: a ratio to predict (repeatable; default 1, 0.5, 0.25; an export: its ratios).")
@click.option("--prefill-chunks", type=int, default=1, show_default=True,
              help="Chunks one decoder prefill call takes (grouped prefill of a file): its activations are counted.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the plan as JSON.")
@_user_errors
def plan(config, weights, dtype, block_size, quantize_lm_head, max_context, window, resolution, targets, ratios,
         prefill_chunks, json_out):
    """Device memory per part for a Qwen2.5-Omni config.json or an export folder (no weights needed), which
    targets it fits, and with --target the predicted stage times, TTFT, decode speed and real-time factor."""
    from omnisift_edge.engines.host_memory import summary as host_summary
    from omnisift_edge.engines.memory import plan_config, write_plan_json
    from omnisift_edge.engines.speed import export_memory, is_export, speed_for_config, speed_for_export
    from omnisift_edge.runtime.demo import parse_resolution

    if is_export(config):
        result = export_memory(config, prefill_chunks=prefill_chunks)
        speeds = [speed_for_export(config, target=t, ratios=ratios or None) for t in targets]
    else:
        size = parse_resolution(resolution)
        result = plan_config(config, dtype=dtype, weights=weights, block_size=block_size,
                             lm_head_quantized=quantize_lm_head, max_context=max_context, window=window, resolution=size,
                             prefill_chunks=prefill_chunks)
        speeds = [speed_for_config(config, target=t, ratios=ratios or (1.0, 0.5, 0.25), resolution=size, dtype=dtype,
                                   weights=weights, block_size=block_size, lm_head_quantized=quantize_lm_head,
                                   max_context=window or max_context) for t in targets]
    click.echo(result.summary())
    for speed in speeds:
        click.echo(speed.summary())
    click.echo(host_summary(result.config.shape, "fp16" if dtype == "fp16" else "fp32", weights))
    if json_out is not None:
        write_plan_json(result, json_out, speeds=speeds)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--target", default=None, callback=built_target, help="Engines of this target (default: the built one).")
@click.option("--record", is_flag=True, help="Record ONNX Runtime reference outputs (on the export machine).")
@_user_errors
def verify(folder, target, record):
    """Compare TensorRT engines with ONNX Runtime outputs recorded at export (two-machine flow)."""
    from omnisift_edge.engines import VerifyConfig, verify_engines
    from omnisift_edge.paths import check_writable_folder

    if record:
        check_writable_folder(folder)
        from omnisift_edge.export.reference import record_reference

        record_reference(folder)
    report = verify_engines(VerifyConfig(folder, target=target, record=record))
    click.echo(report.summary())
    if not report.ok and not (record and not report.graphs):   # recording alone (no engines here) succeeded
        sys.exit(1)


@main.command()
@click.option("--target", type=click.Choice(["auto", "rtx"]), default="auto", show_default=True,
              help="auto: full TensorRT on this GPU; rtx: TensorRT-RTX (needs an RTX-class GPU to run the engines).")
@_user_errors
def selftest(target):
    """Export the embedded default, build engines and verify them, where TensorRT and a GPU exist."""
    from omnisift_edge.selftest import SelfTestConfig, selftest as run_selftest

    result = run_selftest(SelfTestConfig(target=target), progress=lambda text: click.echo(text, err=True))
    if not result.ran:
        raise UsageError(result.summary())          # could not run: one line, exit 1
    click.echo(result.summary())
    if not result.ok:
        sys.exit(1)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Model repository folder to write.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="The runtime inside the Triton model.")
@click.option("--ratio", type=float, default=None, help="One of the export's ratios. Default: the first it lists.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (onnxruntime's CUDA provider).")
@click.option("--max-streams", type=int, default=8, show_default=True, help="Camera sequences served at once.")
@click.option("--idle-timeout", type=float, default=60.0, show_default=True,
              help="Seconds without a request after which a camera's state is freed.")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (processes).")
@click.option("--overwrite", is_flag=True, help="Replace the omnisift model a previous `triton` wrote there "
              "(other models of the repository stay).")
@_user_errors
def triton(folder, out, backend, ratio, device, max_streams, idle_timeout, instances, overwrite):
    """Write a Triton model repository that serves camera streams from an export folder (docs/serving.md)."""
    from omnisift_edge.serving.repository import TritonConfig, triton as write_repository

    repo = write_repository(TritonConfig(export=folder, out=out, backend=backend, ratio=ratio, device=device,
                                         max_streams=max_streams, idle_timeout=idle_timeout, instances=instances,
                                         overwrite=overwrite))
    click.echo(f"wrote model '{repo.model}' ({repo.resolution[0]}x{repo.resolution[1]} frames, ratio {repo.ratio:g}) "
               f"to {repo.folder}")


@main.command("tiny-model")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["full", "thinker", "omnisift"]), default="omnisift", show_default=True,
              help="Folder layout to write: a full Qwen2.5-Omni checkpoint, a thinker-only folder, or OmniSIFT's.")
@click.option("--model-seed", "seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the embedded default model.")
@_user_errors(interrupted="interrupted; nothing was written")
def tiny_model(folder, kind, seed):
    """Write the embedded default model as a checkpoint folder (to see or test the folder formats)."""
    from omnisift_edge.model.tiny import write_tiny_checkpoint
    from omnisift_edge.paths import check_output_dir

    check_output_dir(folder, "FOLDER")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} exists and is not an empty folder; choose a new folder")
    write_tiny_checkpoint(folder, kind, seed)
    click.echo(f"wrote the embedded default (seed {seed}) as a {kind} checkpoint to {folder}")


from omnisift_edge.cli.watch import watch as _watch  # noqa: E402  (its own module: this one stays small)

main.add_command(_watch)
