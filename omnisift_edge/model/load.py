"""Load a Qwen2.5-Omni thinker, its tokenizer and an OmniSIFT selector: the model stage's entry.

Three folder kinds are recognised by their `config.json`:
- a full `Qwen2_5OmniForConditionalGeneration` checkpoint (model_type `qwen2_5_omni`): the thinker
  is read from the `thinker.` weights; talker and token2wav weights are never read;
- the OmniSIFT-7B checkpoint: the same, plus the selector under `thinker.compressor.`;
- a thinker-only folder (model_type `qwen2_5_omni_thinker`), optionally with `compressor.*`.
With no folder, the embedded tiny default is built from a seed. Weights are copied tensor by
tensor from memory-mapped safetensors into a model allocated without initialisation, so loading a
7B checkpoint needs about its size in memory, not twice.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnisift_edge.errors import UsageError, require
from omnisift_edge.model.spec import OmniSpec

DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSource:
    """Where the thinker and the selector come from."""

    path: Path | None = None        # a local model folder; None -> the embedded tiny default
    compressor: Path | None = None  # a selector checkpoint overriding the one in the folder
    seed: int = 0                   # the embedded default's seed
    dtype: str = "fp32"
    selector_heads: int | None = None   # selector attention heads; None: the folder's config, else 8
    device: str = "cpu"             # "cpu", "cuda" or "cuda:N"
    default_chat_template: bool = False   # a folder without a chat template: use Qwen2.5-Omni's (else refused)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        if self.compressor is not None:
            object.__setattr__(self, "compressor", Path(self.compressor))
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise UsageError(f"--device must be cpu, cuda or cuda:N (got {self.device!r})")

    @property
    def is_default(self) -> bool:
        return self.path is None


@dataclass
class OmniModel:
    """The model stage's artifact: torch modules plus what the layout code needs."""

    thinker: Any                    # transformers Qwen2_5OmniThinkerForConditionalGeneration, eval
    selector: Any | None            # omnisift_edge.compress.selector.AudioSelector, or None
    tokenizer: Any
    spec: OmniSpec
    source: ModelSource
    identity: dict = field(default_factory=dict)   # name, config hash: what the manifest records

    @property
    def device(self):
        return next(self.thinker.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.thinker.config.text_config.hidden_size


def load_model(source: ModelSource, map_dir: Path | None = None) -> OmniModel:
    """Load the thinker, tokenizer and selector that `source` names. map_dir (a folder's model on the CPU):
    hold the thinker's parameters memory-mapped from the checkpoint, or from a copy converted to the
    dtype written once into map_dir and unlinked (model/mapped.py), instead of copied: clean file-backed
    pages, not anonymous memory (the export does this, issue 21)."""
    torch = require("torch")
    transformers = require("transformers")
    transformers.logging.set_verbosity_error()   # rope-config chatter is not the user's business
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[source.dtype]
    if source.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {source.device} but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of torch")
    if source.is_default:
        model = _load_default(source)
    else:
        model = _load_folder(source, dtype, map_dir if source.device == "cpu" else None)
    if source.compressor is not None:
        from omnisift_edge.compress.selector import load_selector_state, recorded_heads

        heads = (source.selector_heads or recorded_heads(source.compressor)
                 or (_folder_selector_heads(source.path) if source.path else 8))
        model.selector = load_selector_state(source.compressor, heads=heads)
    if model.selector is not None:
        _check_selector_width(model)
        model.selector = _to_device_and_dtype(model.selector, source.device, dtype).eval()
    model.thinker = _to_device_and_dtype(model.thinker, source.device, dtype).eval()
    return model


def _to_device_and_dtype(module, device: str, dtype):
    """Move to `device` and cast the floating-point parameters only.

    Buffers (rotary inv_freq tables, the audio tower's sinusoids) stay float32, as transformers'
    `from_pretrained(dtype=...)` keeps them: in bf16 the rotary angles at position 5000 would be
    off by up to half a radian.
    """
    module.to(device)
    for param in module.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return module


def _load_default(source: ModelSource) -> OmniModel:
    from omnisift_edge.model.tiny import build_tiny_selector, build_tiny_thinker, tiny_thinker_config_dict
    from omnisift_edge.model.tokenizer import load_tokenizer, write_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(write_tiny_tokenizer(Path(tmp)))
    config = tiny_thinker_config_dict()
    return OmniModel(
        thinker=build_tiny_thinker(source.seed),
        selector=build_tiny_selector(source.seed),
        tokenizer=tokenizer,
        spec=OmniSpec.from_thinker_config(config),
        source=source,
        identity={"name": f"tiny-default-seed{source.seed}", "config_sha256": _config_hash(config)},
    )


def read_folder_config(folder: Path) -> tuple[dict, str]:
    """(thinker config dict, weight-name prefix of the thinker) of a model folder."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--model {folder} is a file, not a model folder; pass --model DIR, the folder holding "
                         "config.json and the weights (or leave --model out for the embedded default)")
    if not folder.is_dir():
        raise UsageError(f"model folder {folder} does not exist; pass --model DIR with a local "
                         "Qwen2.5-Omni checkpoint, or leave --model out for the embedded default")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{folder} has no config.json; it is not a Hugging Face model folder "
                         "(copy the whole Qwen2.5-Omni checkpoint folder)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{config_file} is not valid JSON ({exc}); re-copy it from the checkpoint") from None
    if not isinstance(config, dict):
        raise UsageError(f"{config_file} holds a JSON {type(config).__name__}, not a config object; re-copy it")
    model_type = config.get("model_type")
    if model_type == "qwen2_5_omni":
        if "thinker_config" not in config:
            raise UsageError(f"{config_file} has model_type qwen2_5_omni but no thinker_config; re-copy it")
        return config["thinker_config"], "thinker."
    if model_type == "qwen2_5_omni_thinker":
        return config, ""
    raise UsageError(f"{folder} holds a {model_type!r} model; omnisift-edge needs Qwen2.5-Omni "
                     "(model_type qwen2_5_omni or qwen2_5_omni_thinker)")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder, checked against the shard index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as exc:
            raise UsageError(f"{index} is corrupt ({exc}); re-copy it from the checkpoint") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise UsageError(f"checkpoint {folder} is incomplete: {len(missing)} of {len(names)} shards "
                             f"are missing (first: {missing[0]}); finish copying the folder")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UsageError(f"no *.safetensors weights in {folder}; omnisift-edge reads safetensors "
                         "checkpoints (convert .bin files with transformers' save_pretrained)")
    return files


def _load_folder(source: ModelSource, dtype, map_dir: Path | None = None) -> OmniModel:
    """A model folder: its config and tokenizer checked first, the thinker built empty in `dtype`, then
    filled from the safetensors files (the selector's tensors, if any, set aside for the selector)."""
    from omnisift_edge.model.tokenizer import load_tokenizer

    folder = source.path
    thinker_cfg_dict, prefix = read_folder_config(folder)
    files = weight_files(folder)
    tokenizer = load_tokenizer(folder, default_template=source.default_chat_template)   # before the weights
    thinker = _empty_thinker(folder, thinker_cfg_dict, dtype)
    compressor_state = _fill_weights(thinker, files, folder, prefix, map_dir)
    selector = None
    if compressor_state and source.compressor is None:
        from omnisift_edge.compress.selector import load_selector_state

        heads = source.selector_heads or _folder_selector_heads(folder)
        selector = load_selector_state(compressor_state, heads=heads)
    return OmniModel(
        thinker=thinker,
        selector=selector,
        tokenizer=tokenizer,
        spec=OmniSpec.from_thinker_config(thinker_cfg_dict),
        source=source,
        identity={"name": folder.name, "config_sha256": _config_hash(thinker_cfg_dict)},
    )


def _empty_thinker(folder: Path, thinker_cfg_dict: dict, dtype):
    """The thinker of `thinker_cfg_dict`, allocated in `dtype` without initializing its weights."""
    torch = require("torch")
    transformers = require("transformers")
    from transformers.modeling_utils import no_init_weights

    try:
        config = transformers.Qwen2_5OmniThinkerConfig(**{k: v for k, v in thinker_cfg_dict.items()
                                                          if k != "model_type"})
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageError(f"{folder}/config.json has an invalid thinker config ({exc}); re-copy it") from None
    config._attn_implementation = "sdpa"
    old_default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)   # allocate in the target dtype: no fp32 detour for 7B
        with no_init_weights():
            return transformers.Qwen2_5OmniThinkerForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(old_default)


def _fill_weights(thinker, files: list[Path], folder: Path, prefix: str, map_dir: Path | None = None) -> dict[str, Any]:
    """Copy (or, with `map_dir`, map) every thinker tensor of `files` (keys under `prefix`) into `thinker`,
    tie or refuse what is missing; returns the selector's tensors (under `prefix + "compressor."`), names
    without the prefix."""
    params = dict(thinker.named_parameters())
    params.update(dict(thinker.named_buffers()))
    loaded: set[str] = set()
    compressor_state: dict[str, Any] = {}
    for file in files:
        if map_dir is not None:
            loaded |= _map_weight_file(file, dict(thinker.named_parameters()), prefix, map_dir)
        loaded |= _read_weight_file(file, {k: v for k, v in params.items() if k not in loaded}, prefix,
                                    compressor_state)
    if "lm_head.weight" not in loaded and thinker.config.text_config.tie_word_embeddings:
        thinker.tie_weights()
        loaded.add("lm_head.weight")
    missing = sorted(set(dict(thinker.named_parameters())) - loaded)
    if missing:
        raise UsageError(f"checkpoint {folder} is missing {len(missing)} thinker weights (first: "
                         f"{prefix}{missing[0]}); the folder is partial or not a Qwen2.5-Omni checkpoint")
    return compressor_state


def _read_weight_file(file: Path, params: dict, prefix: str, compressor_state: dict) -> set[str]:
    """Copy one safetensors file's thinker tensors into `params` (shapes checked); returns their names.
    Talker / token2wav tensors are never read; the selector's go to `compressor_state`."""
    torch = require("torch")
    safetensors = require("safetensors")

    compressor_prefix = prefix + "compressor."
    loaded = set()
    try:
        handle = safetensors.safe_open(str(file), framework="pt")
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise UsageError(f"cannot read {file} ({exc}); the file is corrupt or partial, re-copy it") from None
    with handle:
        for key in handle.keys():
            if key.startswith(compressor_prefix):
                compressor_state[key[len(compressor_prefix):]] = handle.get_tensor(key)
                continue
            name = key[len(prefix):] if key.startswith(prefix) else None
            target = params.get(name) if name is not None else None
            if target is None:
                continue
            tensor = handle.get_tensor(key)
            if tuple(tensor.shape) != tuple(target.shape):
                raise UsageError(f"{file.name}: {key} has shape {tuple(tensor.shape)} but config.json "
                                 f"says {tuple(target.shape)}; config and weights do not match")
            with torch.no_grad():
                target.copy_(tensor)
            loaded.add(name)
    return loaded


def _map_weight_file(file: Path, params: dict, prefix: str, map_dir: Path) -> set[str]:
    """Point the parameters of `params` that `file` holds at mapped views of it (model/mapped.py); their names."""
    from omnisift_edge.model.mapped import MappedWeights, read_header

    names = {key: key[len(prefix):] for key in read_header(file)[0] if key.startswith(prefix)}
    names = {key: name for key, name in names.items() if name in params and params[name].is_floating_point()}
    first = next(iter(params.values()))
    mapped = MappedWeights(file, first.dtype, names.__contains__, map_dir)
    for key, name in names.items():
        tensor = mapped.tensor(key)
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise UsageError(f"{file.name}: {key} has shape {tuple(tensor.shape)} but config.json "
                             f"says {tuple(params[name].shape)}; config and weights do not match")
        params[name].data = tensor
    return set(names.values())


def _folder_selector_heads(folder: Path) -> int:
    """Selector heads recorded in config.json's `omnisift_compressor` section (ours), else 8.

    The head count is the one selector setting the weights do not determine; the authors' 7B
    selector uses 8.
    """
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    section = config.get("omnisift_compressor") or config.get("thinker_config", {}).get("omnisift_compressor") or {}
    heads = section.get("heads", 8)
    if not isinstance(heads, int) or heads < 1:
        raise UsageError(f"{folder}/config.json: omnisift_compressor.heads must be a positive int (got {heads!r})")
    return heads


def _check_selector_width(model: OmniModel) -> None:
    width = model.selector.cfg.d_model
    if width != model.hidden_size:
        raise UsageError(f"the compressor was trained for width {width} but the model's LLM width is "
                         f"{model.hidden_size}; use the compressor trained for this model "
                         "(OmniSIFT-7B's is 3584 wide; train one for 3B with omnisift-edge train)")


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
