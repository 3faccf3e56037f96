"""model/shape.py: bare-config parsing and the analytic parameter count vs the meta-device model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.model.shape import ThinkerShape, param_counts

CONFIGS = Path(__file__).parent / "configs"


def _load(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def _meta_counts(thinker_config: dict) -> dict[str, int]:
    """Parameters per part of the transformers thinker built on the meta device (no memory, no weights)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2_5OmniThinkerConfig(**thinker_config)
    with torch.device("meta"):
        model = transformers.Qwen2_5OmniThinkerForConditionalGeneration(config)
    if config.text_config.tie_word_embeddings:
        model.tie_weights()

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    layers = model.model.layers
    linear = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    head = 0 if model.lm_head.weight is model.model.embed_tokens.weight else model.lm_head.weight.numel()
    return {"vision_encoder": count(model.visual), "audio_encoder": count(model.audio_tower),
            "decoder_linear": linear, "decoder_other": count(model.model) - linear - model.model.embed_tokens.weight.numel(),
            "lm_head": head, "embed_tokens": model.model.embed_tokens.weight.numel()}


@pytest.mark.parametrize("name", ["qwen2_5_omni_7b.json", "qwen2_5_omni_3b.json"])
def test_analytic_count_equals_the_meta_model(name):
    config = _load(name)
    assert param_counts(ThinkerShape.from_config(config)) == _meta_counts(config["thinker_config"])


def test_the_embedded_default_counts_too(tiny_model):
    config = tiny_model.thinker.config.to_dict()
    counts = param_counts(ThinkerShape.from_config(config))
    assert sum(counts.values()) == sum(p.numel() for p in tiny_model.thinker.parameters())


def test_7b_is_about_9b_parameters():
    counts = param_counts(ThinkerShape.from_config(_load("qwen2_5_omni_7b.json")))
    assert 8.5e9 < sum(counts.values()) < 9.2e9          # thinker: 7.6B LLM + ~0.67B vision + ~0.64B audio
    assert 6.4e9 < counts["decoder_linear"] < 6.6e9      # what int4 quantizes


@pytest.mark.parametrize("config,match", [
    ({"model_type": "llama"}, "is a llama, not Qwen2.5-Omni"),
    ({"hidden_size": 4}, "config without model_type"),
    ([1, 2], "not a JSON object"),
])
def test_not_qwen2_5_omni_is_one_line(config, match):
    with pytest.raises(UsageError, match=match):
        ThinkerShape.from_config(config)
