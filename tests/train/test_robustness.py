"""What a resume finds after crashes, edits and corruption, and inputs that used to escape as tracebacks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.train import TrainConfig, train

pytest.importorskip("av", reason="PyAV is not installed (pip install 'omnisift-edge[model]')")

from .tasks import event_clip, write_mp4  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(3)
    for i in range(3):
        frames, pcm, _, _ = event_clip(rng)
        write_mp4(root / f"c{i}.mp4", frames, pcm)
    return root


def _data(folder, clips, names=("c0", "c1", "c2")):
    shutil.copytree(clips, folder, dirs_exist_ok=True)
    lines = [json.dumps({"video": f"{n}.mp4", "question": "Which sound?", "answer": "A"}) for n in names]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def _cfg(data, out, **kw):
    base = dict(data=data, out=out, resolution=(56, 56), max_steps=3, batch_size=1, lr=1e-2, save_every=1,
                keep_checkpoints=1, warmup_steps=1, workers=0)
    return TrainConfig(**{**base, **kw})


class Crash(Exception):
    pass


def _crash_after(step):
    def on_step(stats):
        if stats.step == step:
            raise Crash
    return on_step


def test_resume_refuses_edited_data_and_changed_usable_lines(clips, tmp_path):
    data = _data(tmp_path, clips)
    out = tmp_path / "out"
    with pytest.raises(Crash):
        train(_cfg(data, out), on_step=_crash_after(1), bar=False)
    original = data.read_text()
    data.write_text(original.replace('"A"', '"B"'))                  # same path, other content
    with pytest.raises(UsageError, match="data_sha256"):
        train(_cfg(data, out, resume=True), bar=False)
    data.write_text(original)
    (tmp_path / "c1.mp4").write_bytes(b"broken")                       # a line that no longer decodes
    with pytest.raises(UsageError, match=r"usable lines .*no longer usable: \[2\]"):
        train(_cfg(data, out, resume=True), bar=False)
    shutil.copyfile(clips / "c1.mp4", tmp_path / "c1.mp4")
    for setting in (dict(max_grad_norm=0.5), dict(selector_heads=4), dict(lora_dropout=0.1)):
        with pytest.raises(UsageError, match="differ from the checkpoint's"):
            train(_cfg(data, out, resume=True, **setting), bar=False)
    done = train(_cfg(data, out, resume=True, workers=2, save_every=2, keep_checkpoints=3), bar=False)
    assert done.resumed_from == 1 and done.steps == 3                # cadence and threads may change


def test_resume_after_a_kill_mid_save_and_mid_log_line(clips, tmp_path):
    data = _data(tmp_path, clips)
    out = tmp_path / "out"
    with pytest.raises(Crash):
        train(_cfg(data, out, keep_checkpoints=2), on_step=_crash_after(2), bar=False)
    # what a SIGKILL can leave: step 2's folder renamed in before latest.json named it, a stray newer
    # folder, a log line cut short
    (out / "latest.json").write_text(json.dumps({"step": 1, "folder": "step-000001"}))
    shutil.copytree(out / "step-000002", out / "step-000007")
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 3, "lo')
    done = train(_cfg(data, out, resume=True, keep_checkpoints=2), bar=False)
    assert done.resumed_from == 1 and done.steps == 3
    assert [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("step-", "."))) == ["step-000002",
                                                                                           "step-000003"]


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / "train_config.json").write_text("{bad"), "train_config.json is corrupt"),
    (lambda out: (out / "train_config.json").write_text("[1]"), "holds a list"),
    (lambda out: (out / "latest.json").write_text('{"step": 1, "folder": "../elsewhere"}'), "latest.json is unreadable"),
    (lambda out: (out / "step-000001" / "state.pt").write_bytes(b"PK\x03\x04 cut"), "corrupt or incomplete"),
    (lambda out: (out / "step-000001" / "compressor.safetensors").write_bytes(b"\x08\x00"), "corrupt or incomplete"),
])
def test_corrupt_resume_files_are_one_line_errors(clips, tmp_path, damage, message):
    data = _data(tmp_path, clips)
    out = tmp_path / "out"
    with pytest.raises(Crash):
        train(_cfg(data, out), on_step=_crash_after(1), bar=False)
    damage(out)
    with pytest.raises(UsageError, match=message):
        train(_cfg(data, out, resume=True), bar=False)


def test_lines_that_used_to_escape_are_bad_lines(clips, tmp_path):
    data = _data(tmp_path, clips, names=("c0",))
    with open(data, "a") as handle:
        handle.write(json.dumps({"video": "~nosuchuser_omnisift/x.mp4", "question": "Q?", "answer": "A"}) + "\n")
        handle.write("[" * 100000 + "\n")
    done = train(_cfg(data, tmp_path / "out", max_steps=1), bar=False, progress=lambda _: None)
    reasons = {b.line: b.reason for b in done.bad_lines}
    assert set(reasons) == {2, 3} and "nosuchuser" in reasons[2] and "nested too deeply" in reasons[3]


@pytest.mark.parametrize("kw, message", [
    (dict(epochs=float("inf")), "--epochs"),
    (dict(max_seconds=float("inf")), "--max-seconds"),
    (dict(max_grad_norm=float("nan")), "--max-grad-norm"),
])
def test_non_finite_settings_are_refused(tmp_path, kw, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(data=tmp_path / "d.jsonl", out=tmp_path / "o", **kw)


def test_an_output_folder_that_cannot_be_made(clips, tmp_path):
    data = _data(tmp_path, clips)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot be created: .* is a file"):
        train(_cfg(data, tmp_path / "file" / "sub"), bar=False)


def test_no_audio_names_the_jsonl_key(clips, tmp_path):
    data = _data(tmp_path, clips, names=("c0", "silent"))
    frames, pcm, _, _ = event_clip(np.random.default_rng(0))
    write_mp4(tmp_path / "silent.mp4", frames, pcm, audio=False)
    done = train(_cfg(data, tmp_path / "out", max_steps=1), bar=False, progress=lambda _: None)
    assert [b.line for b in done.bad_lines] == [2]
    assert 'line\'s "audio"' in done.bad_lines[0].reason and "--audio" not in done.bad_lines[0].reason
