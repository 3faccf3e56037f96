"""Loading thinkers and selectors from the three folder kinds, the default, and broken folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.load import ModelSource, load_model  # noqa: E402
from omnisift_edge.model.spec import TokenIds  # noqa: E402


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_default_is_seeded_and_has_real_ids(tiny_model):
    again = load_model(ModelSource(seed=0))
    other = load_model(ModelSource(seed=1))
    assert _same_state(tiny_model.thinker, again.thinker)
    assert not _same_state(tiny_model.thinker, other.thinker)
    assert _same_state(tiny_model.selector, again.selector)
    ids = TokenIds()
    cfg = tiny_model.thinker.config
    assert (cfg.audio_token_index, cfg.video_token_index) == (ids.audio, ids.video)
    assert tiny_model.tokenizer.convert_tokens_to_ids("<|VIDEO|>") == ids.video
    assert tiny_model.tokenizer.convert_tokens_to_ids("<|audio_bos|>") == ids.audio_bos
    assert cfg.text_config.vocab_size == 152064
    assert tiny_model.spec.n_mels == 128 and tiny_model.spec.spatial_merge_size == 2


def test_seeded_weights_match_a_fixed_fingerprint_of_the_generator():
    """Same seed, same weights everywhere: the fill comes from numpy's PCG64, not torch's RNG."""
    import numpy as np

    from omnisift_edge.model.tiny import seeded_fill_

    layer = torch.nn.Linear(3, 2)
    seeded_fill_(layer, seed=7, std=1.0)
    rng = np.random.Generator(np.random.PCG64(7))
    bias = rng.standard_normal((2,), dtype=np.float32)        # "bias" sorts before "weight"
    weight = rng.standard_normal((2, 3), dtype=np.float32)
    assert np.array_equal(layer.bias.detach().numpy(), bias)
    assert np.array_equal(layer.weight.detach().numpy(), weight)


@pytest.mark.parametrize("kind", ["full", "thinker", "omnisift"])
def test_folder_kinds_load_the_same_thinker(tiny_model, tiny_checkpoints, kind):
    model = load_model(ModelSource(path=tiny_checkpoints[kind]))
    assert _same_state(model.thinker, tiny_model.thinker)
    if kind == "full":
        assert model.selector is None          # a base Qwen2.5-Omni has no compressor
    else:
        assert _same_state(model.selector, tiny_model.selector)
        assert model.selector.cfg == tiny_model.selector.cfg     # heads come from config.json
    assert model.tokenizer("<|im_start|>hi").input_ids[0] == TokenIds().im_start


def test_compressor_flag_overrides_and_width_is_checked(tiny_checkpoints, tmp_path):
    from safetensors.torch import save_file

    from omnisift_edge.compress.selector import AudioSelector, SelectorConfig

    good = AudioSelector(SelectorConfig(d_model=64, hidden=32, heads=4))
    save_file({"thinker.compressor." + k: v.contiguous() for k, v in good.state_dict().items()},
              str(tmp_path / "good.safetensors"))
    model = load_model(ModelSource(path=tiny_checkpoints["full"], compressor=tmp_path / "good.safetensors",
                                   selector_heads=4))
    assert _same_state(model.selector, good)

    wide = AudioSelector(SelectorConfig(d_model=96, hidden=32, heads=4))
    save_file(wide.state_dict(), str(tmp_path / "wide.safetensors"))
    with pytest.raises(UsageError, match="width 96"):
        load_model(ModelSource(path=tiny_checkpoints["full"], compressor=tmp_path / "wide.safetensors",
                               selector_heads=4))


def test_bf16_load_keeps_dtype(tiny_checkpoints):
    model = load_model(ModelSource(path=tiny_checkpoints["omnisift"], dtype="bf16"))
    assert {p.dtype for p in model.thinker.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.selector.parameters()} == {torch.bfloat16}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_and_broken_folders_are_usage_errors(tiny_checkpoints, tmp_path):
    src = tiny_checkpoints["full"]
    with pytest.raises(UsageError, match="does not exist"):
        load_model(ModelSource(path=tmp_path / "nope"))

    no_config = _copy(src, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(UsageError, match="no config.json"):
        load_model(ModelSource(path=no_config))

    bad_json = _copy(src, tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_model(ModelSource(path=bad_json))

    other = _copy(src, tmp_path / "other")
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError, match="needs Qwen2.5-Omni"):
        load_model(ModelSource(path=other))

    missing_shard = _copy(src, tmp_path / "missing_shard")
    sorted(missing_shard.glob("model-*.safetensors"))[-1].unlink()
    with pytest.raises(UsageError, match="incomplete"):
        load_model(ModelSource(path=missing_shard))

    truncated = _copy(src, tmp_path / "truncated")
    shard = sorted(truncated.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(UsageError, match="corrupt or partial"):
        load_model(ModelSource(path=truncated))

    mismatch = _copy(src, tmp_path / "mismatch")
    config = json.loads((mismatch / "config.json").read_text())
    config["thinker_config"]["text_config"]["intermediate_size"] = 96
    (mismatch / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="do not match"):
        load_model(ModelSource(path=mismatch))

    with pytest.raises(UsageError, match="--dtype"):
        ModelSource(dtype="int3")


def test_missing_weights_are_named(tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    partial = _copy(tiny_checkpoints["thinker"], tmp_path / "partial")
    shard = sorted(partial.glob("model-*.safetensors"))[-1]
    state = load_file(str(shard))
    dropped = sorted(k for k in state if not k.startswith("compressor."))[0]
    del state[dropped]
    save_file(state, str(shard))
    with pytest.raises(UsageError, match="missing 1 thinker weights"):
        load_model(ModelSource(path=partial))


def test_loading_does_not_need_twice_the_model_in_memory(tiny_checkpoints):
    """Peak resident memory while loading stays well under 2x the weights (copy-in, no 2nd copy)."""
    folder = tiny_checkpoints["full"]
    script = f"""
import resource, torch, transformers, safetensors
from omnisift_edge.model.load import ModelSource, load_model
import omnisift_edge.compress.selector, omnisift_edge.model.tokenizer
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = load_model(ModelSource(path={str(folder)!r}))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
weights = sum(p.numel() * p.element_size() for p in model.thinker.parameters())
print((peak - before) * 1024 / weights)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert ratio < 1.6, f"loading peaked at {ratio:.2f}x the weights"


def test_low_precision_loads_keep_rotary_tables_in_fp32(tiny_checkpoints):
    """Only parameters are cast: bf16 rotary angles at position 5000 would be off by ~0.5 rad."""
    for source in (ModelSource(dtype="bf16"), ModelSource(path=tiny_checkpoints["thinker"], dtype="fp16")):
        model = load_model(source)
        buffers = dict(model.thinker.named_buffers())
        assert buffers["model.rotary_emb.inv_freq"].dtype == torch.float32
        assert buffers["visual.rotary_pos_emb.inv_freq"].dtype == torch.float32
        assert {p.dtype for p in model.thinker.parameters()} == {source_dtype(source)}


def source_dtype(source):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[source.dtype]


def test_mapped_weights_view_the_checkpoint_or_a_converted_scratch_copy(tmp_path):
    """model/mapped.py: tensors already in the dtype are views of the file; others are converted once
    into a scratch file that is unlinked at once (nothing left in the folder)."""
    import torch
    from safetensors.torch import save_file

    from omnisift_edge.model.mapped import MappedWeights

    tensors = {"a": torch.randn(3, 5).half(), "b": torch.randn(7).bfloat16(), "c": torch.randn(2, 2).half()}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mapped = MappedWeights(tmp_path / "w.safetensors", torch.float16, lambda key: key != "c", scratch)
    assert set(mapped.converted) == {"b"} and list(scratch.iterdir()) == []
    assert torch.equal(mapped.tensor("a"), tensors["a"]) and mapped.tensor("a").dtype == torch.float16
    assert torch.equal(mapped.tensor("b"), tensors["b"].half()) and tuple(mapped.tensor("b").shape) == (7,)
    view = mapped.tensor("a")
    view.mul_(2)                                           # copy-on-write: the file keeps its bytes
    assert torch.equal(MappedWeights(tmp_path / "w.safetensors", torch.float16, lambda k: False,
                                     scratch).tensor("a"), tensors["a"])
