"""The decoder's forms: the thinker LLM exported three ways, one module (and its Optimum config) per form.

`past_present` (decoder.onnx: past in, present out; TensorRT 10.3), `gqa` (decoder_gqa.onnx: an
in-place cache through GroupQueryAttention; ONNX Runtime), `scatter` (decoder_scatter.onnx: an
in-place cache through TensorScatter; TensorRT >= 10.15 and TensorRT-RTX), and `quantize` (the
weight-only INT8/INT4 pass over any of them). docs/export-decoder.md.
"""
