"""decoder_scatter.onnx: TensorRT's in-place KV form (TensorScatter, opset 24, present aliases past)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.artifact.tensors import Dims, decoder_scatter_graph  # noqa: E402
from omnisift_edge.export.decoder import decoder_dims  # noqa: E402
from omnisift_edge.export.decoder.scatter import (SCATTER_OPSET, export_decoder_scatter,  # noqa: E402
                                                  graph_entry_for, validate_decoder_scatter)
from omnisift_edge.export.lint import lint_folder  # noqa: E402

BASE = Dims(hidden=64, patch_dim=1176, grid_h=8, grid_w=6, spatial_merge=2, grids_per_chunk=2, n_mels=128,
            window_frames=200, window_audio_tokens=50)


@pytest.fixture(scope="module")
def graph(tiny_model, tmp_path_factory):
    thinker = tiny_model.thinker
    dims = decoder_dims(thinker, BASE)
    path = export_decoder_scatter(thinker, dims, tmp_path_factory.mktemp("scatter") / "decoder_scatter.onnx",
                                  max_context=256)
    return path, graph_entry_for(dims, path.name, "fp32", False)


def test_graph_is_the_declaration_with_one_scatter_per_layer_and_kind(graph, tiny_model):
    path, _ = graph
    model = onnx.load(str(path))
    layers = tiny_model.thinker.config.text_config.num_hidden_layers
    spec = decoder_scatter_graph(layers)
    assert [i.name for i in model.graph.input] == spec.input_names
    assert [o.name for o in model.graph.output] == spec.output_names
    for value, tensor in zip((*model.graph.input, *model.graph.output), (*spec.inputs, *spec.outputs)):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == tensor.shape(decoder_dims(tiny_model.thinker, BASE)), tensor.name
    assert [(o.domain, o.version) for o in model.opset_import] == [("", SCATTER_OPSET)]   # no custom domain left
    scatters = [n for n in model.graph.node if n.op_type == "TensorScatter"]
    assert len(scatters) == 2 * layers and all(n.domain == "" for n in scatters)
    assert all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} == {"axis": 2, "mode": b"linear"}
               for n in scatters)
    # each scatter updates a past input with the new rows at write_index, and its output is that layer's present
    assert sorted(n.input[0] for n in scatters) == sorted(spec.input_names[4:])
    assert all(n.input[2] == "write_index" for n in scatters)
    assert sorted(n.output[0] for n in scatters) == sorted(spec.output_names[1:])
    assert not [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert {m.key: m.value for m in model.metadata_props}["omnisift_edge.opset"] == "24"
    assert lint_folder(path.parent) == {}       # not a TensorRT 10.3 graph: the 10.3 lint leaves it out


def test_ort_scatter_equals_pytorch(graph, tiny_model):
    path, entry = graph
    check = validate_decoder_scatter(path, tiny_model.thinker, entry, capacity=40, chunk_lengths=(9, 6, 4),
                                     decode_steps=4)
    assert check.ok, check
    assert check.untouched and check.no_logits_on_prefill
    assert check.torch_tokens == check.onnx_tokens
    assert len(check.logits_max_abs) == 1 + 4          # logits only for the last chunk and the decode steps


def test_eager_module_writes_the_callers_buffers(tiny_model):
    """In eager mode ScatterDecoder writes rows [write_index, write_index + S) of the given buffers and
    nothing else, and its logits equal the traced graph's definition (rows in logits_index only)."""
    from omnisift_edge.model.scatter_kv import ScatterDecoder

    thinker = tiny_model.thinker
    cfg = thinker.config.text_config
    hd = cfg.hidden_size // cfg.num_attention_heads
    buffers = [tuple(torch.zeros(1, cfg.num_key_value_heads, 16, hd) for _ in range(2))
               for _ in range(cfg.num_hidden_layers)]
    module = ScatterDecoder(thinker).eval()
    embeds = torch.randn(1, 5, cfg.hidden_size)
    with torch.inference_mode():
        out = module(embeds, torch.arange(5).repeat(3, 1, 1), torch.tensor([3]), torch.tensor([4]), buffers)
    assert out["logits"].shape == (1, 1, cfg.vocab_size)
    for (key, value), (pk, pv) in zip(buffers, out["present"]):
        assert pk is key and pv is value                                   # the same memory
        assert not key[:, :, :3].any() and key[:, :, 3:8].abs().sum() > 0 and not key[:, :, 8:].any()


def test_graph_pass_leaves_external_data_alone(tiny_model, tmp_path):
    """A decoder with external data: the pass loads and rewrites only the graph (the weights stay in the
    one data file beside it, nothing else is left in the folder) and ONNX Runtime still agrees with PyTorch."""
    thinker = tiny_model.thinker
    dims = decoder_dims(thinker, BASE)
    path = export_decoder_scatter(thinker, dims, tmp_path / "decoder_scatter.onnx", external_data=True)
    data = tmp_path / "decoder_scatter.onnx.data"
    assert data.stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder_scatter.onnx", "decoder_scatter.onnx.data"]
    check = validate_decoder_scatter(path, thinker, graph_entry_for(dims, path.name, "fp32", True))
    assert check.ok, check
