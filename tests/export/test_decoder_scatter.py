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
from omnisift_edge.artifact.onnx_runtime import ort_session  # noqa: E402

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


def _row_alone(module, cfg, buffers, length: int, steps, row: int):
    """PyTorch (the eager ScatterDecoder), batch 1: a random prefix of `length` rows, then each (embeds, positions)
    of `steps` row `row` alone; returns the last row's logits [V] of every step. `buffers` are written in place."""
    gen = torch.Generator().manual_seed(100 + row)
    prefix = torch.randn(1, length, cfg.hidden_size, generator=gen)
    with torch.inference_mode():
        module(prefix, torch.arange(length).repeat(3, 1, 1), torch.tensor([0]), torch.tensor([], dtype=torch.int64),
               buffers)
        out, written = [], length
        for embeds, positions in steps:
            s = embeds.shape[1]
            result = module(embeds[row:row + 1], positions[:, row:row + 1], torch.tensor([written]),
                            torch.tensor([s - 1]), buffers)
            out.append(result["logits"][0, -1].numpy())
            written += s
    return out


def test_rows_at_different_lengths_are_one_call_equal_to_each_row_alone(graph, tiny_model):
    """A stream pool's batch (runtime/pool_trt.py): three rows cached to 5, 11 and 2 rows, then ONNX Runtime
    calls with write_index [5, 11, 2] (a 3-row prefill: the per-row causal mask) and [8, 14, 5] (a decode
    step). Each row's logits and cache equal PyTorch's running that row alone, and no row writes another's."""
    from omnisift_edge.model.scatter_kv import ScatterDecoder

    path, entry = graph
    thinker = tiny_model.thinker
    cfg = thinker.config.text_config
    hd, kv, capacity, lengths = cfg.hidden_size // cfg.num_attention_heads, cfg.num_key_value_heads, 24, (5, 11, 2)
    module = ScatterDecoder(thinker).eval()
    gen = torch.Generator().manual_seed(7)
    steps = []
    for s, done in ((3, 0), (1, 3)):
        embeds = torch.randn(len(lengths), s, cfg.hidden_size, generator=gen)                      # [B, S, D]
        positions = torch.stack([torch.arange(n + done, n + done + s) for n in lengths])[None].repeat(3, 1, 1)  # [3, B, S]
        steps.append((embeds, positions))
    alone, rows = [], []
    for row, n in enumerate(lengths):
        buffers = [tuple(torch.zeros(1, kv, capacity, hd) for _ in range(2)) for _ in range(cfg.num_hidden_layers)]
        alone.append(_row_alone(module, cfg, buffers, n, steps, row))
        rows.append(buffers)
    names = [t["name"] for t in entry["inputs"]]
    session = ort_session(path)
    cache = {}                                         # the batch's starting cache: each row's prefix, from PyTorch
    for i, name in enumerate(names[4:]):
        layer, kind = divmod(i, 2)
        start = []
        for row, n in enumerate(lengths):
            prefix = rows[row][layer][kind].clone()
            prefix[:, :, n:] = 0                       # only the prefix rows (the buffers already hold the steps)
            start.append(prefix)
        cache[name] = torch.cat(start).numpy()                                                      # [B, kv, M, hd]
    written = np.array(lengths, np.int64)
    for step, (embeds, positions) in enumerate(steps):
        s = embeds.shape[1]
        feeds = {names[0]: embeds.numpy(), names[1]: positions.numpy(), names[2]: written,
                 names[3]: np.array([s - 1], np.int64), **cache}
        logits, *presents = session.run(None, feeds)                                               # [B, 1, V]
        for row in range(len(lengths)):
            np.testing.assert_allclose(logits[row, -1], alone[row][step], atol=2e-4, rtol=1e-4)
        cache = dict(zip(names[4:], presents))
        written = written + s
    for i, name in enumerate(names[4:]):
        layer, kind = divmod(i, 2)
        for row, n in enumerate(written):
            np.testing.assert_allclose(cache[name][row, :, :n], rows[row][layer][kind][0, :, :n].numpy(), atol=1e-5)
            assert not cache[name][row, :, n:].any()                                    # nothing past its own rows
