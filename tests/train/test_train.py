"""`train()` end to end on generated mp4 files: bad lines, checkpoints, resume, the LLM modes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.train import TrainConfig, train

pytest.importorskip("av", reason="PyAV is not installed (pip install 'omnisift-edge[model]')")

from .tasks import event_clip, write_mp4  # noqa: E402

BAD = {3: "malformed JSON", 5: "missing key 'answer'", 6: "not found", 8: "no audio stream", 9: "cannot read"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """train.jsonl: 5 good lines (1, 2, 4, 7, 10) and one bad line of each kind (BAD)."""
    root = tmp_path_factory.mktemp("data")
    (root / "clips").mkdir()
    rng = np.random.default_rng(0)
    good = []
    for i in range(5):
        frames, pcm, _, answer = event_clip(rng, seconds=2.0 if i % 2 else 4.0)
        write_mp4(root / "clips" / f"c{i}.mp4", frames, pcm)
        good.append(json.dumps({"video": f"clips/c{i}.mp4", "question": "Which sound?", "answer": answer}))
    frames, pcm, _, _ = event_clip(rng)
    write_mp4(root / "clips" / "silent.mp4", frames, pcm, audio=False)
    (root / "clips" / "notes.mp4").write_text("not a video\n" * 20)
    lines = [good[0], good[1], '{"video": "clips/c0.mp4",', good[2],
             json.dumps({"video": "clips/c1.mp4", "question": "Q?"}),
             json.dumps({"video": "clips/gone.mp4", "question": "Q?", "answer": "A"}), good[3],
             json.dumps({"video": "clips/silent.mp4", "question": "Q?", "answer": "A"}),
             json.dumps({"video": "clips/notes.mp4", "question": "Q?", "answer": "A"}), good[4]]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    (root / "bad.jsonl").write_text("\n".join(lines[2:3] + lines[4:6]) + "\n")
    return root


def _cfg(dataset, out, **kw):
    base = dict(data=dataset / "train.jsonl", out=out, resolution=(56, 56), max_steps=4, batch_size=2, lr=1e-2,
                save_every=1, keep_checkpoints=2, warmup_steps=1)
    return TrainConfig(**{**base, **kw})


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


class Crash(Exception):
    pass


def _crash_at(step):
    def on_step(stats):
        if stats.step == step:
            raise Crash(step)
    return on_step


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_reports_every_bad_line_by_number_and_trains_nothing(dataset, tmp_path, workers):
    with pytest.raises(UsageError) as err:
        train(_cfg(dataset, tmp_path / "out", on_bad_line="stop", workers=workers), bar=False)
    message = str(err.value)
    assert message.startswith("5 bad line(s)") and "--on-bad-line skip" in message
    for line, reason in BAD.items():
        assert f"line {line}: " in message and reason in message
    assert not (tmp_path / "out" / "latest.json").exists()


def test_zero_good_lines_is_a_usage_error(dataset, tmp_path):
    with pytest.raises(UsageError, match=r"no usable lines .* \(3 bad\)"):
        train(_cfg(dataset, tmp_path / "out", data=dataset / "bad.jsonl"), bar=False)


def test_train_checkpoints_and_resume_reproduce_the_uninterrupted_run(dataset, tmp_path):
    from omnisift_edge.compress.selector import load_selector_state

    messages = []
    full = train(_cfg(dataset, tmp_path / "a"), progress=messages.append, bar=False)
    assert full.steps == 4 and full.good_lines == 5 and full.resumed_from is None
    assert {b.line: b.reason for b in full.bad_lines}.keys() == BAD.keys()
    assert messages[0].startswith("skipping 5 bad line(s)") and "line 3: malformed JSON" in messages[0]
    bad_file = [json.loads(ln) for ln in (tmp_path / "a" / "bad_lines.jsonl").read_text().splitlines()]
    assert [b["line"] for b in bad_file] == sorted(BAD)
    log = [json.loads(ln) for ln in full.log.read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert all(0 < e["kept_ratio"] < 0.5 and e["loss"] > 0 and e["lr"] > 0 for e in log)
    assert log[0]["lr"] == pytest.approx(5e-3) and log[1]["lr"] == pytest.approx(1e-2)   # warmup, then cosine
    assert sorted(p.name for p in (tmp_path / "a").glob("step-*")) == ["step-000003", "step-000004"]
    assert not list((tmp_path / "a").glob(".*"))                                     # no temporary leftovers
    # the selector file: the released checkpoint's names, loadable by export's loader
    tensors = _tensors(full.compressor)
    assert tensors and all(k.startswith("thinker.compressor.") for k in tensors)
    selector = load_selector_state(full.compressor, heads=4)
    assert {f"thinker.compressor.{k}" for k in selector.state_dict()} == set(tensors)
    assert json.loads((tmp_path / "a" / "compressor.json").read_text())["heads"] == 4

    # run b: decoded in the main thread, then resumed with 3 decoding threads; ends as run a (2 threads)
    out = tmp_path / "b"
    with pytest.raises(Crash):
        train(_cfg(dataset, out, workers=0), on_step=_crash_at(3), bar=False)
    assert json.loads((out / "latest.json").read_text()) == {"step": 3, "folder": "step-000003"}
    with pytest.raises(UsageError, match="--resume"):
        train(_cfg(dataset, out), bar=False)                                     # not without --resume
    with pytest.raises(UsageError, match=r"differ .* in lr"):
        train(_cfg(dataset, out, lr=2e-2, resume=True), bar=False)
    resumed = train(_cfg(dataset, out, resume=True, workers=3), bar=False)
    assert resumed.resumed_from == 3 and resumed.steps == 4
    assert [json.loads(ln)["step"] for ln in resumed.log.read_text().splitlines()] == [1, 2, 3, 4]
    a, b = _tensors(full.compressor), _tensors(resumed.compressor)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)                   # bit for bit
    again = train(_cfg(dataset, out, resume=True), bar=False)                     # complete: nothing to do
    assert again.steps == 4 and again.first_loss is None


@pytest.mark.parametrize("error", [OSError, RuntimeError, "SafetensorError"])   # Python's, torch.save's, safetensors'
def test_a_crash_while_saving_leaves_the_previous_checkpoint(dataset, tmp_path, monkeypatch, error):
    import safetensors
    import safetensors.torch

    error = getattr(safetensors, error) if isinstance(error, str) else error
    real, calls = safetensors.torch.save_file, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:                      # the third file written: step 2's selector
            raise error("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"step 2 checkpoint .* failed \(disk full\); the newest complete checkpoint"):
        train(_cfg(dataset, out, llm="full", max_steps=2), bar=False)
    assert json.loads((out / "latest.json").read_text())["step"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("step-", "."))) == ["step-000001"]
    (out / ".step-000002.partial-killed").mkdir()          # what a SIGKILL mid-save would leave
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    done = train(_cfg(dataset, out, llm="full", max_steps=2, resume=True), bar=False)
    assert done.resumed_from == 1 and done.steps == 2
    assert not list(out.glob(".*"))                         # resume cleared the half-written folder


@pytest.mark.parametrize("llm", ["full", "lora"])
def test_llm_modes_save_their_weights_and_resume(dataset, tmp_path, llm):
    if llm == "lora":
        pytest.importorskip("peft", reason="peft is not installed (pip install 'omnisift-edge[train]')")
    from omnisift_edge.model.tiny import build_tiny_thinker

    out = tmp_path / "out"
    with pytest.raises(Crash):
        train(_cfg(dataset, out, llm=llm, max_steps=2, lora_rank=4), on_step=_crash_at(1), bar=False)
    done = train(_cfg(dataset, out, llm=llm, max_steps=2, lora_rank=4, resume=True), bar=False)
    assert done.resumed_from == 1 and done.steps == 2
    weights = _tensors(done.llm_weights if llm == "full" else done.llm_weights / "adapter_model.safetensors")
    if llm == "full":
        thinker = build_tiny_thinker(0)
        names = {f"thinker.{k}" for k in thinker.state_dict() if k.startswith(("model.", "lm_head."))}
        assert set(weights) == names
        changed = thinker.load_state_dict({k[len("thinker."):]: v for k, v in weights.items()}, strict=False)
        assert not changed.unexpected_keys
    else:
        config = json.loads((done.llm_weights / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["peft_type"] == "LORA"
        assert weights and all(k.startswith("base_model.model.model.layers.") and ".lora_" in k for k in weights)
        from peft import PeftModel, get_peft_model_state_dict          # peft's own loader reads the folder

        loaded = get_peft_model_state_dict(PeftModel.from_pretrained(build_tiny_thinker(0), str(done.llm_weights)))
        assert set(loaded) == set(weights) and all(np.array_equal(loaded[k], weights[k]) for k in weights)


@pytest.mark.parametrize("mode", ["skip", "stop"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_that_breaks_after_the_check(tmp_path, mode, workers):
    """The file goes away after step 1. Decoded in the main thread, step 2 misses it; with workers,
    step 2's clips decode while step 1 trains, so step 2 or (if that decode had read the file) 3."""
    rng = np.random.default_rng(1)
    lines = []
    for i in range(2):
        frames, pcm, _, answer = event_clip(rng)
        write_mp4(tmp_path / f"c{i}.mp4", frames, pcm)
        lines.append(json.dumps({"video": f"c{i}.mp4", "question": "Which sound?", "answer": answer}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")

    def break_clip(stats):
        if stats.step == 1:
            (tmp_path / "c1.mp4").unlink()

    cfg = _cfg(tmp_path, tmp_path / "out", max_steps=3, on_bad_line=mode, workers=workers)
    allowed = {2} if workers == 0 else {2, 3}
    messages = []
    if mode == "stop":
        with pytest.raises(UsageError, match="line 2 failed during training"):
            train(cfg, on_step=break_clip, progress=messages.append, bar=False)
        assert json.loads((tmp_path / "out" / "latest.json").read_text())["step"] + 1 in allowed
        return
    done = train(cfg, on_step=break_clip, progress=messages.append, bar=False)
    assert done.steps == 3 and [b.line for b in done.bad_lines] == [2]
    reason = done.bad_lines[0].reason[len("during training: "):]
    failing = int(messages[0].split(" in step ")[1].split(":")[0])
    assert failing in allowed
    assert messages == [f"skipping line 2 in step {s}: {reason}" for s in range(failing, 4)]
    log = [json.loads(ln) for ln in done.log.read_text().splitlines()]
    assert log[failing - 1]["tokens"] * 2 == log[0]["tokens"]            # that step trained on one clip
    assert [json.loads(ln)["line"] for ln in (tmp_path / "out" / "bad_lines.jsonl").read_text().splitlines()] == [2]
