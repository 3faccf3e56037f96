"""The batched forms of the per-chunk graphs (issue 23, export/batch_graphs.py): row b of every output equals the
one-chunk graph (and the one-chunk PyTorch module) on row b of every input, a short last chunk / window among
whole ones included; B = 1 equals the one-chunk graph; the weights are the one-chunk graphs' tensors, stored
once; the export writes them (manifest keys, files, checks) unless --no-batch-graphs, and a folder without them
still loads and plans."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from omnisift_edge.artifact.onnx_runtime import ort_session
from omnisift_edge.artifact.tensors import (AUDIO_ENCODER, AUDIO_ENCODER_BATCH, COMPRESSOR, COMPRESSOR_BATCH,
                                            VISION_ENCODER, VISION_ENCODER_BATCH, batch_form_key, is_batch_form,
                                            one_chunk_key)
from omnisift_edge.export import batch_graphs as bg
from omnisift_edge.export import encoders
from omnisift_edge.export.compressor import CompressorGraph, case_inputs, export_compressor, reference_outputs
from omnisift_edge.export.encoders import (AudioWindowEncoder, VisionChunkEncoder, clip_inputs, example_features,
                                           example_pixels, export_audio_encoder, export_vision_encoder)

RESOLUTION = (112, 112)   # one 8x8-patch window per grid step: small, and the window plan still applies


@pytest.fixture(scope="module")
def graphs(tiny_model, tmp_path_factory):
    """The one-chunk and batched graphs of the embedded default at 112x112, ratio 0.25's compressor."""
    from omnisift_edge.export.build import model_dims, ratio_plan
    from omnisift_edge.export.config import ExportConfig

    folder = tmp_path_factory.mktemp("batch")
    dims = model_dims(tiny_model, RESOLUTION)
    plan = ratio_plan(ExportConfig(out=folder / "unused", ratios=(0.25,), resolution=RESOLUTION), dims)
    export_vision_encoder(tiny_model.thinker, dims, folder / "vision_encoder.onnx")
    export_audio_encoder(tiny_model.thinker, dims, folder / "audio_encoder.onnx")
    made = {g.key: g for g in bg.batch_graphs(tiny_model, dims, plan, dtype="fp32", opset=17)}
    with pytest.MonkeyPatch.context() as patch:   # attention in query blocks (as at 448 px), at this small size
        patch.setattr(encoders, "_BLOCK_SCORE_BYTES", 16 << 10)
        for g in made.values():
            g.export(folder / g.file)
    entry = plan[0]
    export_compressor(tiny_model.selector, made["compressor_batch_r0.25"].dims, entry.rho_video, entry.rho_audio,
                      folder / "compressor_r0.25.onnx")
    return folder, dims, made, entry


def _run(path, feeds: dict) -> list[np.ndarray]:
    return ort_session(path).run(None, feeds)


def test_batched_attention_in_query_blocks_equals_each_row_alone(monkeypatch):
    """SegmentAttention of a batch cuts each segment's queries into blocks (cache-sized scores); every row still
    equals the one-sequence attention, ragged segments (padding keys masked) and a per-row key bias included."""
    monkeypatch.setattr(encoders, "_BLOCK_SCORE_BYTES", 1 << 10)
    for cu in ([0, 32, 64], [0, 5, 12, 20]):
        attend = encoders.SegmentAttention(cu)
        assert attend.query_blocks(2) > 1
        q, k, v = torch.randn(3, 3, cu[-1], 2, 8).unbind(0)                       # [B=3, seq, H, hd] each
        bias = torch.tensor([0.0, -1e9, 0.0])[:, None, None, None, None] * (torch.arange(attend.L) >= 3)   # row 1: 3 keys
        with torch.no_grad():
            batch = attend(q, k, v, 0.3, bias)                                   # [3, seq, H, hd]
            for b in range(3):
                np.testing.assert_allclose(batch[b], attend(q[b], k[b], v[b], 0.3, bias[b]), rtol=1e-5, atol=1e-6)


def test_keys_map_both_ways():
    assert batch_form_key("vision_encoder") == "vision_encoder_batch" == VISION_ENCODER_BATCH.name
    assert batch_form_key("compressor_r0.25") == "compressor_batch_r0.25"
    assert one_chunk_key("compressor_batch_r0.25") == "compressor_r0.25"
    assert one_chunk_key("audio_encoder_batch") == "audio_encoder"
    assert is_batch_form("compressor_batch_r1") and not is_batch_form("compressor_r1") and not is_batch_form("decoder")


def test_vision_rows_equal_the_one_chunk_graph_and_module(graphs, tiny_model):
    folder, dims, made, _ = graphs
    rows = np.stack([example_pixels(dims, seed=1).numpy(), clip_inputs(tiny_model.thinker, dims)[0],
                     example_pixels(dims, seed=5).numpy()])                               # [3, chunk_patches, 1176]
    (batch,) = _run(folder / "vision_encoder_batch.onnx", {"pixel_values": rows})
    assert batch.shape == (3, dims.size("chunk_video_tokens"), dims.hidden)
    module = VisionChunkEncoder.from_dims(tiny_model.thinker.visual, dims).eval()
    for b in range(3):
        (one,) = _run(folder / "vision_encoder.onnx", {"pixel_values": rows[b]})
        np.testing.assert_allclose(batch[b], one, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            want = module(torch.from_numpy(rows[b])).numpy()
        np.testing.assert_allclose(batch[b], want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    assert not np.allclose(batch[0], batch[2])                                           # distinct rows
    (single,) = _run(folder / "vision_encoder_batch.onnx", {"pixel_values": rows[1:2]})   # B = 1
    (one,) = _run(folder / "vision_encoder.onnx", {"pixel_values": rows[1]})
    np.testing.assert_allclose(single[0], one, rtol=1e-5, atol=1e-6)


def test_audio_rows_equal_the_one_chunk_graph_with_their_own_valid_frames(graphs, tiny_model):
    folder, dims, _, _ = graphs
    rows = np.stack([example_features(dims, seed=1).numpy(), clip_inputs(tiny_model.thinker, dims)[1],
                     example_features(dims, seed=3).numpy()])                             # [3, 128, 200]
    valid = np.array([200, 101, 5], np.int64)                                            # a whole window, two short ones
    (batch,) = _run(folder / "audio_encoder_batch.onnx", {"input_features": rows, "valid_frames": valid})
    assert batch.shape == (3, dims.window_audio_tokens, dims.hidden)
    for b, n in enumerate(valid):
        (one,) = _run(folder / "audio_encoder.onnx", {"input_features": rows[b], "valid_frames": valid[b:b + 1]})
        np.testing.assert_allclose(batch[b], one, rtol=1e-5, atol=1e-6)
        short = AudioWindowEncoder(tiny_model.thinker.audio_tower, window_frames=int(n)).eval()
        with torch.no_grad():
            want = short(torch.from_numpy(rows[b][:, :n])).numpy()                       # the real frames alone
        np.testing.assert_allclose(batch[b][:len(want)], want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    (single,) = _run(folder / "audio_encoder_batch.onnx", {"input_features": rows[2:], "valid_frames": valid[2:]})
    np.testing.assert_allclose(single[0], batch[2], rtol=1e-5, atol=1e-6)                # B = 1


def test_compressor_rows_keep_what_the_one_chunk_graph_keeps(graphs, tiny_model):
    folder, dims, made, entry = graphs
    kept_dims = made["compressor_batch_r0.25"].dims
    rows = [case_inputs(kept_dims, torch.float32, 4), case_inputs(kept_dims, torch.float32, 0, ties="both"),
            case_inputs(kept_dims, torch.float32, 6, valid=(1, 13))]                      # whole, tied, short last chunk
    rows = [(*r[:2], r[2] + 500 * b, *r[3:]) for b, r in enumerate(rows)]                 # each row its own positions
    feeds = dict(zip(COMPRESSOR_BATCH.input_names, (t.numpy() for t in bg.stack_chunks(rows))))
    kept, positions, index, count = _run(folder / "compressor_batch_r0.25.onnx", feeds)
    assert index.shape == (3, kept_dims.kept_tokens) and count.shape == (3,) and positions.shape[:2] == (3, 3)
    graph = CompressorGraph(tiny_model.selector, entry.rho_video, entry.rho_audio).eval()
    for b, row in enumerate(rows):
        one = _run(folder / "compressor_r0.25.onnx", dict(zip(COMPRESSOR.input_names, (t.numpy() for t in row))))
        assert int(count[b]) == int(one[3][0])
        n = int(count[b])
        np.testing.assert_array_equal(index[b, :n], one[2][0, :n])                       # the contract: identical sets
        np.testing.assert_array_equal(positions[:, b, :n], one[1][:, 0, :n])
        np.testing.assert_array_equal(kept[b, :n], one[0][0, :n])
        with torch.no_grad():
            want_kept, want_positions, want_index = reference_outputs(graph, row)           # the row's real part alone
        np.testing.assert_array_equal(index[b, :n], want_index[0].numpy())
        np.testing.assert_array_equal(positions[:, b, :n], want_positions[:, 0].numpy())
    assert int(count[2]) < int(count[0]) == kept_dims.kept_tokens                          # the short chunk keeps fewer
    s_kept, s_positions, s_index, s_count = _run(folder / "compressor_batch_r0.25.onnx", dict(zip(
        COMPRESSOR_BATCH.input_names, (t.numpy() for t in bg.stack_chunks(rows[2:])))))     # B = 1: the short row alone
    assert s_count.tolist() == count[2:].tolist()
    np.testing.assert_array_equal(s_index[0], index[2])
    np.testing.assert_array_equal(s_positions[:, 0], positions[:, 2])
    np.testing.assert_array_equal(s_kept[0], kept[2])


def test_the_export_checks_pass_and_catch_a_wrong_graph(graphs, tiny_model):
    folder, dims, made, _ = graphs
    for key in ("vision_encoder_batch", "audio_encoder_batch", "compressor_batch_r0.25"):
        check = made[key].validate(folder / made[key].file)
        assert check.ok, (key, check)
    assert made["compressor_batch_r0.25"].validate(folder / "compressor_batch_r0.25.onnx").cases == 6
    got, batch = bg.run_rows(folder / "vision_encoder_batch.onnx", [example_pixels(dims, seed=s).numpy() for s in (1, 2)])
    module = VisionChunkEncoder.from_dims(tiny_model.thinker.visual, dims).eval()
    assert bg.check_rows(got, batch, [module] * 2, "fp32").ok
    assert not bg.check_rows(got[::-1].copy(), batch, [module] * 2, "fp32").ok           # rows swapped: caught


def test_graphs_are_static_but_the_batch_axis(graphs):
    from omnisift_edge.export.lint import has_errors, lint_model

    folder, dims, made, _ = graphs
    for key, spec in (("vision_encoder_batch", VISION_ENCODER_BATCH), ("audio_encoder_batch", AUDIO_ENCODER_BATCH),
                      ("compressor_batch_r0.25", COMPRESSOR_BATCH)):
        proto = onnx.load(str(folder / f"{key}.onnx"))
        ops = {n.op_type for n in proto.graph.node}
        assert not ops & {"NonZero", "Loop", "If", "Scan"}, (key, ops)
        for declared, actual in zip(spec.inputs + spec.outputs, list(proto.graph.input) + list(proto.graph.output)):
            shape = [d.dim_value or d.dim_param for d in actual.type.tensor_type.shape.dim]
            assert shape == declared.shape(made[key].dims), (key, declared.name, shape)
            assert shape.count("batch_size") == 1
        assert not has_errors(lint_model(folder / f"{key}.onnx")), key
    one_chunk = [[d.dim_value for d in t.type.tensor_type.shape.dim] for t in
                 onnx.load(str(folder / "vision_encoder.onnx")).graph.input]
    assert one_chunk == [VISION_ENCODER.inputs[0].shape(dims)]                             # one-chunk graph unchanged
    assert [t.name for t in onnx.load(str(folder / "audio_encoder.onnx")).graph.input] == AUDIO_ENCODER.input_names


def test_the_weights_are_the_one_chunk_graphs_and_are_stored_once(graphs, tmp_path):
    import shutil

    from omnisift_edge.export.shared_weights import SHARED_FILE, share_weights

    folder = tmp_path / "share"
    shutil.copytree(graphs[0], folder)
    before = {p.name: {t.name: t.raw_data for t in onnx.load(str(p)).graph.initializer if len(t.raw_data) >= 1024}
              for p in folder.glob("*.onnx")}
    for key in ("vision_encoder", "audio_encoder"):                                     # same bytes, tensor for tensor
        assert sorted(before[f"{batch_form_key(key)}.onnx"].values()) == sorted(before[f"{key}.onnx"].values()), key
    # the compressor: the selector's projections too; only nn.MultiheadAttention's packed in-projection differs (the
    # one-chunk trace folds it into transposed q and kv slices, the batched one keeps it whole: 3 h^2, small)
    one, batch = (set(before[f"{g}.onnx"].values()) for g in ("compressor_r0.25", "compressor_batch_r0.25"))
    assert len(one & batch) >= 4 and sum(map(len, one - batch)) == sum(map(len, batch - one))
    shared = share_weights(folder)
    bytes_of = dict(shared.graph_bytes)
    for one_chunk, batched in (("vision_encoder.onnx", "vision_encoder_batch.onnx"),
                               ("audio_encoder.onnx", "audio_encoder_batch.onnx")):
        assert {one_chunk, batched} <= set(shared.graphs) and bytes_of[one_chunk] == bytes_of[batched] > 0
    assert {"compressor_r0.25.onnx", "compressor_batch_r0.25.onnx"} <= set(shared.graphs)
    distinct = sum(len(t) for t in set().union(*(d.values() for d in before.values())))
    assert shared.tensor_bytes == distinct < sum(bytes_of.values())                            # each tensor once
    assert (folder / SHARED_FILE).stat().st_size < shared.tensor_bytes + (1 << 20)
    feeds = {"pixel_values": example_pixels(graphs[1], seed=2).numpy()[None]}
    np.testing.assert_array_equal(_run(folder / "vision_encoder_batch.onnx", feeds)[0],
                                  _run(graphs[0] / "vision_encoder_batch.onnx", feeds)[0])  # computes the same after


def test_the_export_writes_them_into_the_manifest(small_export):
    from omnisift_edge.artifact.manifest import as_manifest, graph_entry, read_manifest
    from omnisift_edge.export.shared_weights import SHARED_FILE

    folder = small_export()
    manifest = read_manifest(folder, verify=True)
    graphs, checks = manifest["graphs"], manifest["validation"]
    for one in ("vision_encoder", "audio_encoder", "compressor_r1", "compressor_r0.25"):
        key = batch_form_key(one)
        entry = graphs[key]
        assert entry["file"] == f"{key}.onnx" and (folder / entry["file"]).is_file() and entry["file"] in manifest["files"]
        assert entry["opset"] == graphs[one]["opset"] and checks[key]["ok"]
        assert [t["name"] for t in entry["inputs"]] == [t["name"] for t in graphs[one]["inputs"]]
        assert entry["inputs"][0]["shape"][0] == "batch_size" and entry["outputs"][0]["shape"][0] == "batch_size"
    spec_entry = graph_entry(VISION_ENCODER_BATCH, as_manifest(manifest).dims, "vision_encoder_batch.onnx", 17, "fp32")
    assert {k: graphs["vision_encoder_batch"][k] for k in spec_entry} == spec_entry          # the same helper's entry
    assert graphs["compressor_batch_r0.25"]["rho_audio"] == graphs["compressor_r0.25"]["rho_audio"]
    assert checks["compressor_batch_r0.25"]["cases"] == 6 and checks["compressor_batch_r0.25"]["index_equal"]
    assert {"vision_encoder.onnx", "vision_encoder_batch.onnx"} <= set(manifest["shared_weights"]["graphs"])
    assert graphs["vision_encoder_batch"]["external_data"] is True and (folder / SHARED_FILE).is_file()
    assert manifest["export_config"]["batch_graphs"] is True
    assert all(not findings for findings in manifest["lint"].values())


def test_no_batch_graphs_writes_none_and_the_folder_still_runs_and_plans(tmp_path):
    from click.testing import CliRunner

    from omnisift_edge.artifact.manifest import read_manifest
    from omnisift_edge.cli import main
    from omnisift_edge.engines.plan import BuildConfig, plan_build

    out = tmp_path / "plain"
    result = CliRunner().invoke(main, ["export", "-o", str(out), "--resolution", "56x56", "--ratio", "1",
                                       "--no-batch-graphs"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out, verify=True)
    assert not any(is_batch_form(g) for g in manifest["graphs"]) and not list(out.glob("*_batch*"))
    assert manifest["export_config"]["batch_graphs"] is False
    plan = plan_build(BuildConfig(out, target="rtx", max_streams=2), write=False)          # a pool build without them
    assert not any(is_batch_form(e.graph) for e in plan.engines)
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    OmniSession(RuntimeConfig(out)).close()                                                 # every graph it runs opens
