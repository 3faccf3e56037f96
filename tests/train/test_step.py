"""The training forward against the thinker's own computations, the STE's gradient, what trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnisift_edge.model.load import ModelSource, load_model
from omnisift_edge.train.data import IGNORE, example_from_arrays
from omnisift_edge.train.step import Trainer, compressed_forward, encode

from .tasks import event_clip

RHO = dict(rho_video=0.5, rho_audio=0.6)


def _example(model, seed=0, seconds=4.0, question="Which sound?", answer="B"):
    frames, pcm, _, _ = event_clip(np.random.default_rng(seed), seconds=seconds)
    return example_from_arrays(model, seed, frames, pcm, question, answer, (56, 56))


def _thinker_inputs(model, ex):
    from omnisift_edge.runtime.torch_pipeline import ClipFeatures, whole_clip_inputs

    prefix = int(np.argmax(ex.input_ids == model.spec.tokens.vision_bos))
    suffix = int(np.flatnonzero(ex.input_ids == model.spec.tokens.vision_eos)[0]) + 1
    inputs = whole_clip_inputs(model, ClipFeatures(ex.pixel_values, ex.grid_thw, ex.mel),
                               ex.input_ids[:prefix].tolist(), ex.input_ids[suffix:].tolist())
    assert (inputs["input_ids"][0].numpy() == ex.input_ids).all()
    return inputs


@pytest.fixture
def fresh_model():
    """A model the test may change (Trainer sets requires_grad, LoRA injects modules)."""
    return load_model(ModelSource())


@torch.no_grad()
def test_uncompressed_loss_equals_the_thinkers_own(tiny_model):
    ex = _example(tiny_model)
    reference = tiny_model.thinker(**_thinker_inputs(tiny_model, ex), labels=torch.from_numpy(ex.labels)[None]).loss
    for training in (False, True):    # training: the STE multiplies kept audio by (1 - s) + s
        out = compressed_forward(tiny_model, tiny_model.selector, [encode(tiny_model, ex)], rho_video=0.0,
                                 rho_audio=0.0, training=training)
        assert out.media_kept == out.media_tokens and out.n_tokens == int((ex.labels != IGNORE).sum())
        torch.testing.assert_close(out.loss_sum / out.n_tokens, reference, rtol=0, atol=1e-5)


@torch.no_grad()
def test_compressed_forward_equals_the_inference_prefill(tiny_model):
    from omnisift_edge.runtime.torch_pipeline import CompressionConfig, compressing

    ex = _example(tiny_model, seed=3, seconds=5.0)
    out = compressed_forward(tiny_model, tiny_model.selector, [encode(tiny_model, ex)], training=False, **RHO)
    with compressing(tiny_model, CompressionConfig(**RHO)):
        prefill = tiny_model.thinker(**_thinker_inputs(tiny_model, ex))
    assert torch.equal(tiny_model.last_keep_mask, out.keep_mask)
    torch.testing.assert_close(tiny_model.thinker.lm_head(out.hidden), prefill.logits, rtol=0, atol=1e-5)
    assert 0 < out.media_kept < out.media_tokens


@torch.no_grad()
def test_a_padded_batch_equals_its_examples_one_by_one(tiny_model):
    a = encode(tiny_model, _example(tiny_model, seed=1, seconds=2.0, question="Short?"))
    b = encode(tiny_model, _example(tiny_model, seed=2, seconds=4.0, question="A much longer question here?",
                                    answer="The low one, twice."))
    assert a.example.length != b.example.length
    both = compressed_forward(tiny_model, tiny_model.selector, [a, b], **RHO)
    singles = [compressed_forward(tiny_model, tiny_model.selector, [e], **RHO) for e in (a, b)]
    torch.testing.assert_close(both.loss_sum, singles[0].loss_sum + singles[1].loss_sum, rtol=1e-5, atol=1e-4)
    assert both.n_tokens == singles[0].n_tokens + singles[1].n_tokens
    for row, single in enumerate(singles):
        n = single.keep_mask.shape[1]
        assert torch.equal(both.keep_mask[row, :n], single.keep_mask[0]) and not both.keep_mask[row, n:].any()


def test_the_selector_learns_only_through_the_ste(fresh_model):
    model = fresh_model
    Trainer(model, model.selector, llm="frozen", lr=1e-3, total_steps=1, warmup_steps=0, **RHO)   # freezes
    enc = encode(model, _example(model, seed=4, seconds=4.0))
    captured = {}

    def keep_scores(module, inputs, output):
        output.retain_grad()
        captured["scores"] = output

    handle = model.selector.register_forward_hook(keep_scores)
    try:
        out = compressed_forward(model, model.selector, [enc], **RHO)
        out.compressed.inputs_embeds.retain_grad()
        out.loss_sum.backward()
    finally:
        handle.remove()
    scores = captured["scores"]                                               # [chunks, 50]: full chunks
    grad_x = out.compressed.inputs_embeds.grad[0]                             # dL/dx' on the full layout
    audio = np.flatnonzero(enc.example.input_ids == model.spec.tokens.audio)
    kept = out.keep_mask[0, audio]
    expected = (grad_x[audio] * enc.audio).sum(-1) * kept                     # <dL/dx_i, x_i>, 0 when dropped
    torch.testing.assert_close(scores.grad.reshape(-1), expected, rtol=1e-4, atol=1e-9)
    assert expected.abs().max() > 0 and (expected[~kept] == 0).all()
    assert all(p.grad is not None for p in model.selector.parameters())
    assert all(p.grad is None for p in model.thinker.parameters())           # encoders and LLM frozen
    # without the STE no path from the (trainable) selector reaches the loss: the hard top-k has none
    out = compressed_forward(model, model.selector, [enc], training=False, **RHO)
    assert not out.loss_sum.requires_grad


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    now = {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items()}   # LoRA wraps layers
    return {k for k, v in now.items() if k not in before or not torch.equal(before[k], v)}


@pytest.mark.parametrize("llm", ["frozen", "full", "lora"])
def test_what_each_llm_mode_trains(fresh_model, llm):
    if llm == "lora":
        pytest.importorskip("peft", reason="peft is not installed (pip install 'omnisift-edge[train]')")
    model = fresh_model
    thinker_before, selector_before = _snapshot(model.thinker), _snapshot(model.selector)
    trainer = Trainer(model, model.selector, llm=llm, lr=1e-2, total_steps=2, warmup_steps=0,
                      lora={"rank": 4, "alpha": 8}, **RHO)
    stats = trainer.step([[_example(model, seed=5)], [_example(model, seed=6, seconds=2.0)]])
    assert stats.step == 1 and stats.lr == 1e-2 and stats.tokens == 4 and np.isfinite(stats.loss)
    assert _changed(selector_before, model.selector) == set(selector_before)
    changed = _changed(thinker_before, model.thinker)
    assert not any(k.startswith(("visual.", "audio_tower.")) for k in changed)   # the encoders never train
    state = trainer.llm_state()
    if llm == "frozen":
        assert not changed and state == {}
    elif llm == "full":
        assert any(k.startswith("model.layers.") for k in changed) and "lm_head.weight" in changed
        llm_names = {k for k in model.thinker.state_dict() if k.startswith(("model.", "lm_head."))}
        assert set(state) == {f"thinker.{k}" for k in llm_names}
    else:
        lora = {k for k in model.thinker.state_dict() if "lora_" in k}
        assert lora and changed <= {k.replace(".base_layer.", ".") for k in lora}
        assert any(".lora_B." in k for k in changed)
        assert not any("audio_tower" in k or "visual" in k for k in lora)       # adapters on the LLM only
        assert all(k.startswith("base_model.model.model.layers.") for k in state)


def test_full_llm_state_saves_with_tied_embeddings(fresh_model, tmp_path):
    from safetensors.torch import load_file, save_file

    thinker = fresh_model.thinker
    thinker.lm_head.weight = thinker.model.embed_tokens.weight          # as a tied checkpoint (3B) loads
    state = Trainer(fresh_model, fresh_model.selector, llm="full", lr=1e-3, total_steps=1, warmup_steps=0,
                    **RHO).llm_state()
    save_file(state, str(tmp_path / "llm.safetensors"))                  # refuses tensors sharing memory
    loaded = load_file(str(tmp_path / "llm.safetensors"))
    assert torch.equal(loaded["thinker.lm_head.weight"], loaded["thinker.model.embed_tokens.weight"])
