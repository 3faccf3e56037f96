"""`omnisift-edge train` from the shell: a run whose selector `export` takes as it is, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is not installed (pip install 'omnisift-edge[model]')")

from ..test_cli import _run  # noqa: E402
from .tasks import event_clip, write_mp4  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train.jsonl: three good clips, then a line naming a missing file (line 4)."""
    root = tmp_path_factory.mktemp("cli-data")
    rng = np.random.default_rng(1)
    lines = []
    for i in range(3):
        frames, pcm, _, answer = event_clip(rng)
        write_mp4(root / f"c{i}.mp4", frames, pcm)
        lines.append(json.dumps({"video": f"c{i}.mp4", "question": "Which sound?", "answer": answer}))
    lines.append(json.dumps({"video": "gone.mp4", "question": "Which sound?", "answer": "A"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


def test_train_then_export_the_trained_selector(data, tmp_path):
    out = tmp_path / "ckpt"
    result = _run("train", "--data", str(data), "-o", str(out), "--resolution", "56x56", "--max-steps", "2",
                  "--batch-size", "2", "--lr", "1e-2", "--save-every", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "trained 2 steps on 3 clips" in result.stdout and "1 line(s) skipped: line 4:" in result.stdout
    assert "line 4: video file 'gone.mp4' not found" in result.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2] and all(np.isfinite(e["loss"]) for e in log)
    assert json.loads((out / "latest.json").read_text())["folder"] == "step-000002"

    # export reads the head count the run recorded: no --compressor-heads
    art = tmp_path / "art"
    exported = _run("export", "--compressor", str(out / "compressor.safetensors"), "--ratio", "0.25",
                    "--resolution", "56x56", "-o", str(art))
    assert exported.returncode == 0, exported.stderr

    import torch
    from safetensors.torch import load_file

    from omnisift_edge.model.load import ModelSource, load_model
    from omnisift_edge.model.tiny import build_tiny_selector

    trained = load_model(ModelSource(compressor=out / "compressor.safetensors")).selector
    assert trained.cfg.heads == 4
    saved = load_file(str(out / "compressor.safetensors"))
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, saved[f"thinker.compressor.{name}"])
    untrained = build_tiny_selector(0).state_dict()
    assert any(not torch.equal(untrained[k], v) for k, v in trained.state_dict().items())   # it did train

    from omnisift_edge.compress.selector import selector_record

    record = json.loads((art / "manifest.json").read_text())["selector"]       # the export says which selector
    assert record["from"] == str(out / "compressor.safetensors") and record["heads"] == 4
    assert record["weights_sha256"] == selector_record(trained, "")["weights_sha256"]
    assert record["weights_sha256"] != selector_record(build_tiny_selector(0), "")["weights_sha256"]


def test_a_base_model_folder_gets_a_new_selector_that_export_takes(data, tmp_path):
    """The issue's case: a Qwen2.5-Omni folder without a selector (`tiny-model --kind full`)."""
    model = tmp_path / "base"
    made = _run("tiny-model", str(model), "--kind", "full")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "ckpt"
    result = _run("train", "--model", str(model), "--data", str(data), "-o", str(out), "--resolution", "56x56",
                  "--max-steps", "1", "--batch-size", "3", "--selector-hidden", "16", "--selector-heads", "2",
                  "--no-progress")
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "compressor.json").read_text())
    assert (info["d_model"], info["hidden"], info["heads"]) == (64, 16, 2)
    exported = _run("export", "--model", str(model), "--compressor", str(out / "compressor.safetensors"),
                    "--ratio", "0.25", "--resolution", "56x56", "-o", str(tmp_path / "art"))
    assert exported.returncode == 0, exported.stderr

    from omnisift_edge.model.load import ModelSource, load_model

    cfg = load_model(ModelSource(path=model, compressor=out / "compressor.safetensors")).selector.cfg
    assert (cfg.d_model, cfg.hidden, cfg.heads) == (64, 16, 2)


def test_resume_continues_and_a_full_folder_is_refused(data, tmp_path):
    out = tmp_path / "ckpt"
    args = ["train", "--data", str(data), "-o", str(out), "--resolution", "56x56", "--batch-size", "3",
            "--save-every", "1", "--no-progress"]
    first = _run(*args, "--max-steps", "1")
    assert first.returncode == 0, first.stderr
    again = _run(*args, "--max-steps", "1")
    assert again.returncode == 1 and "--resume" in again.stderr and "Traceback" not in again.stderr
    other = _run(*args, "--max-steps", "1", "--lr", "1e-3", "--resume")
    assert other.returncode == 1 and "differ from the checkpoint's in lr" in other.stderr
    resumed = _run(*args, "--max-steps", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "no step run (already complete)" in resumed.stdout


@pytest.mark.parametrize("extra, message", [
    (["--ratio", "1.5"], "--ratio must be in (0, 1)"),
    (["--ratio", "0.25", "--video-drop", "0.5", "--audio-drop", "0.5"], "not both"),
    (["--lr", "nan"], "--lr must be in (0, 1)"),
    (["--resolution", "50x50"], "multiple"),
    (["--selector-hidden", "30", "--selector-heads", "4"], "divisible"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--on-bad-line", "stop"], "1 bad line(s)"),
    (["--llm", "lora", "--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1)"),
])
def test_bad_settings_are_one_line_and_exit_1(data, tmp_path, extra, message):
    result = _run("train", "--data", str(data), "-o", str(tmp_path / "o"), "--resolution", "56x56",
                  "--max-steps", "1", "--no-progress", *extra)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "compressor.safetensors").exists()


def test_missing_data_file(tmp_path):
    result = _run("train", "--data", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o"))
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def _run_until_checkpoint_then_ctrl_c(args, out, after_step: int):
    """Start `omnisift-edge ARGS`, wait until out/latest.json names a step > `after_step`, send SIGINT."""
    import signal
    import subprocess
    import sys
    import time

    # a shell's background job inherits SIGINT ignored; a user's terminal delivers it: restore Python's handler
    code = ("import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
            f"from omnisift_edge.cli import main\nmain({args!r}, prog_name='omnisift-edge')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180

    def step():
        try:
            return json.loads((out / "latest.json").read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    while step() <= after_step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()                                # never leave a training process behind a failed test
    return proc.returncode, stderr, step()


def test_ctrl_c_keeps_the_newest_checkpoint_and_resume_continues(data, tmp_path):
    out = tmp_path / "ckpt"
    args = ["train", "--data", str(data), "-o", str(out), "--resolution", "56x56", "--batch-size", "1",
            "--max-steps", "5000", "--save-every", "1", "--no-progress"]          # far more than it will run
    rc, stderr, first = _run_until_checkpoint_then_ctrl_c(args, out, 0)
    assert rc == 130, stderr
    assert "the newest complete checkpoint in the output folder is kept" in stderr and "Traceback" not in stderr
    assert 1 <= first < 5000 and (out / f"step-{first:06d}" / "state.pt").is_file()
    assert not list(out.glob(".*"))                                        # no half-written folder or file left

    rc, stderr, second = _run_until_checkpoint_then_ctrl_c(args + ["--resume"], out, first)
    assert rc == 130, stderr
    assert f"(step {first} of 5000)" in stderr and "resuming from" in stderr
    assert second > first and not list(out.glob(".*"))
    log = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, len(log) + 1)) and len(log) >= second      # no step lost or repeated
