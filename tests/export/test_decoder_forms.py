"""export/decoder/: every form is one record and refuses the same bad arguments with the same line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from omnisift_edge.artifact.tensors import Dims
from omnisift_edge.errors import UsageError
from omnisift_edge.export.decoder import FORMS, decoder_dims, form

BASE = Dims(hidden=64, patch_dim=1176, grid_h=8, grid_w=6, spatial_merge=2, grids_per_chunk=2, n_mels=128,
            window_frames=200, window_audio_tokens=50)


def test_each_form_is_one_record_naming_its_graph_tensors_and_functions():
    assert set(FORMS) == {"decoder", "decoder_gqa", "decoder_scatter"}
    for name, record in FORMS.items():
        assert form(name) is record and record.file == f"{name}.onnx"
        assert record.spec(2).name == name                                   # the declaration in artifact/tensors.py
        assert record.exporter.__name__ == f"export_{name}" and record.validator.__name__ == f"validate_{name}"
        assert record.runtimes
    assert FORMS["decoder_scatter"].opset == 24 and FORMS["decoder_gqa"].runtimes == ("onnxruntime",)


def test_reading_the_forms_and_the_reference_inputs_loads_no_optimum():
    """Importing the decoder package, its checks and export/reference.py must not register with Optimum."""
    code = ("import sys; import omnisift_edge.export.decoder, omnisift_edge.export.decoder.checks, "
            "omnisift_edge.export.reference; from omnisift_edge.export.decoder import FORMS; "
            "[f.exporter for f in FORMS.values()]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optimum', 'torch', 'onnx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("graph", sorted(FORMS))
def test_every_form_refuses_a_max_context_past_the_model_limit(tiny_model, tmp_path, graph):
    """Issue 24: only decoder.onnx checked max_context against max_position_embeddings; now every form does,
    before anything is traced or written."""
    pytest.importorskip("optimum.exporters.onnx")
    thinker = tiny_model.thinker
    dims = decoder_dims(thinker, BASE)
    export = FORMS[graph].exporter
    limit = thinker.config.text_config.max_position_embeddings
    for bad in (limit + 1, 0, -5):
        with pytest.raises(UsageError, match="max_position_embeddings"):
            export(thinker, dims, tmp_path / f"{graph}.onnx", max_context=bad)
    with pytest.raises(UsageError, match="fp32, fp16"):
        export(thinker, dims, tmp_path / f"{graph}.onnx", dtype="int8")
    with pytest.raises(UsageError, match="decoder_dims"):
        export(thinker, Dims(**{**dims.__dict__, "kv_heads": 4}), tmp_path / f"{graph}.onnx")
    assert list(tmp_path.iterdir()) == []
