"""The audio selector: size and names of the reference, batched == reference per row, loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnisift_edge.compress.selector import AudioSelector, SelectorConfig, load_selector_state
from omnisift_edge.errors import UsageError

from .layouts import tiny_selector


class TransformerAudioSelector(nn.Module):
    """The authors' module, transcribed here independently of omnisift_edge.compat."""

    def __init__(self, d_model=3584, nhead=8, num_layers=1, hidden_dim=512):
        super().__init__()
        self.v_proj = nn.Linear(d_model, hidden_dim)
        self.a_proj = nn.Linear(d_model, hidden_dim)
        self.v_norm = nn.LayerNorm(hidden_dim)
        self.a_norm = nn.LayerNorm(hidden_dim)
        self.post_attn_norm = nn.LayerNorm(hidden_dim)
        self.cross_attn = nn.MultiheadAttention(embed_dim=hidden_dim, num_heads=nhead, batch_first=True)
        self.score_head = nn.Sequential(nn.Linear(hidden_dim, hidden_dim // 2), nn.SiLU(), nn.Linear(hidden_dim // 2, 1))

    def forward(self, v_embeds, a_embeds):
        v = self.v_norm(self.v_proj(v_embeds)).unsqueeze(0)
        a = self.a_norm(self.a_proj(a_embeds)).unsqueeze(0)
        attn_output, _ = self.cross_attn(query=a, key=v, value=v)
        x = self.post_attn_norm(attn_output + a)
        return torch.sigmoid(self.score_head(x).squeeze(0).squeeze(-1))


def test_default_size_and_names_match_the_reference():
    ours = AudioSelector()
    assert sum(p.numel() for p in ours.parameters()) == 4_856_321
    reference = TransformerAudioSelector()
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_batched_forward_equals_the_reference_per_row(selector):
    reference = TransformerAudioSelector(32, 4, 1, 16)
    reference.load_state_dict(selector.state_dict())
    reference.eval()
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(3, 11, 32, generator=gen)
    audio = torch.randn(3, 7, 32, generator=gen)
    valid = torch.ones(3, 11, dtype=torch.bool)
    valid[1, 6:] = False    # row 1 has 6 real context tokens, the rest is padding
    valid[2, :2] = False
    with torch.no_grad():
        ours = selector(video, audio, valid)
        assert ours.shape == (3, 7)
        for b in range(3):
            expected = reference(video[b, valid[b]], audio[b])
            torch.testing.assert_close(ours[b], expected, rtol=0, atol=2e-6)
        # no mask == all valid
        torch.testing.assert_close(selector(video, audio), selector(video, audio, torch.ones_like(valid)))
        # a row without any valid context gives finite scores (to be ignored) rather than NaN
        assert torch.isfinite(selector(video, audio, torch.zeros_like(valid))).all()


def test_gradients_reach_every_parameter(selector):
    selector.train()
    scores = selector(torch.randn(2, 5, 32), torch.randn(2, 4, 32))
    scores.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in selector.parameters())


def test_config_validation():
    with pytest.raises(UsageError, match="layers=1"):
        SelectorConfig(layers=2)
    with pytest.raises(UsageError, match="divisible"):
        SelectorConfig(hidden=512, heads=7)
    with pytest.raises(UsageError, match="even"):
        SelectorConfig(hidden=15, heads=5)
    with pytest.raises(UsageError, match="positive"):
        SelectorConfig(d_model=0)


def test_load_from_dict_and_files_with_prefixes(tmp_path):
    source = tiny_selector(d_model=24, hidden=16, heads=2, seed=3)
    state = source.state_dict()
    video, audio = torch.randn(1, 5, 24), torch.randn(1, 6, 24)
    expected = source(video, audio)
    full = {f"thinker.compressor.{k}": v for k, v in state.items()}
    full["thinker.model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)   # the rest of a checkpoint: ignored
    torch.save({f"compressor.{k}": v for k, v in state.items()}, tmp_path / "c.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in full.items()}, str(tmp_path / "model.safetensors"))
    for src in (state, full, tmp_path / "c.pt", str(tmp_path / "model.safetensors")):
        loaded = load_selector_state(src, heads=2)
        assert loaded.cfg == SelectorConfig(d_model=24, hidden=16, heads=2)
        assert not loaded.training
        torch.testing.assert_close(loaded(video, audio), expected)
    # heads come from cfg when given, default 8 otherwise (widths are inferred)
    assert load_selector_state(state, SelectorConfig(d_model=24, hidden=16, heads=4)).cfg.heads == 4
    assert load_selector_state(state).cfg.heads == 8


def test_load_keeps_a_uniform_checkpoint_dtype():
    state = {k: v.to(torch.bfloat16) for k, v in tiny_selector().state_dict().items()}
    assert load_selector_state(state, heads=4).v_proj.weight.dtype == torch.bfloat16


def test_load_errors_name_the_fix(tmp_path):
    state = tiny_selector().state_dict()
    with pytest.raises(UsageError, match="config says"):
        load_selector_state(state, SelectorConfig(d_model=3584, hidden=16, heads=4))
    with pytest.raises(UsageError, match="missing"):
        load_selector_state({k: v for k, v in state.items() if not k.startswith("score_head")}, heads=4)
    with pytest.raises(UsageError, match="unexpected"):
        load_selector_state({**state, "extra.weight": torch.zeros(1)}, heads=4)
    with pytest.raises(UsageError, match="shape"):
        load_selector_state({**state, "score_head.0.weight": torch.zeros(5, 16)}, heads=4)
    with pytest.raises(UsageError, match="a_proj"):
        load_selector_state({**state, "a_proj.weight": torch.zeros(16, 40)}, heads=4)
    with pytest.raises(UsageError, match="v_proj.weight"):
        load_selector_state({"foo": torch.zeros(1)})
    with pytest.raises(UsageError, match="does not exist"):
        load_selector_state(tmp_path / "missing.safetensors")
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(UsageError, match="file type"):
        load_selector_state(tmp_path / "x.onnx")
    with pytest.raises(UsageError, match="divisible"):
        load_selector_state(state, heads=3)


def test_the_head_count_recorded_with_a_file_is_found(tmp_path):
    from safetensors.torch import save_file

    from omnisift_edge.compress.selector import recorded_heads
    from omnisift_edge.model.load import ModelSource, load_model

    selector = AudioSelector(SelectorConfig(d_model=64, hidden=32, heads=2))
    state = {f"thinker.compressor.{k}": v for k, v in selector.state_dict().items()}
    plain, tagged = tmp_path / "plain" / "c.safetensors", tmp_path / "tagged" / "c.safetensors"
    for path in (plain, tagged):
        path.parent.mkdir()
    save_file(state, str(plain))
    save_file(state, str(tagged), metadata={"heads": "2"})
    assert recorded_heads(plain) is None and recorded_heads(tagged) == 2
    loaded = load_model(ModelSource(compressor=tagged)).selector
    assert loaded.cfg.heads == 2
    assert load_model(ModelSource(compressor=plain)).selector.cfg.heads == 8     # nothing recorded: 8
    # the sidecar compressor.json (train writes it) counts when the metadata lacks the heads
    (plain.parent / "compressor.json").write_text('{"heads": 2}')
    assert recorded_heads(plain) == 2
    (plain.parent / "compressor.json").write_text('{"heads": 0}')
    with pytest.raises(UsageError, match="--compressor-heads"):
        recorded_heads(plain)
    (plain.parent / "compressor.json").write_text("[not json")
    with pytest.raises(UsageError, match="--compressor-heads"):
        recorded_heads(plain)
    # an explicit --compressor-heads wins over what was recorded
    assert load_model(ModelSource(compressor=tagged, selector_heads=4)).selector.cfg.heads == 4
