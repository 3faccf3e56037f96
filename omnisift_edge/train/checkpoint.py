"""Checkpoints of a training run, written so that an interruption never leaves a half checkpoint.

Layout of the output folder:

    out/
      train_config.json          what a resumed run must match (TrainConfig.fingerprint)
      log.jsonl                  one line per optimizer step: step, loss, kept_ratio, lr, ...
      bad_lines.jsonl            lines not trained on, with their line numbers and reasons
      latest.json                {"step": N, "folder": "step-00000N"}: the newest complete checkpoint
      step-00000N/
        compressor.safetensors   the selector as `thinker.compressor.*` (the OmniSIFT checkpoint's names)
        compressor.json          widths and heads (heads are not in the weights)
        llm.safetensors          llm=full: `thinker.model.*`, `thinker.lm_head.*`
        adapter/                 llm=lora: peft's adapter_model.safetensors + adapter_config.json
        state.pt                 optimizer, scheduler, step, RNG states: what resume needs
      compressor.safetensors     the final selector (and compressor.json, llm.safetensors / adapter/)

A step folder is written under a hidden temporary name and swapped into place (`atomic.staged_folder`,
synced before `latest.json` can name it); `latest.json`
and the final files are written to a temporary file and `os.replace`d. So `latest.json` always
names a complete folder, and a crash at any point leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from omnisift_edge.atomic import atomic_path, remove_folder, staged_folder
from omnisift_edge.errors import UsageError, require

COMPRESSOR_PREFIX = "thinker.compressor."


def step_folder_name(step: int) -> str:
    return f"step-{step:06d}"


def selector_tensors(selector) -> dict[str, torch.Tensor]:
    """The selector's tensors under the released checkpoint's names (`thinker.compressor.*`)."""
    return {COMPRESSOR_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in selector.state_dict().items()}


def selector_info(selector, rho_video: float, rho_audio: float, step: int) -> dict:
    cfg = selector.cfg
    return {"d_model": cfg.d_model, "hidden": cfg.hidden, "heads": cfg.heads, "layers": cfg.layers,
            "rho_video": rho_video, "rho_audio": rho_audio, "step": step,
            "prefix": COMPRESSOR_PREFIX.rstrip(".")}


def write_atomic(path: Path, write) -> None:
    """`write(tmp_path)` then `os.replace(tmp_path, path)`: readers see the old file or the new one."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_json(path: Path, obj) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def _write_weights(folder: Path, selector, info: dict, llm_state: dict, llm: str, lora_config) -> None:
    save_file = require("safetensors.torch").save_file
    meta = {"format": "pt", **{k: str(v) for k, v in info.items()}}
    save_file(selector_tensors(selector), str(folder / "compressor.safetensors"), metadata=meta)
    (folder / "compressor.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if llm == "full":
        save_file({k: v.to("cpu") for k, v in llm_state.items()}, str(folder / "llm.safetensors"),
                  metadata={"format": "pt"})
    elif llm == "lora":
        adapter = folder / "adapter"
        adapter.mkdir()
        save_file({k: v.to("cpu") for k, v in llm_state.items()}, str(adapter / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        lora_config.save_pretrained(str(adapter))


def save_checkpoint(out: Path, step: int, *, selector, info: dict, llm: str, llm_state: dict, lora_config,
                    trainer_state: dict, keep: int) -> Path:
    """Write `out/step-N/` atomically, point `latest.json` at it, drop all but the newest `keep`."""
    final = out / step_folder_name(step)
    # a step folder already there was left by a crash after its swap, before latest.json named it: ours
    with staged_folder(final, owned=lambda folder: True) as staging:
        _write_weights(staging, selector, info, llm_state, llm, lora_config)
        rng = {"torch": torch.get_rng_state()}
        torch.save({**trainer_state, "rng": rng, "step": step}, staging / "state.pt")
    write_json(out / "latest.json", {"step": step, "folder": final.name})
    older = sorted(n for n, _ in step_folders(out) if n < step)
    for n in older[:max(0, len(older) - (keep - 1))]:    # keep this one and the newest keep - 1 before it
        remove_folder(out / step_folder_name(n))
    return final


def step_folders(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `step-N` folder in `out`."""
    found = []
    for path in out.glob("step-*"):
        number = path.name[len("step-"):]
        if path.is_dir() and number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def publish_final(out: Path, folder: Path, llm: str) -> tuple[Path, Path | None]:
    """Copy a checkpoint's weights to the top of `out` (each file replaced atomically)."""
    for name in ("compressor.safetensors", "compressor.json") + (("llm.safetensors",) if llm == "full" else ()):
        write_atomic(out / name, lambda p, src=folder / name: shutil.copyfile(src, p))
    extra = out / "llm.safetensors" if llm == "full" else None
    if llm == "lora":
        target = out / "adapter"
        with staged_folder(target, owned=lambda adapter: True) as staging:     # the run's own adapter/
            shutil.copytree(folder / "adapter", staging, dirs_exist_ok=True)
        extra = target
    return out / "compressor.safetensors", extra


def latest_checkpoint(out: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint in `out`, or None."""
    pointer = out / "latest.json"
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text(encoding="utf-8"))
        step = int(info["step"])
        if info["folder"] != step_folder_name(step):
            raise ValueError(f"folder {info['folder']!r} is not {step_folder_name(step)!r}")
        folder = out / info["folder"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{pointer} is unreadable ({exc}); delete it to start over, or restore it") from None
    if not (folder / "state.pt").is_file() or not (folder / "compressor.safetensors").is_file():
        raise UsageError(f"{pointer} names {folder}, which is incomplete; restore it or delete latest.json")
    return step, folder


def load_checkpoint(folder: Path, llm: str) -> tuple[dict, dict, dict]:
    """(selector state without prefix, LLM state, trainer state) of a checkpoint folder."""
    load_file = require("safetensors.torch").load_file
    files = {"full": "llm.safetensors", "lora": "adapter/adapter_model.safetensors"}
    try:
        selector = {k[len(COMPRESSOR_PREFIX):]: v
                    for k, v in load_file(str(folder / "compressor.safetensors")).items()}
        llm_state = load_file(str(folder / files[llm])) if llm in files else {}
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:     # safetensors' and torch's own errors for truncated or corrupt files
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"the checkpoint {folder} is corrupt or incomplete ({first}); start a new run in another "
                         "folder, or point latest.json at an older step folder") from None
    return selector, llm_state, state

