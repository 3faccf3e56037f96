"""TrainConfig validation, the cheap import, the schedule."""

from __future__ import annotations

import subprocess
import sys

import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.model.load import ModelSource
from omnisift_edge.train import TrainConfig


def test_import_is_light():
    code = "import sys, omnisift_edge.train; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_defaults_and_derived_values(tmp_path):
    cfg = TrainConfig(data=tmp_path / "d.jsonl", out=tmp_path / "o")
    assert (cfg.ratio, cfg.lr, cfg.llm, cfg.on_bad_line, cfg.resolution) == (0.25, 1e-5, "frozen", "skip", (448, 448))
    assert cfg.torch_dtype_name == "fp32" and cfg.global_batch == 1
    assert TrainConfig(data="d", out="o", source=ModelSource(device="cuda")).torch_dtype_name == "bf16"
    assert TrainConfig(data="d", out="o", resolution="56x112").resolution == (56, 112)
    explicit = TrainConfig(data="d", out="o", video_drop=0.5, audio_drop=0.8)
    assert explicit.ratio is None and explicit.fingerprint()["audio_drop"] == 0.8


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=1.0), "nothing to learn"),
    (dict(ratio=0.0), "ratio must be in"),
    (dict(ratio=0.3, video_drop=0.5, audio_drop=0.3), "not both"),
    (dict(video_drop=0.5), "go together"),
    (dict(video_drop=0.5, audio_drop=0.0), "nothing to learn"),
    (dict(resolution=(450, 450)), "multiple of 28"),
    (dict(resolution="big"), "448x448"),
    (dict(lr=0.0), "--lr"),
    (dict(batch_size=0), "--batch-size"),
    (dict(grad_accum=1.5), "--grad-accum"),
    (dict(epochs=0), "--epochs"),
    (dict(max_steps=-1), "--max-steps"),
    (dict(workers=-1), "--workers"),
    (dict(workers=True), "--workers"),
    (dict(llm="half"), "--llm must be one of frozen, full, lora"),
    (dict(dtype="fp16"), "loss scaling"),
    (dict(on_bad_line="ignore"), "--on-bad-line"),
    (dict(save_every=-1), "--save-every"),
    (dict(warmup_ratio=1.0), "--warmup-ratio"),
    (dict(selector_hidden=30, selector_heads=4), "divisible"),
    (dict(max_grad_norm=0.0), "--max-grad-norm"),
    (dict(system_prompt=3), "--system-prompt"),
])
def test_bad_settings_name_the_fix(kwargs, match):
    with pytest.raises(UsageError, match=match):
        TrainConfig(data="d.jsonl", out="o", **kwargs)


def test_schedule_warms_up_then_decays_to_zero():
    from omnisift_edge.train.step import lr_lambda

    f = lr_lambda(total=100, warmup=10)
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(1 / 11) and values[9] == pytest.approx(10 / 11) and values[10] == 1.0
    assert all(a >= b for a, b in zip(values[10:], values[11:])) and values[-1] < 1e-3
