"""Optimum's side of the decoder export: the thinker LLM as an exportable module, its OnnxConfig.

Optimum (optimum-onnx 0.1.0) knows `qwen2` but not `qwen2_5_omni_thinker`, and even its `qwen2`
config would not fit: our decoder takes `inputs_embeds` (the compressed multimodal tokens, not
token ids), 3-row TMRoPE `position_ids` [3, B, S] and returns the logits of the last position
only. So we register our own `OnnxConfig` for model type `qwen2_5_omni_thinker`, task
`text-generation-with-past`, whose inputs and outputs come from `tensors.decoder_graph` (the one
declaration of tensor names). The module Optimum exports is `ThinkerDecoder`, a thin wrapper
around the stock `thinker.model` + `thinker.lm_head` with flat tensors in and out; it forks no
modeling code. Optimum's `ModelPatcher` does the export-time patching (vmap-free masks, a
traceable `DynamicLayer.update`, no packed-sequence detection) while `torch.onnx.export` runs.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from optimum.exporters.onnx.config import TextDecoderWithPositionIdsOnnxConfig
from optimum.exporters.tasks import TasksManager
from optimum.utils import DummyInputGenerator, NormalizedTextConfigWithGQA
from packaging import version
from torch import nn

from omnisift_edge.artifact.tensors import DYNAMIC_AXES, GraphSpec, decoder_graph
from omnisift_edge.export.decoder.checks import gapped_positions, head_dim, text_config  # noqa: F401 (re-exported)

MODEL_TYPE = "qwen2_5_omni_thinker"    # transformers' model_type of the thinker config
TASK = "text-generation-with-past"     # one graph: prefill (past may be empty) and decode
# tensor names by role, read from the declaration; Optimum asks for the past as one collection
# named by the prefix of `past_key_values.{i}.key` and flattens outputs named `present` likewise
_ONE_LAYER = decoder_graph(1)
EMBEDS, POSITIONS, MASK = (t.name for t in _ONE_LAYER.inputs[:3])
PAST = _ONE_LAYER.inputs[3].name.split(".")[0]
LOGITS, PRESENT = _ONE_LAYER.outputs[0].name, _ONE_LAYER.outputs[1].name.split(".")[0]
# dummy shapes for tracing: all different, and different from every fixed width of the tiny model
DUMMY_SHAPES = {"batch_size": 2, "sequence_length": 5, "past_sequence_length": 7}


class ThinkerDecoder(nn.Module):
    """`thinker.model` + `thinker.lm_head` with flat tensors: what `decoder.onnx` computes.

    inputs_embeds [B, S, D], position_ids [3, B, S] (TMRoPE rows; kept tokens keep their original
    positions, so they are NOT derived from the cache length), attention_mask [B, P + S] int64,
    past_key_values: per layer (key, value) [B, kv_heads, P, head_dim] (P may be 0), or a
    `DynamicCache` (Optimum's patcher converts the tuples before calling us).
    Returns {"logits": [B, 1, V] of the last position, "present": per layer (key, value)
    [B, kv_heads, P + S, head_dim]}.
    """

    def __init__(self, thinker):
        super().__init__()
        self.model = thinker.model          # Qwen2_5OmniThinkerTextModel (shared, not copied)
        self.lm_head = thinker.lm_head
        self.config = thinker.config        # model_type qwen2_5_omni_thinker: Optimum's lookup key

    def forward(self, inputs_embeds, position_ids, attention_mask, past_key_values):
        from transformers import DynamicCache

        cache = past_key_values
        if not isinstance(cache, DynamicCache):
            cache = DynamicCache(config=text_config(self.config))
            for i, (key, value) in enumerate(past_key_values):      # [B, kv, P, hd] each
                cache.update(key, value, i)
        out = self.model(inputs_embeds=inputs_embeds, position_ids=position_ids,
                         attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                         return_dict=True)
        logits = self.lm_head(out.last_hidden_state[:, -1:])                  # [B, 1, V]
        present = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        return OrderedDict([(LOGITS, logits), (PRESENT, present)])          # present: [B, kv, P+S, hd]


# Optimum orders and names the traced inputs by the forward's parameter names: they must be ours
if list(inspect.signature(ThinkerDecoder.forward).parameters)[1:] != [EMBEDS, POSITIONS, MASK, PAST]:
    raise RuntimeError("ThinkerDecoder.forward's parameters drifted from tensors.decoder_graph")


def _axes(graph: GraphSpec, names: Sequence[str]) -> dict[str, dict[int, str]]:
    """Optimum's `{name: {axis index: axis name}}` for the dynamic axes of `names`."""
    specs = {t.name: t for t in (*graph.inputs, *graph.outputs)}
    return OrderedDict((n, {i: a for i, a in enumerate(specs[n].axes) if a in DYNAMIC_AXES}) for n in names)


class ThinkerDecoderInputGenerator(DummyInputGenerator):
    """Seeded dummy inputs: embeddings, 3-row positions with gaps (as after compression), a mask of
    past + new tokens, and past KV [B, kv, P, hd] per layer (P = 0 gives an empty cache)."""

    SUPPORTED_INPUT_NAMES = (EMBEDS, POSITIONS, MASK, PAST)

    def __init__(self, task: str, normalized_config, batch_size: int = DUMMY_SHAPES["batch_size"],
                 sequence_length: int = DUMMY_SHAPES["sequence_length"],
                 past_sequence_length: int = DUMMY_SHAPES["past_sequence_length"], seed: int = 0, **kwargs):
        self.task = task
        self.batch_size, self.sequence_length = batch_size, sequence_length
        self.past_sequence_length = past_sequence_length
        self.hidden = normalized_config.hidden_size
        self.num_layers = normalized_config.num_layers
        self.kv_heads = normalized_config.num_key_value_heads
        self.head_dim = normalized_config.hidden_size // normalized_config.num_attention_heads
        if normalized_config.has_attribute("head_dim"):
            self.head_dim = normalized_config.head_dim
        self.seed = seed

    def _rng(self, name: str) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64([self.seed, sum(map(ord, name))]))

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64",
                 float_dtype: str = "fp32"):
        b, s, p = self.batch_size, self.sequence_length, self.past_sequence_length
        fdt = {"fp32": np.float32, "fp16": np.float16}[float_dtype]
        rng = self._rng(input_name)
        if input_name == EMBEDS:
            value = rng.standard_normal((b, s, self.hidden)).astype(fdt)                     # [B, S, D]
        elif input_name == POSITIONS:
            value = gapped_positions(b, s, start=p, rng=rng)                                 # [3, B, S]
        elif input_name == MASK:
            value = np.ones((b, p + s), dtype=np.int64)                                      # [B, P+S]
        elif input_name == PAST:
            shape = (b, self.kv_heads, p, self.head_dim)                                     # [B, kv, P, hd]
            value = [tuple(rng.standard_normal(shape).astype(fdt) for _ in range(2))
                     for _ in range(self.num_layers)]
        else:
            raise ValueError(f"no dummy input named {input_name!r}")
        if framework == "np":
            return value
        if isinstance(value, list):
            return [tuple(torch.from_numpy(t) for t in kv) for kv in value]
        return torch.from_numpy(value)


class ThinkerDecoderOnnxConfig(TextDecoderWithPositionIdsOnnxConfig):
    """OnnxConfig of `ThinkerDecoder`: names and axes from `decoder_graph`, past always an input."""

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfigWithGQA.with_args(
        vocab_size="text_config.vocab_size", hidden_size="text_config.hidden_size",
        num_layers="text_config.num_hidden_layers", num_attention_heads="text_config.num_attention_heads",
        num_key_value_heads="text_config.num_key_value_heads", head_dim="text_config.head_dim",
        allow_new=True)
    DUMMY_INPUT_GENERATOR_CLASSES = (ThinkerDecoderInputGenerator,)
    DUMMY_PKV_GENERATOR_CLASS = ThinkerDecoderInputGenerator
    PAD_ATTENTION_MASK_TO_PAST = False     # our generator already makes the mask [B, P + S]
    DEFAULT_ONNX_OPSET = 17
    MIN_TRANSFORMERS_VERSION = version.parse("4.57.0")   # Qwen2.5-Omni with DynamicLayer caches, as tested
    ATOL_FOR_VALIDATION = 1e-4

    def __init__(self, config, task: str = "text-generation", int_dtype: str = "int64", float_dtype: str = "fp32",
                 use_past: bool = True, use_past_in_inputs: bool | None = None, preprocessors=None):
        # one graph for prefill and decode: past KV is always an input (empty for a first prefill)
        super().__init__(config, task=task, int_dtype=int_dtype, float_dtype=float_dtype, use_past=True,
                         use_past_in_inputs=True, preprocessors=preprocessors)
        self.graph = decoder_graph(text_config(config).num_hidden_layers)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return _axes(self.graph, self.graph.input_names)

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return _axes(self.graph, self.graph.output_names)

    @property
    def values_override(self):
        return None    # leave the user's model config alone (use_cache is passed explicitly)

    def overwrite_shape_and_generate_input(self, dummy_input_gen, input_name, framework, input_shapes):
        # Optimum would force sequence_length 1 for position ids with a past; ours stay consistent
        return dummy_input_gen.generate(input_name, framework=framework, int_dtype=self.int_dtype,
                                        float_dtype=self.float_dtype)


def register() -> None:
    """Register `ThinkerDecoderOnnxConfig` with Optimum's TasksManager (idempotent)."""
    TasksManager.create_register("onnx", overwrite_existing=True)(MODEL_TYPE, TASK)(ThinkerDecoderOnnxConfig)


def onnx_config_for(thinker, dtype: str = "fp32") -> ThinkerDecoderOnnxConfig:
    """Our OnnxConfig for `thinker`, looked up through Optimum's TasksManager as Optimum does."""
    constructor = TasksManager.get_exporter_config_constructor(
        "onnx", model_type=MODEL_TYPE, task=TASK, library_name="transformers")
    return constructor(thinker.config, float_dtype=dtype)


register()
