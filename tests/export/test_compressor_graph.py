"""compressor_r{ratio}.onnx: same kept set as PyTorch in ONNX Runtime, ties included; static graph."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from omnisift_edge.compress.selector import AudioSelector, SelectorConfig  # noqa: E402
from omnisift_edge.export.compressor import (  # noqa: E402
    SHORT_CHUNKS,
    CompressorGraph,
    example_inputs,
    export_compressor,
    validate_compressor,
)
from omnisift_edge.artifact.onnx_runtime import ort_session  # noqa: E402
from omnisift_edge.artifact.tensors import COMPRESSOR, Dims  # noqa: E402
from omnisift_edge.model.tiny import seeded_fill_  # noqa: E402

DIMS = Dims(hidden=64, patch_dim=1176, grid_h=8, grid_w=6, spatial_merge=2, grids_per_chunk=2, n_mels=128,
            window_frames=200, window_audio_tokens=50)


@pytest.fixture(scope="module")
def selector():
    sel = AudioSelector(SelectorConfig(d_model=64, hidden=32, heads=4))
    seeded_fill_(sel, 3, std=0.2)
    return sel.eval()


@pytest.mark.parametrize("drops", [(0.5, 0.3), (0.8, 0.3), (0.0, 0.0), (0.9, 0.6)])
def test_onnx_keeps_the_same_tokens_as_torch(selector, tmp_path, drops):
    path = export_compressor(selector, DIMS, *drops, tmp_path / "c.onnx")
    check = validate_compressor(path, selector, DIMS, *drops)
    assert check.cases == 6 + len(SHORT_CHUNKS) and check.ok, check     # whole chunks, then short last ones


def test_graph_matches_the_declaration_and_is_static(selector, tmp_path):
    path = export_compressor(selector, DIMS, 0.75, 0.3, tmp_path / "c.onnx")
    model = onnx.load(str(path))
    graph = CompressorGraph(selector, 0.75, 0.3)
    dims = Dims(**{**DIMS.__dict__, "kept_tokens": graph.chunk.kept_count(2, DIMS.tokens_per_frame, 50)})

    def shapes(values):
        return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    assert shapes(model.graph.input) == {t.name: t.shape(dims) for t in COMPRESSOR.inputs}
    assert shapes(model.graph.output) == {t.name: t.shape(dims) for t in COMPRESSOR.outputs}
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"NonZero", "Loop", "If", "Scan", "Unique"}


def test_tie_inputs_keep_the_lowest_indices(selector, tmp_path):
    """Black static frames and silence: every score ties, so the lowest indices win, in ORT too."""
    path = export_compressor(selector, DIMS, 0.5, 0.5, tmp_path / "c.onnx")
    video, audio, positions, grids, audio_tokens = example_inputs(DIMS, torch.float32, ties="both")
    out = ort_session(path).run(["kept_index"], {"video_embeds": video.numpy(), "audio_embeds": audio.numpy(),
                                                 "chunk_position_ids": positions.numpy(),
                                                 "valid_grids": grids.numpy(),
                                                 "valid_audio_tokens": audio_tokens.numpy()})[0][0]
    n_p = DIMS.tokens_per_frame
    # STVP drops the k_v MOST similar: all tie, so the lowest indices are dropped, the highest kept
    k_v = int(n_p * 0.5)
    expected_video = np.concatenate([np.arange(k_v, n_p), n_p + np.arange(k_v, n_p)])
    expected_audio = 2 * n_p + np.arange(50 - int(50 * 0.5))        # VGAS keeps the top: lowest indices
    np.testing.assert_array_equal(out, np.concatenate([expected_video, expected_audio]))


def test_failed_export_leaves_no_file(selector, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(RuntimeError):
        export_compressor(selector, DIMS, 0.5, 0.3, tmp_path / "c.onnx")
    assert list(tmp_path.iterdir()) == []


def test_real_7b_widths_keep_the_same_tokens_in_ort(tmp_path):
    """448x448 frames (256 tokens each) and D=3584 with the 4.86M-parameter selector, ties included."""
    selector = AudioSelector(SelectorConfig())
    seeded_fill_(selector, 5, std=0.02)
    dims = Dims(hidden=3584, patch_dim=1176, grid_h=32, grid_w=32, spatial_merge=2, grids_per_chunk=2,
                n_mels=128, window_frames=200, window_audio_tokens=50)
    path = export_compressor(selector.eval(), dims, 0.793, 0.3, tmp_path / "c.onnx")
    check = validate_compressor(path, selector, dims, 0.793, 0.3, seeds=1)
    assert check.ok, check


def test_fp16_graph_keeps_the_torch_set_on_near_ties(selector, tmp_path):
    """Issue 13.1: an fp16 graph scores in fp32, so a steady sound (audio tokens within fp16 rounding
    of each other) keeps the same tokens in ONNX Runtime as in PyTorch."""
    path = export_compressor(selector, DIMS, 0.5, 0.6, tmp_path / "c.onnx", dtype="fp16")
    graph = CompressorGraph(selector, 0.5, 0.6).to(torch.float16).eval()
    session = ort_session(path)
    for seed in range(3):
        video, audio, positions, *valid = example_inputs(DIMS, torch.float16, seed)
        gen = torch.Generator().manual_seed(seed)
        audio = (audio[:, :1].float() + 0.01 * torch.randn(audio.shape, generator=gen)).half()
        with torch.no_grad():
            _, _, index, _ = graph(video, audio, positions, *valid)
        feeds = dict(zip(COMPRESSOR.input_names, (video.numpy(), audio.numpy(), positions.numpy(),
                                                  *(v.numpy() for v in valid))))
        assert np.array_equal(session.run(["kept_index"], feeds)[0], index.numpy())
