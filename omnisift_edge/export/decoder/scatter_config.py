"""Optimum's side of the `decoder_scatter` export: the OnnxConfig of `model.scatter_kv.ScatterDecoder`.

The same machinery as `decoder_gqa_config` (a `ThinkerDecoderOnnxConfig` subclass whose inputs/outputs
come from `tensors.decoder_scatter_graph`, Optimum's `ModelPatcher` while tracing); attention is routed
through `model.scatter_kv`'s `AttentionInterface` entry. Not registered with the TasksManager (that key
names the `decoder` config); the exporter builds this one directly. `write_index` is [B], one per row.
"""

from __future__ import annotations

import numpy as np

from omnisift_edge.artifact.tensors import decoder_scatter_graph
from omnisift_edge.export.decoder.past_present_config import (
    DUMMY_SHAPES,
    ThinkerDecoderInputGenerator,
    ThinkerDecoderOnnxConfig,
    gapped_positions,
    text_config,
)
from omnisift_edge.export.decoder.gqa_config import in_framework, static_cache

# roles of the tensors, read from the declaration
_ONE_LAYER = decoder_scatter_graph(1)
EMBEDS, POSITIONS, WRITE_INDEX, LOGITS_INDEX = (t.name for t in _ONE_LAYER.inputs[:4])
PAST = _ONE_LAYER.inputs[4].name.split(".")[0]
DUMMY_CACHE_LENGTH = 19     # cache rows for tracing: more than past + new, so the valid length differs


class ScatterDecoderInputGenerator(ThinkerDecoderInputGenerator):
    """Dummy inputs of `decoder_scatter`: batch 1, P = 7 rows cached in a 19-row cache, S = 5 new, 2 logits rows."""

    SUPPORTED_INPUT_NAMES = (EMBEDS, POSITIONS, WRITE_INDEX, LOGITS_INDEX, PAST)

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        b, s, p = 1, self.sequence_length, self.past_sequence_length
        fdt = {"fp32": np.float32, "fp16": np.float16}[float_dtype]
        rng = self._rng(input_name)
        if input_name == EMBEDS:
            value = rng.standard_normal((b, s, self.hidden)).astype(fdt)                      # [1, S, D]
        elif input_name == POSITIONS:
            value = gapped_positions(b, s, start=p, rng=rng)                                  # [3, 1, S]
        elif input_name == WRITE_INDEX:
            value = np.full((b,), p, dtype=np.int64)                                          # [B]
        elif input_name == LOGITS_INDEX:
            value = np.array([s - 2, s - 1], dtype=np.int64)                                  # [L]
        elif input_name == PAST:
            value = static_cache(self, b, p, DUMMY_CACHE_LENGTH, fdt, rng)
        else:
            raise ValueError(f"no dummy input named {input_name!r}")
        return in_framework(value, framework)


class ScatterDecoderOnnxConfig(ThinkerDecoderOnnxConfig):
    """OnnxConfig of `ScatterDecoder`: names and axes from `decoder_scatter_graph`; traced at opset 17 with
    one custom-domain node per cache update (`export.decoder.scatter` rewrites the graph to opset 24)."""

    DUMMY_INPUT_GENERATOR_CLASSES = (ScatterDecoderInputGenerator,)
    DUMMY_PKV_GENERATOR_CLASS = ScatterDecoderInputGenerator

    def __init__(self, config, task: str = "text-generation", int_dtype: str = "int64", float_dtype: str = "fp32",
                 use_past: bool = True, use_past_in_inputs: bool | None = None, preprocessors=None):
        super().__init__(config, task=task, int_dtype=int_dtype, float_dtype=float_dtype,
                         preprocessors=preprocessors)
        self.graph = decoder_scatter_graph(text_config(config).num_hidden_layers)

    def fix_dynamic_axes(self, model_path, device="cpu", dtype=None, input_shapes=None):
        """Optimum runs the fresh graph in ONNX Runtime to rename exporter-made output axes; ours cannot run
        before the opset-24 pass (a custom-domain node), so the outputs' axis names are checked here instead."""
        import onnx

        allowed = {a for axes in (*self.inputs.values(), *self.outputs.values()) for a in axes.values()}
        for output in onnx.load(str(model_path), load_external_data=False).graph.output:
            wrong = [d.dim_param for d in output.type.tensor_type.shape.dim if d.dim_param and d.dim_param not in allowed]
            if wrong:
                raise RuntimeError(f"output {output.name} of the traced decoder_scatter has undeclared axes {wrong}")


def onnx_config_for(thinker, dtype: str = "fp32") -> ScatterDecoderOnnxConfig:
    return ScatterDecoderOnnxConfig(thinker.config, task="text-generation-with-past", float_dtype=dtype)


assert DUMMY_CACHE_LENGTH > DUMMY_SHAPES["past_sequence_length"] + DUMMY_SHAPES["sequence_length"]
