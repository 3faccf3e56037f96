"""JSONL checking with line numbers, and the model inputs of one example (ids, labels, positions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge.train.data import IGNORE, answer_ids, example_from_arrays, read_records

from .tasks import event_clip


def test_read_records_reports_every_kind_of_bad_line(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"x")
    (tmp_path / "sound.wav").write_bytes(b"x")
    good = {"video": "clips/a.mp4", "question": "Q?", "answer": "A"}
    lines = [
        json.dumps(good),                                               # 1 good
        "{broken",                                                      # 2 malformed JSON
        "",                                                             # 3 blank: ignored
        json.dumps({"video": "clips/a.mp4", "question": "Q?"}),         # 4 missing answer
        json.dumps({**good, "video": "clips/none.mp4"}),                # 5 missing video file
        json.dumps({**good, "audio": "sound.wav"}),                     # 6 good, separate audio
        json.dumps({**good, "audio": "none.wav"}),                      # 7 missing audio file
        json.dumps([1, 2]),                                             # 8 not an object
        json.dumps({**good, "answer": ""}),                             # 9 empty answer
        json.dumps({**good, "question": 3}),                            # 10 wrong type
    ]
    path = tmp_path / "train.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")   # 11 not UTF-8
    records, bad = read_records(path)
    assert [r.line for r in records] == [1, 6]
    assert records[1].audio == tmp_path / "sound.wav" and records[0].video == tmp_path / "clips" / "a.mp4"
    reasons = {b.line: b.reason for b in bad}
    assert sorted(reasons) == [2, 4, 5, 7, 8, 9, 10, 11]
    assert "malformed JSON" in reasons[2] and "missing key 'answer'" in reasons[4]
    assert "video file 'clips/none.mp4' not found" in reasons[5] and "audio file" in reasons[7]
    assert "JSON list" in reasons[8] and "non-empty string" in reasons[9] and "not UTF-8" in reasons[11]
    assert str(bad[0]).startswith("line 2: ")


def test_missing_data_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_records(tmp_path / "none.jsonl")


@pytest.mark.parametrize("seconds,pcm_seconds", [(2.0, 2.0), (3.0, 2.2), (2.5, 4.0)])
def test_example_layout_labels_and_audio_to_video_duration(tiny_model, seconds, pcm_seconds):
    spec = tiny_model.spec
    frames, pcm, _, _ = event_clip(np.random.default_rng(1), seconds=seconds)
    pcm = np.resize(pcm, int(pcm_seconds * spec.sample_rate))     # audio shorter or longer than the video
    ex = example_from_arrays(tiny_model, 7, frames, pcm, "What sound?", "A low rumble.", (56, 56))
    video_seconds = len(frames) / spec.fps
    n_audio = spec.audio_tokens_for_samples(int(round(video_seconds * spec.sample_rate)))
    assert int((ex.input_ids == spec.tokens.audio).sum()) == n_audio            # trimmed / padded to the video
    assert int((ex.input_ids == spec.tokens.video).sum()) == ex.grid_thw[0] * 4
    answer = ex.labels[ex.labels != IGNORE]
    tok = tiny_model.tokenizer
    assert tok.decode(answer[:-1]) == "A low rumble." and answer[-1] == spec.tokens.im_end
    n = answer.size                                                             # labels: the answer's tail only
    assert (ex.labels[-n:] == ex.input_ids[-n:]).all() and (ex.labels[:-n] == IGNORE).all()
    assert ex.position_ids.shape == (3, ex.length) and ex.line == 7
    # the answer continues the text positions after the media: one step per token
    assert (np.diff(ex.position_ids[0, -n - 1:]) == 1).all()


def test_answer_ids_match_the_whole_conversation_tokenized(tiny_model):
    from omnisift_edge.model.prompt import _render, build_prompt, messages

    tok, spec = tiny_model.tokenizer, tiny_model.spec
    question, answer = "Which sound?", " Yes,\nthe high one"
    pieces = build_prompt(tok, question, spec=spec)
    ids = answer_ids(tok, question, answer, pieces.suffix_ids, spec)
    whole = tok(_render(tok, messages(question, answers_and_followups=(answer,)), False),
                add_special_tokens=False)["input_ids"]
    t = spec.tokens
    expected = list(pieces.prefix_ids) + [t.vision_bos, t.video, t.vision_eos] + list(pieces.suffix_ids) + list(ids)
    assert whole[:len(expected)] == expected and tok.decode(whole[len(expected):]) == "\n"


def test_answer_with_special_tokens_is_refused(tiny_model):
    from omnisift_edge.model.prompt import build_prompt

    pieces = build_prompt(tiny_model.tokenizer, "Q?", spec=tiny_model.spec)
    with pytest.raises(UsageError, match="special tokens"):
        answer_ids(tiny_model.tokenizer, "Q?", "A<|im_end|>B", pieces.suffix_ids, tiny_model.spec)
