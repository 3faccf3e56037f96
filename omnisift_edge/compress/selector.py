"""VGAS's audio selector: the 4.85M parameters OmniSIFT adds, batched, with the checkpoint's names.

Same layers and parameter names as the authors' `TransformerAudioSelector` (so the released
checkpoint's `thinker.compressor.*` tensors load unchanged), but `forward` takes a batch of chunks
with a validity mask over the video context instead of one unbatched chunk: every chunk of a clip
is scored in one call. Per row it computes what the reference computes for that chunk alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omnisift_edge.errors import UsageError

PREFIXES = ("thinker.compressor.", "compressor.")   # where checkpoints keep the selector


@dataclass(frozen=True)
class SelectorConfig:
    """Widths of the selector. Defaults: Qwen2.5-Omni-7B (D=3584) and the authors' H=512, 8 heads."""

    d_model: int = 3584   # LLM width D (2048 for the 3B thinker)
    hidden: int = 512     # selector width H
    heads: int = 8        # cross-attention heads; H must be divisible by it
    layers: int = 1       # the reference builds exactly one cross-attention layer

    def __post_init__(self):
        for name in ("d_model", "hidden", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"SelectorConfig.{name} must be a positive int; got {value!r}")
        if self.layers != 1:
            raise UsageError(f"only layers=1 is supported (the reference selector has one layer); got {self.layers}")
        if self.hidden % 2:
            raise UsageError(f"SelectorConfig.hidden must be even (the score head halves it); got {self.hidden}")
        if self.hidden % self.heads:
            raise UsageError(f"SelectorConfig.hidden ({self.hidden}) must be divisible by heads ({self.heads})")


class AudioSelector(nn.Module):
    """Scores audio tokens by cross-attention to the surviving video tokens of their chunk."""

    def __init__(self, cfg: SelectorConfig = SelectorConfig()):
        super().__init__()
        self.cfg = cfg
        d, h = cfg.d_model, cfg.hidden
        self.v_proj = nn.Linear(d, h)
        self.a_proj = nn.Linear(d, h)
        self.v_norm = nn.LayerNorm(h)
        self.a_norm = nn.LayerNorm(h)
        self.post_attn_norm = nn.LayerNorm(h)
        self.cross_attn = nn.MultiheadAttention(embed_dim=h, num_heads=cfg.heads, batch_first=True)
        self.score_head = nn.Sequential(nn.Linear(h, h // 2), nn.SiLU(), nn.Linear(h // 2, 1))

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, video_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores in (0, 1), [B, Na], for `video` [B, Nv, D], `audio` [B, Na, D].

        `video_valid` (bool [B, Nv]) marks real context tokens; the others are padding and get no
        attention. A row with no valid token at all attends to all of its (padding) tokens instead
        of producing NaN: its scores are meaningless and the caller must ignore them.
        """
        v = self.v_norm(self.v_proj(video))                          # [B, Nv, H]
        a = self.a_norm(self.a_proj(audio))                          # [B, Na, H]
        ignore = None
        if video_valid is not None:
            ignore = ~video_valid & video_valid.any(dim=-1, keepdim=True)   # [B, Nv]; all-invalid rows: none ignored
        x, _ = self.cross_attn(a, v, v, key_padding_mask=ignore, need_weights=False)   # [B, Na, H]
        x = self.post_attn_norm(x + a)                               # [B, Na, H]
        return torch.sigmoid(self.score_head(x)[..., 0])            # [B, Na] (indexing, not squeeze: no If when traced)


def fp32_selector(selector: nn.Module) -> nn.Module:
    """The selector in float32: itself when it is already, else an fp32 copy (the caller's stays as is).

    Selections score in fp32 at every model dtype: fp16/bf16 scores round to exact ties that each
    backend's rounding of its inputs breaks its own way, so kept sets would differ (issue 13.1).
    """
    if all(p.dtype == torch.float32 for p in selector.parameters()):
        return selector
    import copy

    return copy.deepcopy(selector).float()


def load_selector_state(
    source: Mapping[str, torch.Tensor] | str | os.PathLike,
    cfg: SelectorConfig | None = None,
    *,
    heads: int | None = None,
) -> AudioSelector:
    """An `AudioSelector` holding the weights of `source`, in eval mode.

    `source` is a state dict or a `.safetensors` / `.pt` / `.bin` file: the selector's own tensors,
    or a larger checkpoint in which they sit under `thinker.compressor.` or `compressor.` (the
    rest is ignored). The widths are read from the tensor shapes; the head count cannot be, so it
    is `heads`, else `cfg.heads`, else 8. A given `cfg` must agree with the shapes.
    """
    state = _strip_prefix(_read(source))
    inferred = _infer_config(state, heads if heads is not None else (cfg.heads if cfg else 8))
    if cfg is not None and (cfg.d_model, cfg.hidden) != (inferred.d_model, inferred.hidden):
        raise UsageError(
            f"the selector weights are d_model={inferred.d_model}, hidden={inferred.hidden} but the config says "
            f"d_model={cfg.d_model}, hidden={cfg.hidden}; pass a matching config (a {inferred.d_model}-wide "
            "selector belongs to a thinker of that width) or leave cfg out to infer it"
        )
    selector = AudioSelector(inferred)
    expected = selector.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UsageError(
            f"the selector state does not match OmniSIFT's TransformerAudioSelector: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}; pass the compressor's own tensors or a checkpoint that holds them "
            f"under one of {PREFIXES}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UsageError(
                f"selector tensor {name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)} "
                f"for d_model={inferred.d_model}, hidden={inferred.hidden}; the checkpoint is not a consistent selector"
            )
    selector.load_state_dict(state)   # copies into fp32 parameters; a uniform checkpoint dtype is kept below
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        selector.to(dtypes.pop())
    return selector.eval()


def selector_record(selector: AudioSelector, origin: str) -> dict:
    """What an export's manifest says about its selector: where it came from, its shape and a hash
    of its weights (so an app can tell which trained selector an export carries)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(selector.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    cfg = selector.cfg
    return {"from": origin, "d_model": cfg.d_model, "hidden": cfg.hidden, "heads": cfg.heads,
            "weights_sha256": digest.hexdigest()}


def recorded_heads(path: str | os.PathLike) -> int | None:
    """The head count saved with a selector file by `omnisift-edge train`, or None.

    The weights do not determine it; train writes it into the safetensors metadata and into
    `compressor.json` beside the file, so `--compressor ckpt/compressor.safetensors` needs no
    `--compressor-heads`.
    """
    path = Path(path)
    heads = None
    sidecar = path.with_name("compressor.json")
    if path.suffix == ".safetensors" and path.is_file():
        from omnisift_edge.errors import require

        try:
            with require("safetensors").safe_open(str(path), framework="pt") as handle:
                heads = (handle.metadata() or {}).get("heads")
        except Exception:   # unreadable here: _read reports it with the fix
            return None
    if heads is None and sidecar.is_file():
        try:
            heads = json.loads(sidecar.read_text(encoding="utf-8")).get("heads")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise UsageError(f"{sidecar} is not the JSON object `omnisift-edge train` writes; fix or delete it, "
                             "or pass --compressor-heads") from None
    if heads is None:
        return None
    try:
        heads = int(heads)
    except (TypeError, ValueError):
        heads = 0
    if heads < 1:
        raise UsageError(f"the head count recorded with {path} is not a positive int; pass --compressor-heads")
    return heads


def _read(source) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise UsageError(f"selector source must be a state dict or a file path; got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"selector file {path} does not exist; pass the compressor's .safetensors/.pt/.bin file")
    if path.suffix == ".safetensors":
        from omnisift_edge.errors import require

        try:
            return dict(require("safetensors.torch").load_file(str(path)))
        except Exception as exc:   # safetensors raises its own error types for truncated/corrupt files
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"cannot read {path} ({first}); the file is corrupt or partial, copy it again") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:   # a pickle with code in it, or not a torch file at all
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"cannot read {path} as a tensor state dict ({first}); "
                             "save it with torch.save(state_dict)") from None
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise UsageError(f"{path} holds a {type(obj).__name__}, not a state dict; save it with torch.save(state_dict)")
        return dict(obj)
    raise UsageError(f"unknown selector file type {path.suffix!r}; use .safetensors, .pt or .bin")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in PREFIXES:
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return state


def _infer_config(state: dict[str, torch.Tensor], heads: int) -> SelectorConfig:
    weight = state.get("v_proj.weight")
    if weight is None or weight.dim() != 2:
        raise UsageError(
            "no v_proj.weight [hidden, d_model] in the selector state; pass the compressor's tensors "
            f"(optionally under one of {PREFIXES})"
        )
    hidden, d_model = (int(n) for n in weight.shape)
    a_weight = state.get("a_proj.weight")
    if a_weight is not None and tuple(a_weight.shape) != (hidden, d_model):
        raise UsageError(
            f"a_proj.weight is {tuple(a_weight.shape)} but v_proj.weight is {(hidden, d_model)}; "
            "both project the LLM width to the selector width, so the checkpoint is inconsistent"
        )
    return SelectorConfig(d_model=d_model, hidden=hidden, heads=heads)
