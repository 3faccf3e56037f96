"""`train(TrainConfig) -> TrainArtifact`: scan the data, load the model, run the steps, checkpoint.

The example order is fixed by the seed: epoch e visits the good lines in the permutation
`default_rng([seed, e])`, and optimizer step s takes the `global_batch` examples at positions
[s * global_batch, (s + 1) * global_batch) of that endless sequence. So a resumed run continues
with exactly the examples the interrupted one would have seen, and on the CPU it reproduces the
uninterrupted run's weights bit for bit (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.train.config import BadLine, TrainArtifact, TrainConfig


def scan(cfg: TrainConfig, feeder, records, bad, progress: Callable[[str], None], bar: bool):
    """(good records, bad lines): every checked line (`read_records`) also decoded and preprocessed once."""
    from tqdm import tqdm

    good, bad = [], list(bad)
    checked = feeder.check(records)
    for record, reason in tqdm(checked, total=len(records), desc="checking data", unit="clip",
                               disable=not bar, file=sys.stderr):
        if reason is None:
            good.append(record)
        else:
            bad.append(BadLine(record.line, reason))
    bad.sort(key=lambda b: b.line)
    if bad:
        shown = "; ".join(str(b) for b in bad[:10]) + (f"; ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        if cfg.on_bad_line == "stop":
            raise UsageError(f"{len(bad)} bad line(s) in {cfg.data}: {shown}. Fix them, or pass "
                             "--on-bad-line skip to train on the other lines")
        progress(f"skipping {len(bad)} bad line(s) of {cfg.data}: {shown}")
    if not good:
        raise UsageError(f"no usable lines in {cfg.data} ({len(bad)} bad); each line needs a video with an audio "
                         'track: {"video": "clip.mp4", "question": "...", "answer": "..."}')
    return good, bad


def _prepare_out(cfg: TrainConfig):
    """The newest checkpoint to resume from (or None), after checking the folder and the settings."""
    from omnisift_edge.train.checkpoint import latest_checkpoint, remove_folder, step_folders

    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; choose another -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out} ({exc.strerror or exc}); choose another -o") from None
    latest = latest_checkpoint(out)
    if not cfg.resume and any(out.iterdir()):
        raise UsageError(f"{out} is not empty; pass --resume to continue the run in it, or choose an empty folder")
    for stale in (*out.glob(".step-*.partial-*"), *out.glob(".step-*.old*"), *out.glob(".adapter.partial-*"),
                  *out.glob(".adapter.old*")):
        shutil.rmtree(stale, ignore_errors=True)       # a killed run's half-written folders: never named by latest.json
    for step, folder in step_folders(out):
        if latest is None or step > latest[0]:          # written by a run killed before latest.json named it
            remove_folder(folder)
    if cfg.resume and (latest is not None or (out / "train_config.json").is_file()):   # every resume is checked
        saved = _read_json(out / "train_config.json", {})
        now = json.loads(json.dumps(cfg.fingerprint()))
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff and set(diff) <= {"max_steps", "epochs"}:
            raise UsageError(f"--resume: the run in {out} used {', '.join(f'{k}={saved.get(k)!r}' for k in diff)}; "
                             "its learning-rate schedule depends on them: resume with those, or extend a finished run by "
                             f"starting a new one from its result with --compressor {out / 'compressor.safetensors'} -o NEW_FOLDER")
        if diff:
            raise UsageError(f"--resume: this run's settings differ from the checkpoint's in {', '.join(diff)} "
                             f"(e.g. {diff[0]}: {saved.get(diff[0])!r} there, {now.get(diff[0])!r} now); "
                             "use the same settings and data, or another -o")
    return latest


def _read_json(path: Path, missing):
    """A JSON object the run wrote earlier; `missing` when there is none; a UsageError when corrupt."""
    if not path.is_file():
        return missing
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is corrupt ({exc}); resume needs it as the run wrote it: restore it, or start "
                         "a new run in another folder") from None
    if not isinstance(value, type(missing)):
        raise UsageError(f"{path} holds a {type(value).__name__}, not what the run wrote; restore it, or start "
                         "a new run in another folder")
    return value


def _new_selector(cfg: TrainConfig, d_model: int):
    import torch

    from omnisift_edge.compress.selector import AudioSelector, SelectorConfig

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return AudioSelector(SelectorConfig(d_model=d_model, hidden=cfg.selector_hidden, heads=cfg.selector_heads))


def example_positions(step: int, global_batch: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, index into the good lines) of the examples optimizer step `step` (0-based) trains on."""
    cache: dict[int, np.ndarray] = {}
    out = []
    for p in range(step * global_batch, (step + 1) * global_batch):
        epoch = p // n
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append((epoch, int(cache[epoch][p % n])))
    return out


def train(cfg: TrainConfig, *, progress: Callable[[str], None] = print, bar: bool = True,
          on_step: Callable | None = None) -> TrainArtifact:
    """Train OmniSIFT's selector on `cfg.data`; see docs/train.md. `on_step(stats)` runs after each step."""
    from omnisift_edge.train.data import prepare_example, read_records

    started = time.perf_counter()
    records, bad = read_records(cfg.data)              # bad data fails before a folder is made or a model loads
    if cfg.llm == "lora":
        require("peft", extra="train")                 # before anything is written (issue 13.16)
    latest = _prepare_out(cfg)
    if latest is None and cfg.resume:
        progress(f"--resume: no checkpoint in {cfg.out} yet; starting a new run from step 0")
    from omnisift_edge.model.load import load_model
    from omnisift_edge.train.feeder import Feeder
    from omnisift_edge.train.step import seed_everything

    seed_everything(cfg.seed)
    model = load_model(dataclasses.replace(cfg.source, dtype=cfg.torch_dtype_name))
    feeder = Feeder(lambda record: prepare_example(model, record, cfg.resolution, max_seconds=cfg.max_seconds,
                                                   system=cfg.system_prompt), cfg.workers)
    try:
        return _train(cfg, model, feeder, records, bad, latest, started, progress, bar, on_step)
    finally:
        feeder.close()


def _train(cfg, model, feeder, records, bad, latest, started, progress, bar, on_step) -> TrainArtifact:
    """`train` once the model is loaded: check the data, build the trainer, resume, run the steps."""
    from omnisift_edge.train import checkpoint as ckpt

    good, bad = scan(cfg, feeder, records, bad, progress, bar)
    run = _build_run(cfg, model, good)
    _check_good_lines(cfg, good, resuming=latest is not None)   # the first writes: every option was usable
    with _writing(cfg.out, "bad_lines.jsonl"):
        _write_bad_lines(cfg.out, bad)
    resumed_from = _resume(cfg, run, latest, progress) if latest is not None else None
    if latest is None:
        for name in ("log.jsonl", "latest.json"):
            (cfg.out / name).unlink(missing_ok=True)
    with _writing(cfg.out, "train_config.json"):
        ckpt.write_json(cfg.out / "train_config.json", cfg.fingerprint())
    totals = _Totals(folder=latest[1] if latest else None)
    _run_steps(cfg, run, feeder, good, bad, totals, progress, bar, on_step)
    with _writing(cfg.out, "the final weights", saving=True):
        _write_bad_lines(cfg.out, bad)
        compressor, extra = ckpt.publish_final(cfg.out, totals.folder, cfg.llm)
    return TrainArtifact(out=cfg.out, compressor=compressor, llm_weights=extra, log=cfg.out / "log.jsonl",
                         steps=run.trainer.steps_done, good_lines=len(good),
                         bad_lines=sorted(bad, key=lambda b: b.line), rho_video=run.rho_video,
                         rho_audio=run.rho_audio, first_loss=totals.first_loss, last_loss=totals.last_loss,
                         kept_ratio=totals.kept / totals.media if totals.media else None, resumed_from=resumed_from,
                         seconds=time.perf_counter() - started)


@dataclasses.dataclass
class _Run:
    """What the steps work with: the trainer, the selector it trains, the drop rates, the step count."""

    trainer: object
    selector: object
    rho_video: float
    rho_audio: float
    total: int


@dataclasses.dataclass
class _Totals:
    """Running sums over the steps, and the newest checkpoint folder (what the final weights copy)."""

    folder: Path | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    media: int = 0
    kept: int = 0


def _build_run(cfg: TrainConfig, model, good: list) -> _Run:
    """The selector (the model's, or a new one) in fp32, the drop rates, the step count and the Trainer."""
    import torch

    from omnisift_edge.compress.ratio import drops_for_ratio
    from omnisift_edge.train.step import Trainer

    selector = model.selector if model.selector is not None else _new_selector(cfg, model.hidden_size)
    selector = selector.to(model.device, torch.float32)        # the selector trains in fp32 (small, new)
    if cfg.ratio is not None:
        rho_video, rho_audio = drops_for_ratio(cfg.ratio, model.spec.tokens_per_frame(*cfg.resolution))
    else:
        rho_video, rho_audio = cfg.video_drop, cfg.audio_drop
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(good) / cfg.global_batch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total)
    trainer = Trainer(model, selector, llm=cfg.llm, lr=cfg.lr, total_steps=total, warmup_steps=min(warmup, total - 1),
                      rho_video=rho_video, rho_audio=rho_audio, weight_decay=cfg.weight_decay,
                      max_grad_norm=cfg.max_grad_norm,
                      lora={"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout})
    return _Run(trainer, selector, rho_video, rho_audio, total)


def _resume(cfg: TrainConfig, run: _Run, latest: tuple[int, Path], progress) -> int:
    """Load the newest checkpoint into the selector, LLM, trainer and RNG; cut the log back to its step."""
    import torch

    from omnisift_edge.train import checkpoint as ckpt

    step0, folder = latest
    sel_state, llm_state, state = ckpt.load_checkpoint(folder, cfg.llm)
    run.selector.load_state_dict(sel_state)
    if llm_state:
        run.trainer.load_llm_state(llm_state)
    run.trainer.load_state_dict(state)
    torch.set_rng_state(state["rng"]["torch"])
    progress(f"resuming from {folder} (step {step0} of {run.total})")
    if step0 >= run.total:
        progress(f"this run already finished; to train longer, start a new run from its result: "
                 f"--compressor {cfg.out / 'compressor.safetensors'} -o NEW_FOLDER")
    log_path = cfg.out / "log.jsonl"
    kept_lines = _log_lines_until(log_path, step0)
    with _writing(cfg.out, "log.jsonl"):
        ckpt.write_atomic(log_path, lambda p: p.write_text("".join(kept_lines), encoding="utf-8"))
    return step0


def _step_examples(cfg: TrainConfig, feeder, records: list, bad: list, step: int, progress) -> list:
    """The decoded examples of `step`; a line that passed the check but fails now is skipped (listed once
    in `bad`) or, with --on-bad-line stop, one line naming it."""
    examples = []
    for record, example, exc in feeder.take(step, records):
        if exc is None:
            examples.append(example)
            continue
        # passed the check, failed now: the file changed under us
        if cfg.on_bad_line == "stop":
            raise UsageError(f"line {record.line} failed during training ({exc}); it passed the "
                             "check before training, so the file changed") from None
        if all(b.line != record.line for b in bad):          # listed once, skipped every time
            bad.append(BadLine(record.line, f"during training: {exc}"))
        progress(f"skipping line {record.line} in step {step + 1}: {exc}")
    return examples


def _run_steps(cfg: TrainConfig, run: _Run, feeder, good: list, bad: list, totals: _Totals, progress, bar,
               on_step) -> None:
    """The optimizer steps from where the trainer stands to `run.total`: one log line each, checkpoints."""
    from tqdm import tqdm

    def records_of(step: int) -> list:
        return [good[i] for _, i in example_positions(step, cfg.global_batch, len(good), cfg.seed)]

    trainer = run.trainer
    steps_bar = tqdm(total=run.total, initial=trainer.steps_done, desc="train", unit="step", disable=not bar,
                     file=sys.stderr)
    with open(cfg.out / "log.jsonl", "a", encoding="utf-8") as log:
        while trainer.steps_done < run.total:
            step = trainer.steps_done
            examples = _step_examples(cfg, feeder, records_of(step), bad, step, progress)
            if step + 1 < run.total:
                feeder.queue(step + 1, records_of(step + 1))      # decodes while this step trains
            micro = [examples[k:k + cfg.batch_size] for k in range(0, len(examples), cfg.batch_size)]
            if not micro:
                raise UsageError(f"every example of step {step + 1} failed to load; check the data files")
            t0 = time.perf_counter()
            stats = trainer.step(micro)
            totals.first_loss = stats.loss if totals.first_loss is None else totals.first_loss
            totals.last_loss = stats.loss
            totals.media, totals.kept = totals.media + stats.media_tokens, totals.kept + stats.media_kept
            entry = {"step": stats.step, "epoch": round(((step + 1) * cfg.global_batch) / len(good), 4),
                     "loss": stats.loss, "kept_ratio": stats.kept_ratio, "lr": stats.lr, "tokens": stats.tokens,
                     "grad_norm": stats.grad_norm, "seconds": round(time.perf_counter() - t0, 4)}
            with _writing(cfg.out, "log.jsonl"):
                log.write(json.dumps(entry) + "\n")
                log.flush()
            steps_bar.update(1)
            steps_bar.set_postfix(loss=f"{stats.loss:.4f}", kept=f"{stats.kept_ratio:.3f}", lr=f"{stats.lr:.2e}")
            if (cfg.save_every and stats.step % cfg.save_every == 0) or stats.step == run.total:
                totals.folder = _save(cfg, trainer, run.selector, run.rho_video, run.rho_audio, stats.step)
            if on_step is not None:
                on_step(stats)
    steps_bar.close()


def _save(cfg, trainer, selector, rho_video, rho_audio, step) -> Path:
    from omnisift_edge.train import checkpoint as ckpt

    with _writing(cfg.out, f"the step {step} checkpoint", saving=True):
        return ckpt.save_checkpoint(cfg.out, step, selector=selector,
                                    info=ckpt.selector_info(selector, rho_video, rho_audio, step), llm=cfg.llm,
                                    llm_state=trainer.llm_state(), lora_config=trainer.lora_config,
                                    trainer_state=trainer.state_dict(), keep=cfg.keep_checkpoints)


def _save_errors() -> tuple[type[BaseException], ...]:
    """What a full disk or a lost permission raises while saving: OSError from Python, RuntimeError
    from torch.save's writer, SafetensorError from safetensors (the saved objects themselves are ours)."""
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


@contextlib.contextmanager
def _writing(out: Path, what: str, *, saving: bool = False):
    """Turn a failed write into one line naming the fix; the checkpoints already written stay whole.
    `saving`: also the serializers' own error types (`_save_errors`)."""
    try:
        yield
    except _save_errors() if saving else (OSError,) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"writing {what} in {out} failed ({first}); the newest complete checkpoint there is "
                         "intact: free space or fix permissions, then rerun with --resume") from None


def _check_good_lines(cfg: TrainConfig, good: list, *, resuming: bool) -> None:
    """A resumed run must see the same usable lines, or its steps would take other examples."""
    from omnisift_edge.train.checkpoint import write_json

    now = [record.line for record in good]
    path = cfg.out / "good_lines.json"
    if not resuming:
        with _writing(cfg.out, "good_lines.json"):
            write_json(path, now)
        return
    saved = _read_json(path, [])
    if saved and saved != now:
        lost, gained = sorted(set(saved) - set(now)), sorted(set(now) - set(saved))
        raise UsageError(f"--resume: the usable lines of {cfg.data} changed since the run started (no longer "
                         f"usable: {lost[:5] or 'none'}; newly usable: {gained[:5] or 'none'}), so its steps would "
                         "train on other examples; restore the media files, or start a new run in another folder")


def _log_lines_until(path: Path, step: int) -> list[str]:
    """The log's lines up to `step`; a line cut short by a killed run is dropped."""
    kept = []
    for line in (path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
                 if path.is_file() else []):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    return kept


def _write_bad_lines(out: Path, bad: list[BadLine]) -> None:
    from omnisift_edge.train.checkpoint import write_atomic

    text = "".join(json.dumps({"line": b.line, "reason": b.reason}) + "\n" for b in sorted(bad, key=lambda b: b.line))
    write_atomic(out / "bad_lines.jsonl", lambda p: p.write_text(text, encoding="utf-8"))
