"""The decoder's forms: the thinker LLM exported three ways, each described once in `forms.FORMS`.

| module | form |
|---|---|
| `forms.py` | `DecoderForm` records: graph name, tensors (`artifact/tensors.py`), kind, runtimes, exporter, validator |
| `checks.py` | what every form checks: dtype, sizes, max_context against the model's limit; the PyTorch reference and the in-place comparison |
| `trace.py` | how every form is traced: Optimum's `export` into a staged file, metadata, one data file, then into place |
| `past_present.py` + `past_present_config.py` | `decoder.onnx`: past in, present out (TensorRT 10.3); the Optimum config registered with its TasksManager |
| `gqa.py` + `gqa_config.py` | `decoder_gqa.onnx`: an in-place cache through GroupQueryAttention (ONNX Runtime) |
| `scatter.py` + `scatter_config.py` | `decoder_scatter.onnx`: an in-place cache through TensorScatter (TensorRT >= 10.15, TensorRT-RTX) |
| `quantize.py` | the weight-only INT8/INT4 pass over any of them |

Importing this package loads no Optimum, torch or ONNX (only the `*_config` modules import Optimum).
docs/export-decoder.md.
"""

from __future__ import annotations

from omnisift_edge.export.decoder.checks import decoder_dims
from omnisift_edge.export.decoder.forms import FORMS, DecoderForm, form

__all__ = ["FORMS", "DecoderForm", "decoder_dims", "form"]
