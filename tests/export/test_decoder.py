"""decoder.onnx: Optimum export of the thinker LLM; ORT equals PyTorch on prefill + decode."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.export.decoder import past_present_config as decoder_config  # noqa: E402
from omnisift_edge.export.decoder import decoder_dims  # noqa: E402
from omnisift_edge.export.decoder.past_present import export_decoder, validate_decoder  # noqa: E402
from omnisift_edge.artifact.onnx_runtime import ort_session  # noqa: E402
from omnisift_edge.artifact.tensors import DYNAMIC_AXES, Dims, decoder_graph  # noqa: E402

# encoder sizes are irrelevant to the decoder; decoder_dims fills in the LLM's
BASE = Dims(hidden=64, patch_dim=1176, grid_h=8, grid_w=6, spatial_merge=2, grids_per_chunk=2, n_mels=128,
            window_frames=200, window_audio_tokens=50)
ONNX_TYPES = {"float": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}


@pytest.fixture(scope="module")
def thinker(tiny_model):
    return tiny_model.thinker


@pytest.fixture(scope="module")
def dims(thinker):
    return decoder_dims(thinker, BASE)


@pytest.fixture(scope="module")
def fp32_graph(thinker, dims, tmp_path_factory):
    return export_decoder(thinker, dims, tmp_path_factory.mktemp("fp32") / "decoder.onnx")


def _value_infos(values):
    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]   # dim_param if dynamic

    return {v.name: (v.type.tensor_type.elem_type, shape(v)) for v in values}


def test_graph_matches_the_declaration(fp32_graph, dims):
    model = onnx.load(str(fp32_graph))
    graph = decoder_graph(dims.num_layers)
    want_in = {t.name: (ONNX_TYPES[t.dtype], t.shape(dims)) for t in graph.inputs}
    want_out = {t.name: (ONNX_TYPES[t.dtype], t.shape(dims)) for t in graph.outputs}
    assert [v.name for v in model.graph.input] == graph.input_names
    assert [v.name for v in model.graph.output] == graph.output_names
    assert _value_infos(model.graph.input) == want_in
    assert _value_infos(model.graph.output) == want_out
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["omnisift_edge.graph"] == "decoder" and meta["omnisift_edge.dtype"] == "fp32"
    assert int(meta["omnisift_edge.max_context"]) == 32768 and model.opset_import[0].version == 17
    assert not fp32_graph.with_name("decoder.onnx.data").exists()   # tiny: no external data


def test_prefill_on_empty_cache_then_decode_equals_torch(fp32_graph, thinker):
    check = validate_decoder(fp32_graph, thinker, dtype="fp32")
    assert check.chunk_lengths == (12, 7) and len(check.logits_max_abs) == 4   # 2 prefill chunks + 2 decode
    assert (check.atol, check.rtol) == (1e-4, 1e-3)
    assert check.ok and check.tokens_match, check
    assert max(check.logits_max_abs) < 1e-5 and max(check.present_max_abs) < 1e-5, check


def test_batch_of_two(fp32_graph, thinker):
    check = validate_decoder(fp32_graph, thinker, batch_size=2, chunk_lengths=(9,), decode_steps=2, seed=1)
    assert check.ok and check.tokens_match, check
    assert all(len(tokens) == 2 for tokens in check.onnx_tokens)


def _embed(thinker, ids):
    with torch.inference_mode():
        return thinker.get_input_embeddings()(torch.tensor([ids])).numpy()                 # [1, n, D]


def test_free_running_greedy_tokens_equal_torch(fp32_graph, thinker, dims):
    """The runtime's loop: an empty past first, then each call's presents; ORT picks its own tokens."""
    from transformers import DynamicCache

    rng = np.random.Generator(np.random.PCG64(7))
    prompt = (rng.standard_normal((1, 10, dims.hidden)) * 0.5).astype(np.float32)        # [1, 10, D]
    positions = decoder_config.gapped_positions(1, 10, start=0, rng=rng)                  # [3, 1, 10]
    graph, session = decoder_graph(dims.num_layers), ort_session(fp32_graph)

    past = [np.zeros((1, dims.kv_heads, 0, dims.head_dim), np.float32)] * (2 * dims.num_layers)
    embeds, pos, onnx_tokens, total = prompt, positions, [], 0
    for _ in range(5):
        total += embeds.shape[1]
        out = session.run(None, dict(zip(graph.input_names, [embeds, pos, np.ones((1, total), np.int64), *past])))
        past = out[1:]                                                                    # [1, kv, total, hd]
        onnx_tokens.append(int(out[0][0, -1].argmax()))
        embeds = _embed(thinker, [onnx_tokens[-1]])
        pos = np.full((3, 1, 1), pos.max() + 1, dtype=np.int64)

    cache, embeds, pos, torch_tokens = DynamicCache(config=thinker.config.text_config), prompt, positions, []
    for _ in range(5):
        with torch.inference_mode():
            hidden = thinker.model(inputs_embeds=torch.from_numpy(embeds), position_ids=torch.from_numpy(pos),
                                   past_key_values=cache, use_cache=True).last_hidden_state
            torch_tokens.append(int(thinker.lm_head(hidden[:, -1]).argmax()))
        embeds = _embed(thinker, [torch_tokens[-1]])
        pos = np.full((3, 1, 1), pos.max() + 1, dtype=np.int64)
    assert onnx_tokens == torch_tokens


def test_fp16_graph_runs_in_ort_within_a_looser_tolerance(thinker, dims, tmp_path):
    path = export_decoder(thinker, dims, tmp_path / "decoder.onnx", dtype="fp16")
    graph = decoder_graph(dims.num_layers)
    types = {i.name: i.type for i in ort_session(path).get_inputs()}
    assert {types[t.name] for t in graph.inputs if t.dtype == "float"} == {"tensor(float16)"}
    assert {types[t.name] for t in graph.inputs if t.dtype == "int64"} == {"tensor(int64)"}
    assert next(thinker.parameters()).dtype == torch.float32   # the caller's model was not cast
    check = validate_decoder(path, thinker, dtype="fp16", decode_steps=5)
    assert (check.atol, check.rtol) == (2e-2, 2e-2) and check.dtype == "fp16"
    assert check.ok and check.tokens_match, check
    assert max(check.logits_max_abs) < 2e-3, check   # measured ~4e-4
    with pytest.raises(UsageError, match="fp16 graph"):
        validate_decoder(path, thinker, dtype="fp32")


def test_custom_config_is_registered_with_optimum(thinker):
    from optimum.exporters.tasks import TasksManager

    tasks = TasksManager.get_supported_tasks_for_model_type(
        decoder_config.MODEL_TYPE, "onnx", library_name="transformers")
    assert decoder_config.TASK in tasks
    constructor = TasksManager.get_exporter_config_constructor(
        "onnx", model=decoder_config.ThinkerDecoder(thinker), task=decoder_config.TASK,
        library_name="transformers")
    config = constructor(thinker.config)
    assert isinstance(config, decoder_config.ThinkerDecoderOnnxConfig)
    assert list(config.inputs) == decoder_graph(2).input_names
    assert config.outputs == {t.name: {i: a for i, a in enumerate(t.axes) if a in DYNAMIC_AXES}
                              for t in decoder_graph(2).outputs}
    dummy = config.generate_dummy_inputs(framework="pt")
    assert dummy[decoder_config.POSITIONS].shape == (3, 2, 5) and dummy[decoder_config.MASK].shape == (2, 12)
    assert dummy[decoder_config.PAST][1][0].shape == (2, 2, 7, 16)     # [B, kv, P, hd] of layer 1


def test_external_data_when_asked(thinker, dims, tmp_path):
    path = export_decoder(thinker, dims, tmp_path / "decoder.onnx", external_data=True, check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "decoder.onnx.data"]
    assert path.stat().st_size < 1 << 20 < path.with_name("decoder.onnx.data").stat().st_size
    assert validate_decoder(path, thinker, chunk_lengths=(5,), decode_steps=1).ok
    # a later export without external data removes the stale data file
    export_decoder(thinker, dims, path, check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx"]


def _boom(*args, **kwargs):
    raise RuntimeError("killed mid-export")


def test_failure_mid_export_leaves_no_file(thinker, dims, tmp_path, monkeypatch):
    import optimum.exporters.onnx.convert as convert

    monkeypatch.setattr(convert, "validate_model_outputs", _boom)   # after the graph was written
    with pytest.raises(RuntimeError, match="killed"):
        export_decoder(thinker, dims, tmp_path / "out" / "decoder.onnx", external_data=True)
    assert list((tmp_path / "out").iterdir()) == []                 # no graph, no data, no staging folder


def test_failure_keeps_an_earlier_graph(fp32_graph, thinker, dims, tmp_path, monkeypatch):
    import optimum.exporters.onnx.convert as convert

    target = tmp_path / "decoder.onnx"
    target.write_bytes(fp32_graph.read_bytes())
    monkeypatch.setattr(convert, "validate_model_outputs", _boom)
    with pytest.raises(RuntimeError):
        export_decoder(thinker, dims, target)
    assert target.read_bytes() == fp32_graph.read_bytes() and len(list(tmp_path.iterdir())) == 1


def test_usage_errors_name_the_fix(thinker, dims, tmp_path):
    with pytest.raises(UsageError, match="fp32, fp16"):
        export_decoder(thinker, dims, tmp_path / "d.onnx", dtype="int8")
    with pytest.raises(UsageError, match="decoder_dims"):
        export_decoder(thinker, Dims(**{**dims.__dict__, "kv_heads": 4}), tmp_path / "d.onnx")
    with pytest.raises(UsageError, match="max_position_embeddings"):
        export_decoder(thinker, dims, tmp_path / "d.onnx", max_context=10**6)
    assert list(tmp_path.iterdir()) == []


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


REAL_7B_TEXT = {"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
                "intermediate_size": 18944, "vocab_size": 152064, "num_hidden_layers": 2,
                "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}}


@pytest.mark.slow
def test_seven_b_widths_export_with_external_data(tmp_path):
    """2 layers at Qwen2.5-Omni-7B widths: a 4.0 GB graph (lm_head alone is 2.2 GB in fp32).

    Measured here (2 CPUs): ~20 s to build, ~110 s to export, 13 GB peak RSS.
    """
    if not os.path.exists("/proc/meminfo") or _available_bytes() < 16 * 2**30:
        pytest.skip("needs 16 GB of free memory (13 GB peak measured) for a 2-layer 7B-width export")
    import transformers
    from transformers.modeling_utils import no_init_weights

    from omnisift_edge.model.tiny import tiny_thinker_config_dict

    cfg_dict = tiny_thinker_config_dict()
    cfg_dict.pop("model_type")
    cfg_dict["text_config"].update(REAL_7B_TEXT)
    cfg_dict["vision_config"]["out_hidden_size"] = cfg_dict["audio_config"]["output_dim"] = 3584
    config = transformers.Qwen2_5OmniThinkerConfig(**cfg_dict)
    config._attn_implementation = "sdpa"
    with no_init_weights():
        big = transformers.Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():   # uninitialised memory may hold NaNs: fill, cheaply
        for param in big.parameters():
            param.normal_(0, 0.02, generator=generator) if param.ndim > 1 else param.fill_(1.0)
    dims = decoder_dims(big, Dims(**{**BASE.__dict__, "hidden": 3584}))
    assert (dims.kv_heads, dims.head_dim, dims.vocab) == (4, 128, 152064)

    path = export_decoder(big, dims, tmp_path / "decoder.onnx", check=False)
    data = path.with_name("decoder.onnx.data")
    assert data.stat().st_size > 2**31 and path.stat().st_size < 1 << 20
    check = validate_decoder(path, big, chunk_lengths=(6,), decode_steps=1)
    assert check.ok and check.tokens_match, check
