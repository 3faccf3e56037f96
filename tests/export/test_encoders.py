"""vision_encoder.onnx / audio_encoder.onnx: the per-chunk wrappers equal the towers; the graphs
equal the wrappers in ONNX Runtime, are static and carry the declared names; writes are atomic."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.export import encoders  # noqa: E402
from omnisift_edge.export.encoders import (  # noqa: E402
    AudioWindowEncoder,
    VisionChunkEncoder,
    clip_inputs,
    encoder_dims,
    example_features,
    example_pixels,
    export_audio_encoder,
    export_vision_encoder,
    validate_audio_encoder,
    validate_encoder,
    validate_vision_encoder,
)
from omnisift_edge.artifact.tensors import AUDIO_ENCODER, VISION_ENCODER  # noqa: E402
from omnisift_edge.model.preprocess import log_mel, video_patches  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402

# 56x84: one window per grid step; 112x112: exactly one 8x8-patch window; 224x224: four windows;
# 168x280: ragged edge windows (12x20 patches -> windows of 8 and 4 rows, 8, 8 and 4 columns)
RESOLUTIONS = [(56, 84), (112, 112), (224, 224), (168, 280)]
ATOL, RTOL = 1e-6, 1e-5          # fp32; outputs of the tiny default are ~0.1
DATA_DEPENDENT_OPS = {"NonZero", "Loop", "If", "Scan", "Where", "Unique"}


@pytest.fixture(scope="module")
def thinker(tiny_model):
    return tiny_model.thinker


def _grid(dims):
    return torch.tensor([[dims.grids_per_chunk, dims.grid_h, dims.grid_w]])


def _io(path):
    graph = onnx.load(str(path)).graph

    def describe(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]) for v in values]
    return describe(graph.input), describe(graph.output), {n.op_type for n in graph.node}


def _declared(spec, dims, elem_type):
    def elem(t):
        return elem_type if t.dtype == "float" else onnx.TensorProto.INT64

    return ([(t.name, elem(t), t.shape(dims)) for t in spec.inputs],
            [(t.name, elem(t), t.shape(dims)) for t in spec.outputs])


@pytest.mark.parametrize("size", RESOLUTIONS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_vision_wrapper_equals_tower(thinker, size):
    dims = encoder_dims(thinker, *size)
    wrapper = VisionChunkEncoder.from_dims(thinker.visual, dims).eval()
    pixels = example_pixels(dims, seed=3)
    with torch.no_grad():
        want = thinker.get_video_features(pixels, _grid(dims))                    # [2 * n_p, D]
        got = wrapper(pixels)
    assert got.shape == (dims.size("chunk_video_tokens"), dims.hidden)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    n_windows = wrapper.windows.n
    assert n_windows == dims.grids_per_chunk * -(-dims.grid_h // 8) * -(-dims.grid_w // 8)
    assert (wrapper.windows.gather is not None) == (size == (168, 280))       # padding only when ragged


def test_vision_last_chunk_of_one_grid_step(thinker):
    """A clip's short last chunk (1-2 frames, one grid step) works in torch with grids_per_chunk=1."""
    wrapper = VisionChunkEncoder(thinker.visual, grid_h=12, grid_w=20, grids_per_chunk=1).eval()
    pixels = torch.randn(12 * 20, 1176, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = thinker.get_video_features(pixels, torch.tensor([[1, 12, 20]]))
        torch.testing.assert_close(wrapper(pixels), want, atol=ATOL, rtol=RTOL)


def test_vision_windows_matter(thinker):
    """At 224x224 a full-attention-only wrapper would differ: the window blocks are really windowed."""
    dims = encoder_dims(thinker, 224, 224)
    wrapper = VisionChunkEncoder.from_dims(thinker.visual, dims).eval()
    pixels = example_pixels(dims, seed=4)
    with torch.no_grad():
        want = wrapper(pixels)
        wrapper.windows = wrapper.full
        wrong = wrapper(pixels)
    assert (want - wrong).abs().max() > 1e-4


def test_vision_chunks_equal_whole_clip(thinker):
    """Two chunks of a 4-second clip, encoded alone, are the slices of the whole clip's features."""
    clip = synthetic_clip(4.0, 224, 224, seed=2)
    pixels, grid = video_patches(clip.frames, size=(224, 224))                    # grid t = 4
    dims = encoder_dims(thinker, 224, 224)
    wrapper = VisionChunkEncoder.from_dims(thinker.visual, dims).eval()
    n_p, n_t = dims.size("chunk_patches"), dims.size("chunk_video_tokens")
    with torch.no_grad():
        whole = thinker.get_video_features(torch.from_numpy(pixels), torch.from_numpy(grid)[None])
        for c in range(2):
            chunk = wrapper(torch.from_numpy(pixels[c * n_p:(c + 1) * n_p]))
            torch.testing.assert_close(chunk, whole[c * n_t:(c + 1) * n_t], atol=ATOL, rtol=RTOL)


def test_audio_wrapper_equals_tower_and_whole_clip_slices(thinker):
    mel = torch.from_numpy(log_mel(synthetic_clip(5.0, 56, 56, seed=1).pcm))       # [128, 500]
    assert mel.shape == (128, 500)
    full = AudioWindowEncoder(thinker.audio_tower).eval()
    with torch.no_grad():
        whole = thinker.get_audio_features(mel[None], feature_attention_mask=torch.ones(1, 500, dtype=torch.long))
        assert whole.shape[0] == 125
        for w in range(2):
            window = mel[:, 200 * w:200 * (w + 1)]
            got = full(window)                                                     # [50, D]
            alone = thinker.audio_tower(window, feature_lens=torch.tensor([200]),
                                        aftercnn_lens=torch.tensor([100])).last_hidden_state
            torch.testing.assert_close(got, alone, atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(got, whole[50 * w:50 * (w + 1)], atol=ATOL, rtol=RTOL)
        # the short last window (100 frames) in torch, as the torch runtime runs it
        tail = AudioWindowEncoder(thinker.audio_tower, window_frames=100).eval()
        torch.testing.assert_close(tail(mel[:, 400:]), whole[100:], atol=ATOL, rtol=RTOL)


def test_bad_shapes_are_usage_errors(thinker):
    with pytest.raises(UsageError, match="multiple of 28"):
        encoder_dims(thinker, 50, 84)
    with pytest.raises(UsageError, match="mel frames"):
        AudioWindowEncoder(thinker.audio_tower, window_frames=201)
    with pytest.raises(UsageError, match="fp32 or fp16"):
        export_audio_encoder(thinker, encoder_dims(thinker, 56, 56), "unused.onnx", dtype="bf16")


@pytest.mark.parametrize("size", [(56, 84), (224, 224), (168, 280)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_vision_graph_matches_torch_in_ort(thinker, tmp_path, size):
    dims = encoder_dims(thinker, *size)
    path = export_vision_encoder(thinker, dims, tmp_path / "vision_encoder.onnx")
    inputs, outputs, ops = _io(path)
    assert (inputs, outputs) == _declared(VISION_ENCODER, dims, onnx.TensorProto.FLOAT)
    assert not ops & DATA_DEPENDENT_OPS
    wrapper = VisionChunkEncoder.from_dims(thinker.visual, dims).eval()
    real, _ = clip_inputs(thinker, dims, seed=5)
    for x in (example_pixels(dims, seed=6), real):
        check = validate_encoder(path, wrapper, x, atol=ATOL, rtol=RTOL)
        assert check.ok, check
    assert validate_vision_encoder(path, thinker, dims).ok


def test_audio_graph_matches_torch_in_ort(thinker, tmp_path):
    dims = encoder_dims(thinker, 56, 84)
    path = export_audio_encoder(thinker, dims, tmp_path / "audio_encoder.onnx")
    inputs, outputs, ops = _io(path)
    assert (inputs, outputs) == _declared(AUDIO_ENCODER, dims, onnx.TensorProto.FLOAT)
    assert inputs[0][2] == [128, 200] and outputs[0][2] == [50, dims.hidden]
    assert not ops & DATA_DEPENDENT_OPS
    wrapper = AudioWindowEncoder(thinker.audio_tower).eval()
    real = log_mel(synthetic_clip(2.0, 56, 84, seed=7).pcm)
    for x in (example_features(dims, seed=8), real):
        check = validate_encoder(path, wrapper, x, atol=ATOL, rtol=RTOL)
        assert check.ok, check
    assert validate_audio_encoder(path, thinker, dims).ok


@pytest.mark.parametrize("valid", [3, 5, 101, 150, 199])
def test_audio_graph_takes_a_short_window(thinker, tmp_path_factory, valid):
    """valid_frames n: the first tokens equal the tower on the n frames alone (a clip's last window),
    whatever the padding frames hold."""
    dims = encoder_dims(thinker, 56, 84)
    path = tmp_path_factory.getbasetemp() / "short_audio_encoder.onnx"
    if not path.exists():
        export_audio_encoder(thinker, dims, path)
    short = AudioWindowEncoder(thinker.audio_tower, window_frames=valid).eval()
    check = validate_encoder(path, short, example_features(dims, seed=valid), atol=ATOL, rtol=RTOL, valid=valid,
                             rows=short.tokens)
    assert check.ok, check


def test_fp16_graphs_run_in_ort(thinker, tmp_path):
    dims = encoder_dims(thinker, 224, 224)
    vision = export_vision_encoder(thinker, dims, tmp_path / "v16.onnx", dtype="fp16")
    audio = export_audio_encoder(thinker, dims, tmp_path / "a16.onnx", dtype="fp16")
    assert next(thinker.parameters()).dtype == torch.float32                      # the caller's model is not cast
    for path, spec in ((vision, VISION_ENCODER), (audio, AUDIO_ENCODER)):
        inputs, outputs, _ = _io(path)
        assert (inputs, outputs) == _declared(spec, dims, onnx.TensorProto.FLOAT16)
    pixels, mel = clip_inputs(thinker, dims, seed=9)
    v = validate_encoder(vision, VisionChunkEncoder.from_dims(thinker.visual, dims), pixels,
                         atol=5e-3, rtol=2e-2, relative_atol=True)
    a = validate_encoder(audio, AudioWindowEncoder(thinker.audio_tower), mel, atol=5e-3, rtol=2e-2,
                         relative_atol=True)
    assert v.ok and a.ok, (v, a)
    assert validate_vision_encoder(vision, thinker, dims, dtype="fp16").ok
    assert validate_audio_encoder(audio, thinker, dims, dtype="fp16").ok


def test_failed_export_leaves_no_file(thinker, tmp_path, monkeypatch):
    dims = encoder_dims(thinker, 56, 84)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure mid-export")

    monkeypatch.setattr(torch.onnx, "export", broken)
    for export in (export_vision_encoder, export_audio_encoder):
        with pytest.raises(RuntimeError, match="simulated"):
            export(thinker, dims, tmp_path / "graph.onnx")
        assert list(tmp_path.iterdir()) == []                                      # no file, no temp folder
    (tmp_path / "graph.onnx").write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="simulated"):
        export_audio_encoder(thinker, dims, tmp_path / "graph.onnx")
    assert (tmp_path / "graph.onnx").read_bytes() == b"previous export"            # replaced only on success


def test_failure_after_tracing_leaves_no_file(thinker, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        export_audio_encoder(thinker, encoder_dims(thinker, 56, 84), tmp_path / "audio_encoder.onnx")
    assert list(tmp_path.iterdir()) == []


def test_external_data(thinker, tmp_path):
    dims = encoder_dims(thinker, 56, 84)
    path = export_audio_encoder(thinker, dims, tmp_path / "audio_encoder.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio_encoder.onnx", "audio_encoder.onnx.data"]
    assert path.stat().st_size < (tmp_path / "audio_encoder.onnx.data").stat().st_size
    check = validate_encoder(path, AudioWindowEncoder(thinker.audio_tower), example_features(dims),
                             atol=ATOL, rtol=RTOL)
    assert check.ok, check


def test_large_models_switch_to_external_data(thinker, tmp_path, monkeypatch):
    """Over 2 GB of weights the .onnx cannot hold them: the writer picks external data by itself."""
    monkeypatch.setattr(encoders, "TWO_GB", 0)
    export_audio_encoder(thinker, encoder_dims(thinker, 56, 84), tmp_path / "a.onnx")
    assert (tmp_path / "a.onnx.data").is_file()


class _Offset(torch.nn.Module):
    """A wrong reference: the wrapped encoder's output plus 0.01."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.01


def test_validate_reports_disagreement(thinker, tmp_path):
    dims = encoder_dims(thinker, 56, 84)
    path = export_audio_encoder(thinker, dims, tmp_path / "audio_encoder.onnx")
    wrong = _Offset(AudioWindowEncoder(thinker.audio_tower)).eval()
    check = validate_encoder(path, wrong, example_features(dims), atol=ATOL, rtol=RTOL)
    assert not check.ok and abs(check.max_abs - 0.01) < 1e-4 and np.isfinite(check.max_rel)


@pytest.mark.gpu
def test_wrappers_on_cuda_equal_towers(thinker, monkeypatch):
    """Tables and indices follow the tower's device; the wrappers run where the model runs."""
    import copy

    # the stock patch embedding is a Conv3d, which cuDNN runs in TF32 by default; ours is a matmul
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = copy.deepcopy(thinker).to("cuda")
    dims = encoder_dims(model, 168, 280)
    pixels, mel = (torch.from_numpy(x).cuda() for x in clip_inputs(model, dims))
    with torch.no_grad():
        video = VisionChunkEncoder.from_dims(model.visual, dims)(pixels)
        audio = AudioWindowEncoder(model.audio_tower)(mel)
        want_video = model.get_video_features(pixels, _grid(dims).cuda())
        want_audio = model.audio_tower(mel, feature_lens=torch.tensor([200], device="cuda"),
                                       aftercnn_lens=torch.tensor([100], device="cuda")).last_hidden_state
    torch.testing.assert_close(video, want_video, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(audio, want_audio, atol=1e-5, rtol=1e-4)
