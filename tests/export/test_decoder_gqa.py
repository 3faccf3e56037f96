"""decoder_gqa.onnx: the in-place KV form (GroupQueryAttention, one buffer for past and present)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.export.decoder import decoder_dims  # noqa: E402
from omnisift_edge.export.decoder.checks import embed, gapped_positions  # noqa: E402
from omnisift_edge.export.decoder.gqa import export_decoder_gqa, validate_decoder_gqa  # noqa: E402
from omnisift_edge.export.lint import lint_folder  # noqa: E402
from omnisift_edge.artifact.manifest import graph_entry  # noqa: E402
from omnisift_edge.artifact.onnx_runtime import ort_session  # noqa: E402
from omnisift_edge.artifact.tensors import Dims, decoder_gqa_graph  # noqa: E402
from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache  # noqa: E402

BASE = Dims(hidden=64, patch_dim=1176, grid_h=8, grid_w=6, spatial_merge=2, grids_per_chunk=2, n_mels=128,
            window_frames=200, window_audio_tokens=50)


@pytest.fixture(scope="module")
def thinker(tiny_model):
    return tiny_model.thinker


@pytest.fixture(scope="module")
def graph(thinker, tmp_path_factory):
    dims = decoder_dims(thinker, BASE)
    path = export_decoder_gqa(thinker, dims, tmp_path_factory.mktemp("gqa") / "decoder_gqa.onnx")
    entry = graph_entry(decoder_gqa_graph(dims.num_layers), dims, path.name, 17, "fp32")
    rope = {"rope_theta": thinker.config.text_config.rope_theta}
    return path, entry, rope


def test_graph_is_the_declaration_with_one_gqa_per_layer(graph, thinker):
    path, entry, _ = graph
    model = onnx.load(str(path))
    layers = thinker.config.text_config.num_hidden_layers
    spec = decoder_gqa_graph(layers)
    assert [i.name for i in model.graph.input] == spec.input_names
    assert [o.name for o in model.graph.output] == spec.output_names
    for value, tensor in zip((*model.graph.input, *model.graph.output), (*spec.inputs, *spec.outputs)):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == tensor.shape(decoder_dims(thinker, BASE)), tensor.name
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == layers and all(n.domain == "com.microsoft" for n in gqa)
    assert all({a.name: a.i for a in n.attribute}.get("do_rotary", 0) == 0 for n in gqa)   # TMRoPE is outside
    assert not [n for n in model.graph.node if n.op_type == "Softmax"]                     # no unfused attention
    assert lint_folder(path.parent) == {}       # ORT-only: the TensorRT lint leaves it out


def test_ort_in_place_equals_pytorch(graph, thinker):
    path, entry, rope = graph
    check = validate_decoder_gqa(path, thinker, entry, rope, capacity=40, chunk_lengths=(9, 6, 4), decode_steps=4)
    assert check.ok, check
    assert check.untouched and check.no_logits_on_prefill
    assert check.torch_tokens == check.onnx_tokens
    assert len(check.logits_max_abs) == 1 + 4          # logits only for the last chunk and the decode steps


def _prefill(cache, thinker, rng, lengths, start):
    hidden = thinker.config.text_config.hidden_size
    pieces = []
    for n in lengths:
        embeds = (rng.standard_normal((1, n, hidden)) * 0.5).astype(np.float32)          # [1, n, D]
        positions = gapped_positions(1, n, start=start, rng=rng)                          # [3, 1, n]
        pieces.append((embeds, positions))
        start = int(positions.max()) + 1
    for embeds, positions in pieces:
        cache.step(embeds, positions, want_logits=False)
    return pieces, start


def _decode(cache, thinker, position, token=5, steps=3):
    logits = []
    for i in range(steps):
        out = cache.step(embed(thinker, [token]).astype(np.float32), np.full((3, 1, 1), position + i), True)
        logits.append(out)
        token = int(out.argmax())
    return np.stack(logits)


def test_rotate_rebases_positions_exactly(graph, thinker):
    """Decoding after re-basing the cache by -delta at positions - delta equals decoding without it."""
    path, entry, rope = graph
    session = ort_session(path)
    plain, rotated = (OrtInPlaceCache(session, entry, 32, rope) for _ in range(2))
    _, start = _prefill(plain, thinker, np.random.default_rng(1), (7, 5), start=2000)
    _prefill(rotated, thinker, np.random.default_rng(1), (7, 5), start=2000)
    delta = 1990
    rotated.rotate(delta)
    want, got = _decode(plain, thinker, start), _decode(rotated, thinker, start - delta)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-3)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    unrotated = OrtInPlaceCache(session, entry, 32, rope)          # without the rotation it is not the same
    _prefill(unrotated, thinker, np.random.default_rng(1), (7, 5), start=2000)
    assert np.abs(_decode(unrotated, thinker, start - delta) - want).max() > 1e-3


def test_drop_compacts_in_place(graph, thinker):
    """Dropping rows [4, 10) moves the later rows down within the same buffers; decoding goes on after them."""
    path, entry, rope = graph
    cache = OrtInPlaceCache(ort_session(path), entry, 32, rope)
    _, start = _prefill(cache, thinker, np.random.default_rng(2), (4, 6, 5), start=3)
    before = cache.valid()                                             # [1, kv, 15, hd] each
    buffers = {name: cache.arrays[name].ctypes.data for name in cache.past_names}
    cache.drop(4, 10)
    assert cache.length == 9
    assert {name: cache.arrays[name].ctypes.data for name in cache.past_names} == buffers    # no reallocation
    for old, new in zip(before, cache.valid()):
        np.testing.assert_array_equal(new, np.delete(old, np.s_[4:10], axis=2))
    assert all(not cache.arrays[name][:, :, 9:].any() for name in cache.past_names)
    _decode(cache, thinker, start, steps=1)                            # the next token lands in row 9
    assert all(cache.arrays[name][:, :, 9].any() and not cache.arrays[name][:, :, 10:].any()
               for name in cache.past_names)
    with pytest.raises(Exception, match="cannot drop"):
        cache.drop(5, 11)


def test_fp16_graph_on_the_cpu_kernel(thinker, tmp_path):
    dims = decoder_dims(thinker, BASE)
    path = export_decoder_gqa(thinker, dims, tmp_path / "decoder_gqa.onnx", dtype="fp16")
    entry = graph_entry(decoder_gqa_graph(dims.num_layers), dims, path.name, 17, "fp16")
    check = validate_decoder_gqa(path, thinker, entry, {"rope_theta": thinker.config.text_config.rope_theta})
    assert check.dtype == "fp16" and check.ok, check
    assert next(thinker.model.parameters()).dtype == torch.float32     # the caller's model was not cast
