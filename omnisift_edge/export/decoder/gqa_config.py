"""Optimum's side of the `decoder_gqa` export: the OnnxConfig of `model.inplace_kv.InPlaceDecoder`.

The same Optimum machinery as `decoder_config` (a `TextDecoderWithPositionIdsOnnxConfig` subclass whose
inputs/outputs come from `tensors.decoder_gqa_graph`, Optimum's `ModelPatcher` while tracing), with
attention patched while tracing: `InPlaceDecoder` routes transformers' attention through an
`AttentionInterface` entry whose `GroupQueryAttention.symbolic` emits `com.microsoft::GroupQueryAttention`.
This config is not registered with the TasksManager: `(qwen2_5_omni_thinker, text-generation-with-past)`
already names the `decoder` (TensorRT-parsable) config, and the exporter builds this one directly.
"""

from __future__ import annotations

import numpy as np
import torch

from omnisift_edge.export.decoder.past_present_config import (
    DUMMY_SHAPES,
    ThinkerDecoderInputGenerator,
    ThinkerDecoderOnnxConfig,
    gapped_positions,
    text_config,
)
from omnisift_edge.artifact.tensors import decoder_gqa_graph

# roles of the tensors, read from the declaration
_ONE_LAYER = decoder_gqa_graph(1)
EMBEDS, POSITIONS, SEQLENS, TOTAL, LOGITS_INDEX = (t.name for t in _ONE_LAYER.inputs[:5])
PAST = _ONE_LAYER.inputs[5].name.split(".")[0]
# buffer rows for tracing: more than past + new, so the valid length differs from the buffer's
DUMMY_CACHE_LENGTH = 19


def static_cache(gen: ThinkerDecoderInputGenerator, b: int, p: int, rows: int, dtype, rng) -> list[tuple]:
    """Dummy in-place caches: per layer a (key, value) pair [b, kv, rows, hd], zeros past the first `p` rows
    (the valid ones), so a graph that read beyond the valid length would trace to different numbers."""
    shape = (b, gen.kv_heads, rows, gen.head_dim)                                              # [B, kv, M, hd]
    layers = []
    for _ in range(gen.num_layers):
        pair = [np.zeros(shape, dtype), np.zeros(shape, dtype)]
        for buf in pair:
            buf[:, :, :p] = rng.standard_normal((b, gen.kv_heads, p, gen.head_dim))
        layers.append(tuple(pair))
    return layers


def in_framework(value, framework: str):
    """A dummy input (array, or list of (key, value) pairs) as numpy or torch tensors."""
    if framework == "np":
        return value
    if isinstance(value, list):
        return [tuple(torch.from_numpy(t) for t in kv) for kv in value]
    return torch.from_numpy(value)


class InPlaceDecoderInputGenerator(ThinkerDecoderInputGenerator):
    """Dummy inputs of `decoder_gqa`: P = 7 valid rows of a 19-row buffer, S = 5 new rows, logits for 2 rows."""

    SUPPORTED_INPUT_NAMES = (EMBEDS, POSITIONS, SEQLENS, TOTAL, LOGITS_INDEX, PAST)

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        b, s, p = self.batch_size, self.sequence_length, self.past_sequence_length
        fdt = {"fp32": np.float32, "fp16": np.float16}[float_dtype]
        rng = self._rng(input_name)
        if input_name == EMBEDS:
            value = rng.standard_normal((b, s, self.hidden)).astype(fdt)                      # [B, S, D]
        elif input_name == POSITIONS:
            value = gapped_positions(b, s, start=p, rng=rng)                                  # [3, B, S]
        elif input_name == SEQLENS:
            value = np.full((b,), p + s - 1, dtype=np.int32)                                  # [B]
        elif input_name == TOTAL:
            value = np.array([p + s], dtype=np.int32)                                         # [1]
        elif input_name == LOGITS_INDEX:
            value = np.array([s - 2, s - 1], dtype=np.int64)                                  # [L]
        elif input_name == PAST:
            value = static_cache(self, b, p, DUMMY_CACHE_LENGTH, fdt, rng)
        else:
            raise ValueError(f"no dummy input named {input_name!r}")
        return in_framework(value, framework)


class InPlaceDecoderOnnxConfig(ThinkerDecoderOnnxConfig):
    """OnnxConfig of `InPlaceDecoder`: names and axes from `decoder_gqa_graph`; opset 17 + com.microsoft 1."""

    DUMMY_INPUT_GENERATOR_CLASSES = (InPlaceDecoderInputGenerator,)
    DUMMY_PKV_GENERATOR_CLASS = InPlaceDecoderInputGenerator

    def __init__(self, config, task: str = "text-generation", int_dtype: str = "int64", float_dtype: str = "fp32",
                 use_past: bool = True, use_past_in_inputs: bool | None = None, preprocessors=None):
        super().__init__(config, task=task, int_dtype=int_dtype, float_dtype=float_dtype,
                         preprocessors=preprocessors)
        self.graph = decoder_gqa_graph(text_config(config).num_hidden_layers)


def onnx_config_for(thinker, dtype: str = "fp32") -> InPlaceDecoderOnnxConfig:
    return InPlaceDecoderOnnxConfig(thinker.config, task="text-generation-with-past", float_dtype=dtype)


assert DUMMY_CACHE_LENGTH > DUMMY_SHAPES["past_sequence_length"] + DUMMY_SHAPES["sequence_length"]
