"""One training step: frozen encoders -> embeddings -> OmniSIFT with the STE -> decoder on kept tokens -> CE.

`Trainer` owns what trains (the selector; the thinker LLM with llm=full; LoRA adapters with
llm=lora), the AdamW optimizer and the warmup + cosine schedule. `Trainer.step(micro_batches)` is
one optimizer step over `grad_accum` micro-batches of `Example`s; `train()` calls it on examples
decoded from media, and the learning test calls it on examples whose encoder outputs were
computed once (`encode`: the encoders are frozen, so that changes nothing but time).

The forward is the thinker's own computation written out so the compression sits before the first
decoder layer and the labels are filtered with the embeddings: text embeddings from the (possibly
trainable) embedding table, encoder outputs scattered at the placeholders, `compress_sequence(...,
training=True)` (kept audio scaled by `ste = (hard - s).detach() + s`), every row filtered with
the keep mask and right-padded, `thinker.model` + `lm_head` on the kept tokens, shifted
cross-entropy over the answer tokens. The selector gets gradient only through the STE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from omnisift_edge.errors import UsageError
from omnisift_edge.train.data import IGNORE, Example

LORA_TARGETS = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"   # the LLM only


@dataclass(frozen=True, eq=False)
class Encoded:
    """An example with its frozen encoders' outputs."""

    example: Example
    video: torch.Tensor        # [n_video_tokens, D]
    audio: torch.Tensor        # [n_audio_tokens, D]


@dataclass(frozen=True, eq=False)
class ForwardOutput:
    loss_sum: torch.Tensor     # summed next-token CE over the answer tokens (float32 scalar)
    n_tokens: int              # answer tokens the loss covers
    keep_mask: torch.Tensor    # [B, L] bool over the padded full layouts
    media_tokens: int          # audio + video tokens before compression
    media_kept: int            # ... and after
    compressed: object         # the SequenceCompression (STE-scaled embeddings), for tests
    hidden: torch.Tensor       # [B, K, D] decoder output over the kept tokens (right-padded)


@dataclass(frozen=True)
class StepStats:
    step: int                  # optimizer steps done after this one
    loss: float                # mean CE per answer token over the step
    kept_ratio: float          # kept audio+video tokens / all of them
    lr: float                  # learning rate the step used
    tokens: int                # answer tokens the loss covered
    grad_norm: float           # before clipping
    media_tokens: int = 0      # audio + video tokens before compression, over the step
    media_kept: int = 0


@torch.no_grad()
def encode(model, example: Example) -> Encoded:
    """Run the frozen vision and audio towers on one example's features."""
    thinker = model.thinker
    dev, dtype = model.device, next(thinker.parameters()).dtype
    grid = torch.tensor([list(example.grid_thw)], device=dev)
    video = thinker.get_video_features(torch.from_numpy(example.pixel_values).to(dev, dtype), grid)
    mel = torch.from_numpy(example.mel).to(dev, dtype)[None]                          # [1, n_mels, n]
    audio = thinker.get_audio_features(mel, torch.ones(1, mel.shape[-1], dtype=torch.long, device=dev))
    tokens = model.spec.tokens
    ids = example.input_ids
    if video.shape[0] != int((ids == tokens.video).sum()) or audio.shape[0] != int((ids == tokens.audio).sum()):
        raise UsageError(f"line {example.line}: the encoders gave {video.shape[0]} video / {audio.shape[0]} audio "
                         "tokens but the layout has other counts; the model's config does not match its towers")
    return Encoded(example, video, audio)


def compressed_forward(model, selector, batch: list[Encoded], *, rho_video: float, rho_audio: float,
                       training: bool = True) -> ForwardOutput:
    """Loss of `batch` on the compressed sequences (see the module docstring)."""
    from omnisift_edge.compress.sequence import compress_sequence

    thinker, tokens, dev = model.thinker, model.spec.tokens, model.device
    B, L = len(batch), max(e.example.length for e in batch)
    ids = torch.full((B, L), tokens.endoftext, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    positions = torch.zeros((3, B, L), dtype=torch.long)
    valid = torch.zeros((B, L), dtype=torch.bool)
    for b, e in enumerate(batch):                      # right padding: text, position 0, no loss, masked
        n = e.example.length
        ids[b, :n] = torch.from_numpy(e.example.input_ids)
        labels[b, :n] = torch.from_numpy(e.example.labels)
        positions[:, b, :n] = torch.from_numpy(e.example.position_ids)
        valid[b, :n] = True
    ids, labels, positions, valid = ids.to(dev), labels.to(dev), positions.to(dev), valid.to(dev)
    embeds = thinker.get_input_embeddings()(ids)                                     # [B, L, D]
    video = torch.cat([e.video for e in batch]).to(embeds.dtype)
    audio = torch.cat([e.audio for e in batch]).to(embeds.dtype)
    embeds = embeds.masked_scatter((ids == tokens.video).unsqueeze(-1), video)
    embeds = embeds.masked_scatter((ids == tokens.audio).unsqueeze(-1), audio)
    comp = compress_sequence(embeds, ids, positions, selector, rho_video=rho_video, rho_audio=rho_audio,
                             audio_token_id=tokens.audio, video_token_id=tokens.video, training=training)
    keep = comp.keep_mask & valid                                                    # [B, L]
    counts = keep.sum(dim=1).tolist()
    K = max(counts)
    rows = [torch.nonzero(keep[b]).squeeze(-1) for b in range(B)]                    # kept positions per row

    def gather(x: torch.Tensor, fill, dim: int = 1):                                 # [.., B, L, ..] -> [.., B, K, ..]
        out = []
        for b, r in enumerate(rows):
            row = x.select(dim - 1, b).index_select(dim - 1, r)
            pad = K - r.numel()
            if pad:
                shape = list(row.shape)
                shape[dim - 1] = pad
                row = torch.cat([row, torch.full(shape, fill, dtype=row.dtype, device=row.device)], dim - 1)
            out.append(row)
        return torch.stack(out, dim=dim - 1)

    kept_embeds = gather(comp.inputs_embeds, 0.0)                                    # [B, K, D]
    kept_labels = gather(labels, IGNORE)                                             # [B, K]
    kept_mask = gather(valid.long(), 0)                                              # [B, K]
    kept_pos = gather(positions, 0, dim=2)                                           # [3, B, K]
    out = thinker.model(inputs_embeds=kept_embeds, attention_mask=kept_mask, position_ids=kept_pos,
                        use_cache=False)
    hidden = out.last_hidden_state                                                   # [B, K, D]
    target = kept_labels[:, 1:]                                                      # shift: j predicts j + 1
    scored = target != IGNORE                                                        # [B, K - 1]
    logits = thinker.lm_head(hidden[:, :-1][scored]).float()                         # [n, V]: answer rows only
    loss_sum = F.cross_entropy(logits, target[scored], reduction="sum")
    media = (ids == tokens.video) | (ids == tokens.audio)
    return ForwardOutput(loss_sum=loss_sum, n_tokens=int(scored.sum()), keep_mask=keep,
                         media_tokens=int(media.sum()), media_kept=int((media & keep).sum()),
                         compressed=comp, hidden=hidden)


def lr_lambda(total: int, warmup: int):
    """Linear warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class Trainer:
    """The trainable modules, AdamW and the schedule; `step` does one optimizer step."""

    def __init__(self, model, selector, *, llm: str, lr: float, total_steps: int, warmup_steps: int,
                 rho_video: float, rho_audio: float, weight_decay: float = 0.0,
                 max_grad_norm: float | None = 1.0, lora: dict | None = None):
        self.model, self.selector, self.llm = model, selector, llm
        self.rho_video, self.rho_audio = rho_video, rho_audio
        self.max_grad_norm = max_grad_norm
        self.lora_config = None
        thinker = model.thinker
        thinker.requires_grad_(False)            # vision tower, audio tower, LLM: frozen unless below
        thinker.eval()                           # the towers stay in eval mode; a trained LLM trains
        if llm != "frozen":
            thinker.model.train()
        if llm == "full":
            thinker.model.requires_grad_(True)
            thinker.lm_head.requires_grad_(True)
        elif llm == "lora":
            self.lora_config = _inject_lora(thinker, lora or {})
        selector.requires_grad_(True)
        selector.train()
        self.params = list(selector.parameters()) + [p for p in thinker.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(total_steps, warmup_steps))
        self.steps_done = 0

    def encoded(self, example: Example | Encoded) -> Encoded:
        return example if isinstance(example, Encoded) else encode(self.model, example)

    def step(self, micro_batches: list[list[Example | Encoded]]) -> StepStats:
        """One optimizer step over the micro-batches; the loss is the mean over all their answer tokens."""
        examples = [e.example if isinstance(e, Encoded) else e for mb in micro_batches for e in mb]
        total = sum(int((x.labels[1:] != IGNORE).sum()) for x in examples)          # answer tokens scored
        if total == 0:
            raise UsageError("no answer tokens in this step; every example needs a non-empty answer")
        lr = self.optimizer.param_groups[0]["lr"]
        loss_total, media, kept = 0.0, 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for mb in micro_batches:
            out = compressed_forward(self.model, self.selector, [self.encoded(e) for e in mb],
                                     rho_video=self.rho_video, rho_audio=self.rho_audio, training=True)
            (out.loss_sum / total).backward()
            loss_total += float(out.loss_sum.detach())
            media, kept = media + out.media_tokens, kept + out.media_kept
        if not math.isfinite(loss_total):
            raise UsageError(f"the loss is {loss_total} at step {self.steps_done + 1}; lower --lr or use fp32")
        limit = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], limit)
        self.optimizer.step()
        self.scheduler.step()
        self.steps_done += 1
        return StepStats(step=self.steps_done, loss=loss_total / total, kept_ratio=kept / max(1, media), lr=lr,
                         tokens=total, grad_norm=float(norm), media_tokens=media, media_kept=kept)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps_done = int(state["steps_done"])

    def llm_state(self) -> dict[str, torch.Tensor]:
        """Trained LLM tensors under the checkpoint's names: `thinker.model.*`, `thinker.lm_head.*`
        (llm=full) or the LoRA adapter's `base_model.model.*` (llm=lora, peft's file format)."""
        thinker = self.model.thinker
        if self.llm == "full":
            out, seen = {}, set()
            for k, v in thinker.state_dict().items():
                if k.startswith(("model.", "lm_head.")):      # tied lm_head/embeddings: safetensors wants copies
                    out[f"thinker.{k}"] = v.detach().clone() if v.data_ptr() in seen else v.detach().contiguous()
                    seen.add(v.data_ptr())
            return out
        if self.llm == "lora":
            from peft import get_peft_model_state_dict

            return {f"base_model.model.{k}": v.detach().contiguous()
                    for k, v in get_peft_model_state_dict(thinker).items()}
        return {}

    def load_llm_state(self, state: dict[str, torch.Tensor]) -> None:
        thinker = self.model.thinker
        if self.llm == "full":
            missing = thinker.load_state_dict({k[len("thinker."):]: v for k, v in state.items()}, strict=False)
            if missing.unexpected_keys:
                raise UsageError(f"the checkpoint's LLM weights do not fit this model: {missing.unexpected_keys[:3]}")
        elif self.llm == "lora":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(thinker, {k[len("base_model.model."):]: v for k, v in state.items()})


def _inject_lora(thinker, options: dict):
    from omnisift_edge.errors import require

    peft = require("peft", extra="train")
    config = peft.LoraConfig(r=options.get("rank", 16), lora_alpha=options.get("alpha", 32),
                             lora_dropout=options.get("dropout", 0.0), target_modules=LORA_TARGETS)
    peft.inject_adapter_in_model(config, thinker)
    for name, param in thinker.named_parameters():     # adapters in fp32 over a bf16 base, as peft's autocast
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    return config


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
