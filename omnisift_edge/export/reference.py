"""Reference outputs for the engines: every graph of an export run in ONNX Runtime on generated inputs.

On the export machine (torch + ONNX Runtime), `record_reference(folder)` runs every graph in ONNX
Runtime's CPU provider on deterministic generated inputs (the export validators' generators: seeded
random patches and log-mel, the compressor's random and exact-tie cases, decoder prefill/decode on
gapped positions) and saves inputs and outputs as `reference/<graph>.npz`, recorded in the
manifest with checksums. The engines stage's `verify_engines` compares TensorRT engines with them
on the engine machine, with numpy and Polygraphy only (omnisift_edge.engines.verify).
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Callable

import numpy as np

from omnisift_edge.artifact.manifest import REFERENCE_DIR, Manifest
from omnisift_edge.atomic import atomic_write
from omnisift_edge.artifact.reference import Case
from omnisift_edge.artifact.tensors import is_batch_form, one_chunk_key
from omnisift_edge.errors import UsageError, require


def _inputs(manifest: Manifest, graph: str, session, ratio_k: int) -> list[Case]:
    """The generated inputs of one graph (decoder cases are chained: each feeds the last presents back)."""
    torch = require("torch")
    dims = manifest.dims
    fp16 = manifest.dtype == "fp16"
    tdt, ndt = (torch.float16, np.float16) if fp16 else (torch.float32, np.float32)
    entry = manifest.graph(graph)
    names = entry.input_names
    if is_batch_form(graph):
        return _batch_cases(manifest, graph, session, ratio_k)
    if graph == "vision_encoder":
        from omnisift_edge.export.encoders import example_pixels

        return [Case(f"seed{s}", "static", {names[0]: example_pixels(dims, tdt, seed=s).numpy()}) for s in (0, 1)]
    if graph == "audio_encoder":
        from omnisift_edge.export.encoders import example_features

        return [Case(label, "static", {names[0]: example_features(dims, tdt, seed=s).numpy(),
                                       **({names[1]: np.array([valid], np.int64)} if len(names) > 1 else {})})
                for label, s, valid in (("seed0", 0, dims.window_frames), ("seed1", 1, dims.window_frames),
                                        ("short_window", 1, dims.window_frames // 2 + 1))]
    if graph.startswith("compressor"):
        from omnisift_edge.export.compressor import example_inputs

        cases = []
        for label, seed, ties in (("seed0", 0, None), ("seed1", 1, None), ("ties_frames", 0, "frames"),
                                  ("ties_silence", 0, "silence"), ("ties_both", 0, "both")):
            tensors = example_inputs(dims, tdt, seed, ties=ties)
            cases.append(Case(label, "static", {n: t.numpy() for n, t in zip(names, tensors)}))
        from omnisift_edge.export.compressor import SHORT_CHUNKS

        tensors = example_inputs(dims, tdt, 2)[:3] + tuple(torch.tensor([v]) for v in SHORT_CHUNKS[0])
        cases.append(Case("short_chunk", "static", {n: t.numpy() for n, t in zip(names, tensors)}))
        return cases
    if graph == "decoder":
        from omnisift_edge.export.decoder.checks import gapped_positions

        rng = np.random.Generator(np.random.PCG64(0))
        past = {n: np.zeros((1, dims.kv_heads, 0, dims.head_dim), ndt) for n in names[3:]}   # [1, kv, 0, hd]
        outputs = entry.output_names
        cases, position, total = [], 3, 0
        for label, profile, n in (("prefill_empty_past", "prefill", ratio_k), ("prefill", "prefill", ratio_k),
                                  ("decode", "decode", 1)):
            embeds = (rng.standard_normal((1, n, dims.hidden)) * 0.5).astype(ndt)               # [1, n, D]
            positions = gapped_positions(1, n, start=position, rng=rng)                          # [3, 1, n]
            total += n
            feeds = {names[0]: embeds, names[1]: positions, names[2]: np.ones((1, total), np.int64), **past}
            result = dict(zip(outputs, session.run(outputs, feeds)))
            cases.append(Case(label, profile, feeds, result))
            past = {p: result[o] for p, o in zip(names[3:], outputs[1:])}                        # presents -> past
            position = int(positions.max()) + 1
        return cases
    raise UsageError(f"no reference inputs for graph {graph!r}; this omnisift-edge does not know it")


def _batch_cases(manifest: Manifest, graph: str, session, ratio_k: int) -> list[Case]:
    """A batched form's cases (profile `batch`): its one-chunk graph's first case alone (B = 1), and with its
    last (B = 2: a short last window / chunk among whole ones, where the one-chunk graph has one). Each input
    is the rows stacked on the declared `batch_size` axis (concatenated where the one-chunk input has a size-1
    axis there)."""
    one = one_chunk_key(graph)
    rows = _inputs(manifest, one, session, ratio_k)
    single, batched = manifest.graph(one), manifest.graph(graph)
    cases = []
    for label, picked in (("one", rows[:1]), ("pair", [rows[0], rows[-1]])):
        feeds = {}
        for part, whole in zip(single.inputs, batched.inputs):
            axis = whole.axes.index("batch_size")
            arrays = [case.inputs[part.name] for case in picked]
            same_rank = len(part.axes) == len(whole.axes)
            feeds[whole.name] = np.concatenate(arrays, axis) if same_rank else np.stack(arrays, axis)
        cases.append(Case(label, "batch", feeds))
    return cases


def record_reference(folder: Path, progress: Callable[[str], None] = lambda _: None) -> Path:
    """Run every graph of the export in ONNX Runtime (CPU) on generated inputs; save `reference/<graph>.npz`.

    Returns the reference folder. The manifest gets a `reference` section and fresh checksums.
    """
    from omnisift_edge.artifact.manifest import load_manifest, write_manifest
    from omnisift_edge.artifact.onnx_runtime import ort_session

    folder = Path(folder)
    manifest = load_manifest(folder, verify=True)
    ort = require("onnxruntime", extra="export")
    require("torch")
    k = min(manifest.ratios, key=lambda r: r.ratio).kept_total   # K of the main ratio
    graphs = {}
    for graph, entry in manifest.graphs.items():
        progress(f"reference outputs of {graph} in ONNX Runtime")
        session = ort_session(folder / entry.file)
        outputs = entry.output_names
        cases = _inputs(manifest, graph, session, k)
        arrays = {}
        for case in cases:
            result = case.outputs or dict(zip(outputs, session.run(outputs, case.inputs)))
            arrays.update({f"{case.name}/in/{n}": a for n, a in case.inputs.items()})
            arrays.update({f"{case.name}/out/{n}": np.asarray(a) for n, a in result.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        relative = f"{REFERENCE_DIR}/{graph}.npz"
        atomic_write(folder / relative, buffer.getvalue())
        graphs[graph] = {"file": relative, "cases": [{"name": c.name, "profile": c.profile} for c in cases]}
    manifest = manifest.replace(reference={"runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
                                           "seeded": True, "decoder_tokens": k, "graphs": graphs,
                                           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    write_manifest(folder, manifest)
    return folder / REFERENCE_DIR
