"""The batched forms of the per-chunk graphs (issue 23): `vision_encoder_batch.onnx`,
`audio_encoder_batch.onnx` and `compressor_batch_r{ratio}.onnx`.

A stream pool runs the chunks that arrived together from several cameras in one call. These graphs are
the one-chunk modules themselves (`encoders.VisionChunkEncoder`, `encoders.AudioWindowEncoder`,
`compressor.CompressorGraph`, all batch-generic: a leading batch axis goes through their reshapes, token
gathers and segment attention) traced on inputs with a leading batch axis, into the forms declared in
artifact/tensors.py (`BATCH_FORMS`: a dynamic `batch_size` axis, per-row valid counts). Same code, same
weights: row b of every output is the one-chunk graph on row b of every input, and the export's
shared-weights pass stores the tensors once (shared_weights.data).

Each is validated in ONNX Runtime at B = `CHECK_ROWS` with distinct rows, one of them a clip's short last
window / chunk, against the one-chunk PyTorch module on each row alone, with the one-chunk checks'
tolerances (the compressor: kept indices and positions per row identical, kept_count per row right).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from omnisift_edge.artifact.tensors import (AUDIO_ENCODER_BATCH, COMPRESSOR_BATCH, VISION_ENCODER_BATCH, Dims,
                                            GraphSpec, batch_form_key)
from omnisift_edge.export.compressor import (SHORT_CHUNKS, CompressorCheck, CompressorGraph, case_inputs,
                                             reference_outputs)
from omnisift_edge.export.encoders import (TOLERANCES, AudioWindowEncoder, EncoderCheck, VisionChunkEncoder,
                                           _in_dtype, _torch_dtype, clip_inputs, compare_outputs, example_features,
                                           example_pixels, write_traced)

TRACE_ROWS = 2     # rows of the example the graphs are traced with (the batch axis stays dynamic)
CHECK_ROWS = 3     # rows of the validation batch (not TRACE_ROWS: a trace that kept B fixed would fail)
SHORT_WINDOW = 101  # valid log-mel frames of the audio check's short last window (odd: the conv rounding)


@dataclass(frozen=True)
class BatchGraph:
    """One batched graph the export writes: its manifest key, declaration, sizes, and how to write and check it."""

    key: str                                   # vision_encoder_batch, audio_encoder_batch, compressor_batch_r0.25
    spec: GraphSpec
    dims: Dims                                 # the compressor's with its kept_tokens
    export: Callable[[Path], Path]
    validate: Callable[[Path], object]         # -> EncoderCheck | CompressorCheck (with .ok)
    extra: dict = field(default_factory=dict)  # manifest entry fields beyond the tensors (rho_video, rho_audio)

    @property
    def file(self) -> str:
        return f"{self.key}.onnx"


def batch_graphs(model, dims: Dims, plan, *, dtype: str, opset: int) -> list[BatchGraph]:
    """The batched graphs of an export: both encoders, and one compressor per compressor graph of `plan`
    (export/build.py's ratio plan: `RatioPlan`s with graph, rho_video, rho_audio, kept_total)."""
    thinker, selector = model.thinker, model.selector
    graphs = [
        BatchGraph(VISION_ENCODER_BATCH.name, VISION_ENCODER_BATCH, dims,
                   lambda path: export_vision_encoder_batch(thinker, dims, path, dtype=dtype, opset=opset),
                   lambda path: validate_vision_encoder_batch(path, thinker, dims, dtype=dtype)),
        BatchGraph(AUDIO_ENCODER_BATCH.name, AUDIO_ENCODER_BATCH, dims,
                   lambda path: export_audio_encoder_batch(thinker, dims, path, dtype=dtype, opset=opset),
                   lambda path: validate_audio_encoder_batch(path, thinker, dims, dtype=dtype))]
    for entry in plan:
        kept_dims = Dims(**{**asdict(dims), "kept_tokens": entry.kept_total})
        rho = (entry.rho_video, entry.rho_audio)
        graphs.append(BatchGraph(
            batch_form_key(entry.graph), COMPRESSOR_BATCH, kept_dims,
            lambda path, rho=rho, d=kept_dims: export_compressor_batch(selector, d, *rho, path, dtype=dtype, opset=opset),
            lambda path, rho=rho, d=kept_dims: validate_compressor_batch(path, selector, d, *rho, dtype=dtype),
            {"rho_video": rho[0], "rho_audio": rho[1]}))
    return graphs


# ------------------------------------------------------------------------------------------- export

def export_vision_encoder_batch(thinker, dims: Dims, path: Path, *, dtype: str = "fp32", opset: int = 17) -> Path:
    """`VisionChunkEncoder` traced on [TRACE_ROWS, chunk_patches, 1176]: `vision_encoder_batch` (batch axis dynamic)."""
    torch_dtype = _torch_dtype(dtype)
    module = VisionChunkEncoder.from_dims(_in_dtype(thinker.visual, torch_dtype), dims).eval()
    device = next(module.parameters()).device
    example = torch.stack([example_pixels(dims, torch_dtype, seed=s, device=device) for s in range(TRACE_ROWS)])
    return write_traced(module, example, VISION_ENCODER_BATCH, dims, path, opset=opset, external_data=False)


def export_audio_encoder_batch(thinker, dims: Dims, path: Path, *, dtype: str = "fp32", opset: int = 17) -> Path:
    """`AudioWindowEncoder` traced on [TRACE_ROWS, n_mels, 200] + valid_frames [TRACE_ROWS]: `audio_encoder_batch`."""
    torch_dtype = _torch_dtype(dtype)
    module = AudioWindowEncoder(_in_dtype(thinker.audio_tower, torch_dtype)).eval()
    device = next(module.parameters()).device
    features = torch.stack([example_features(dims, torch_dtype, seed=s, device=device) for s in range(TRACE_ROWS)])
    valid = torch.full((TRACE_ROWS,), dims.window_frames, dtype=torch.int64, device=device)   # [B]
    return write_traced(module, (features, valid), AUDIO_ENCODER_BATCH, dims, path, opset=opset, external_data=False)


def stack_chunks(rows) -> tuple[torch.Tensor, ...]:
    """One-chunk compressor inputs (video [1, F, P, D], audio [1, La, D], positions [3, n], grids [1],
    audio tokens [1]) per row -> the batched form's (video [B, F, P, D], audio [B, La, D], positions
    [3, B, n], grids [B], audio tokens [B])."""
    return (torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]), torch.stack([r[2] for r in rows], dim=1),
            torch.cat([r[3] for r in rows]), torch.cat([r[4] for r in rows]))


def export_compressor_batch(selector, dims: Dims, rho_video: float, rho_audio: float, path: Path, *,
                            dtype: str = "fp32", opset: int = 17) -> Path:
    """`CompressorGraph` traced on TRACE_ROWS chunks: `compressor_batch_r*` (dims with the ratio's kept_tokens)."""
    torch_dtype = _torch_dtype(dtype)
    graph = CompressorGraph(selector, rho_video, rho_audio).to(torch_dtype).eval()
    example = stack_chunks([case_inputs(dims, torch_dtype, seed) for seed in range(TRACE_ROWS)])
    return write_traced(graph, example, COMPRESSOR_BATCH, dims, path, opset=opset, external_data=False,
                        declare_outputs=True)


# --------------------------------------------------------------------------------------- validation

def run_rows(path: Path, rows: list[np.ndarray], valid: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An encoder batch graph in ONNX Runtime (CPU) on the stacked `rows` (and per-row `valid` counts):
    (its output [B, ...], the input as fed: rounded to the graph's input dtype)."""
    from omnisift_edge.artifact.onnx_runtime import ort_session

    session = ort_session(path)
    inputs = session.get_inputs()
    feed_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
    batch = np.stack([np.asarray(r) for r in rows]).astype(feed_dtype)              # [B, ...]
    feeds = {inputs[0].name: batch}
    if valid is not None:
        feeds[inputs[1].name] = np.asarray(valid, np.int64)                          # [B]
    return session.run([session.get_outputs()[0].name], feeds)[0], batch


def check_rows(got: np.ndarray, batch: np.ndarray, modules, dtype: str, valid: list[int] | None = None) -> EncoderCheck:
    """Row b of a batch graph's output `got` against `modules[b]` (one-chunk PyTorch) on row b of `batch`
    alone (cropped to valid[b] frames; its output rows compared), with the one-chunk checks' tolerances."""
    atol, rtol = TOLERANCES[dtype]
    check = None
    for b, module in enumerate(modules):
        row = batch[b] if valid is None else batch[b][..., :valid[b]]
        param = next(module.parameters())
        with torch.no_grad():
            want = module(torch.from_numpy(np.ascontiguousarray(row)).to(param.device, param.dtype))
        want = want.float().cpu().numpy()
        result = compare_outputs(got[b][:len(want)], want, atol=atol, rtol=rtol, relative_atol=True)
        check = result if check is None else check.worst(result)
    return check


def validate_vision_encoder_batch(path: Path, thinker, dims: Dims, *, dtype: str = "fp32") -> EncoderCheck:
    """`vision_encoder_batch` at B = 3 (two random chunks, one generated clip's) against `VisionChunkEncoder` per row."""
    module = VisionChunkEncoder.from_dims(thinker.visual, dims).eval()
    rows = [example_pixels(dims, seed=1).numpy(), clip_inputs(thinker, dims)[0], example_pixels(dims, seed=2).numpy()]
    got, batch = run_rows(path, rows)
    return check_rows(got, batch, [module] * CHECK_ROWS, dtype)


def validate_audio_encoder_batch(path: Path, thinker, dims: Dims, *, dtype: str = "fp32") -> EncoderCheck:
    """`audio_encoder_batch` at B = 3 (random, a generated clip's, and a short last window of SHORT_WINDOW
    frames) against `AudioWindowEncoder` per row (the short one built for its frames alone)."""
    tower = thinker.audio_tower
    rows = [example_features(dims, seed=1).numpy(), clip_inputs(thinker, dims)[1], example_features(dims, seed=2).numpy()]
    valid = [dims.window_frames, dims.window_frames, SHORT_WINDOW]
    modules = [AudioWindowEncoder(tower, window_frames=None if n == dims.window_frames else n).eval() for n in valid]
    got, batch = run_rows(path, rows, valid)
    return check_rows(got, batch, modules, dtype, valid)


# rows of the compressor's validation batches: (ties, seed, short (grids, audio tokens) or None); each batch
# has distinct rows and one short last chunk, and its rows' positions differ (offset per row)
COMPRESSOR_BATCHES = (((None, 0, None), ("frames", 0, None), (None, 1, SHORT_CHUNKS[0])),
                      (("silence", 0, None), (None, 2, SHORT_CHUNKS[1]), ("both", 0, None)))


def validate_compressor_batch(path: Path, selector, dims: Dims, rho_video: float, rho_audio: float, *,
                              dtype: str = "fp32") -> CompressorCheck:
    """`compressor_batch_r*` in ONNX Runtime on COMPRESSOR_BATCHES (B = 3 each) against `CompressorGraph`'s
    per-chunk module on each row alone: per row the first kept_count[b] indices and positions identical
    (a wrong kept_count is a wrong index set), the kept embeddings within 1e-6."""
    from omnisift_edge.artifact.onnx_runtime import ort_session

    torch_dtype = _torch_dtype(dtype)
    graph = CompressorGraph(selector, rho_video, rho_audio).to(torch_dtype).eval()
    session = ort_session(path)
    index_equal = positions_equal = True
    max_abs, cases = 0.0, 0
    for rows in COMPRESSOR_BATCHES:
        inputs = [case_inputs(dims, torch_dtype, seed, ties=ties, valid=valid) for ties, seed, valid in rows]
        inputs = [(*x[:2], x[2] + 1000 * b, *x[3:]) for b, x in enumerate(inputs)]   # each row its own positions
        feeds = dict(zip(COMPRESSOR_BATCH.input_names, (t.numpy() for t in stack_chunks(inputs))))
        o_kept, o_positions, o_index, o_count = session.run(COMPRESSOR_BATCH.output_names, feeds)
        for b, row in enumerate(inputs):
            with torch.no_grad():
                kept, positions, index = reference_outputs(graph, row)              # [1, K', D], [3, 1, K'], [1, K']
            n = int(o_count[b])
            index_equal &= o_index.shape == (len(rows), dims.kept_tokens) and n == index.shape[1]
            index_equal &= bool(np.array_equal(o_index[b:b + 1, :n], index.numpy()))
            positions_equal &= bool(np.array_equal(o_positions[:, b:b + 1, :n], positions.numpy()))
            got = o_kept[b:b + 1, :n].astype(np.float32)
            max_abs = max(max_abs, float(np.abs(got - kept.float().numpy()).max()) if got.shape == kept.shape else np.inf)
            cases += 1
    return CompressorCheck(cases, index_equal, positions_equal, max_abs)
