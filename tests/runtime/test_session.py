"""The app-facing runtime: open an export, stream media in, ask and ask again; backends agree."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402
from omnisift_edge.runtime.stream import ContextFullError  # noqa: E402

RES = (112, 84)


@pytest.fixture(scope="module")
def folder(small_export):
    return small_export(ratios=(0.25, 1.0), resolution=RES)


def _feed(session, clip, step_frames: int):
    """Append the clip in pieces of `step_frames` frames with the PCM they span."""
    per_frame = int(session.spec.sample_rate / session.spec.fps)
    for j in range(0, len(clip.frames), step_frames):
        session.append_chunk(clip.frames[j:j + step_frames], clip.pcm[j * per_frame:(j + step_frames) * per_frame])


@pytest.mark.parametrize("seconds, step", [(4.0, 4), (5.0, 3), (6.5, 1)])
def test_onnxruntime_and_torch_backends_give_the_same_tokens(folder, seconds, step):
    clip = synthetic_clip(seconds, *RES, seed=4)
    answers = {}
    for backend in ("onnxruntime", "torch"):   # torch pads a short last chunk too, as the graphs need
        session = OmniSession(RuntimeConfig(folder, backend=backend, ratio=0.25, pad_tail=True))
        _feed(session, clip, step)
        first = list(session.ask_ids("What happens?", max_new_tokens=6))
        second = list(session.ask_ids("And after that?", max_new_tokens=4))
        kept = [(r.kept_video, r.kept_audio) for r in session.reports]
        answers[backend] = (first, second, kept, [p.tolist() for p in session.stream.kept_positions])
    assert answers["onnxruntime"] == answers["torch"]
    first, _, kept, _ = answers["torch"]
    assert len(kept) == -(-len(clip.frames) // 4) and len(first) > 0      # a partial last chunk is padded


def test_ratio_choice_and_stage_timings(folder):
    clip = synthetic_clip(4.0, *RES, seed=1)
    full = OmniSession(RuntimeConfig(folder, ratio=1.0))
    quarter = OmniSession(RuntimeConfig(folder, ratio=0.25))
    for session in (full, quarter):
        _feed(session, clip, 4)
    assert sum(r.kept_video + r.kept_audio for r in full.reports) == sum(r.video_tokens + r.audio_tokens
                                                                          for r in full.reports)
    assert sum(r.kept_video for r in quarter.reports) < sum(r.kept_video for r in full.reports)
    assert set(quarter.reports[0].seconds) == {"preprocess", "vision", "audio", "compressor", "prefill"}
    with pytest.raises(UsageError, match="has no compressor for ratio 0.5"):
        OmniSession(RuntimeConfig(folder, ratio=0.5))


def test_append_file_decodes_and_resizes(folder, tmp_path):
    from tests.helpers import write_clip as _write

    video = _write(tmp_path / "clip.mp4", seconds=3.0, w=96, h=64)
    session = OmniSession(RuntimeConfig(folder, ratio=0.25))
    reports = session.append_file(video)
    assert len(reports) == 2                                                  # 6 frames: 4 + padded 2
    assert list(session.ask("What do you hear?", max_new_tokens=2)) is not None
    assert len(session.last_answer_ids) >= 1


def test_context_full_is_refused_without_corrupting(folder):
    clip = synthetic_clip(6.0, *RES, seed=3)
    session = OmniSession(RuntimeConfig(folder, ratio=1.0, max_context=256))   # 74 tokens per chunk here
    per_frame = 8000
    lengths = []
    with pytest.raises(ContextFullError, match="context is full"):
        for j in range(0, len(clip.frames), 4):
            lengths.append(session.stream.kv_length())
            session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])
    assert session.stream.kv_length() == lengths[-1] <= 256     # the refused chunk reached no cache
    with pytest.raises(ContextFullError, match="filled up earlier"):  # and the stream stays closed
        list(session.ask_ids("Q?", max_new_tokens=1))


def test_bad_media_and_folders(folder, tmp_path):
    session = OmniSession(RuntimeConfig(folder, ratio=0.25))
    with pytest.raises(UsageError, match="this export takes 112x84"):
        session.append_chunk(np.zeros((4, 56, 56, 3), np.uint8), np.zeros(32000, np.float32))
    with pytest.raises(UsageError, match="uint8"):
        session.append_chunk(np.zeros((4, *RES, 3), np.float32), np.zeros(32000, np.float32))
    bad_pcm = np.zeros(32000, np.float32)
    bad_pcm[5] = np.nan
    with pytest.raises(UsageError, match="NaN or Inf"):
        session.append_chunk(np.zeros((4, *RES, 3), np.uint8), bad_pcm)
    with pytest.raises(UsageError, match="--backend must be one of"):
        RuntimeConfig(folder, backend="tflite")
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["tools"]["omnisift_edge"] = "0.0.1"
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="export again with this version"):
        OmniSession(RuntimeConfig(old))
    with pytest.raises(UsageError, match="no manifest.json"):
        OmniSession(RuntimeConfig(tmp_path))


def test_run_command_streams_an_answer(folder, tmp_path):
    from tests.helpers import write_clip as _write
    from tests.helpers import run_cli as _run

    video = _write(tmp_path / "clip.mp4", seconds=2.0, w=96, h=64)
    result = _run("run", str(folder), "--video", str(video), "--question", "What is it?",
                  "--question", "Why?", "--max-new-tokens", "3", "--ratio", "0.25")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("answer ids: [") == 2 and "1 chunks, kept" in result.stderr
    bad = _run("run", str(folder), "--video", str(tmp_path / "none.mp4"), "--question", "Q")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def _chunks(session, clip, start_chunk: int, n: int):
    per_frame = int(session.spec.sample_rate / session.spec.fps)
    for j in range(start_chunk * 4, (start_chunk + n) * 4, 4):
        session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])


def test_questions_while_the_video_goes_on(folder):
    """Ask, stream on (a new user turn), ask again: both backends agree; the turn's layout is transformers'
    (tests/model/test_layout.py checks StreamingLayout.open_turn against get_rope_index)."""
    from omnisift_edge.model.prompt import turn_pieces

    clip = synthetic_clip(12.0, *RES, seed=6)
    got = {}
    for backend in ("onnxruntime", "torch"):
        session = OmniSession(RuntimeConfig(folder, ratio=0.25, backend=backend))
        _chunks(session, clip, 0, 2)
        first = list(session.ask_ids("What happens?", max_new_tokens=3))
        length = session.stream.layout.length                                          # prompt, chunks, answer fed
        _chunks(session, clip, 2, 3)
        second = list(session.ask_ids("And now?", max_new_tokens=3))
        follow = list(session.ask_ids("Anything else?", max_new_tokens=2))
        layout = session.stream.layout
        got[backend] = (first, second, follow, [p.tolist() for p in session.stream.kept_positions])
        turn = turn_pieces(session.tokenizer, "And now?")
        assert len(layout.chunks) == 5 and [c.index for c in layout.chunks] == [0, 1, 0, 1, 2]
        assert layout.chunks[2].start == length + len(turn.prefix_ids) + 2             # turn text, bos pair
        assert session.stream.kv_length() < layout.length                              # compressed, ratio 0.25
    assert got["onnxruntime"] == got["torch"]


def test_a_new_turn_without_a_question(folder):
    """Chunks, new_turn (a live source back after a gap), chunks, a question: two user turns, the text fed
    equal to the chat template's rendering of two user videos with no answer between them; both backends
    agree (positions: tests/model/test_layout.py checks the gap turn against get_rope_index)."""
    from omnisift_edge.model.prompt import gap_pieces, messages, turn_pieces

    clip = synthetic_clip(8.0, *RES, seed=8)
    note, question = "(the camera was off for 3 s)", "What happens?"
    got = {}
    for backend in ("onnxruntime", "torch"):
        session = OmniSession(RuntimeConfig(folder, ratio=0.25, backend=backend))
        fed, embed = [], session.stream._embed
        session.stream._embed = lambda ids, embed=embed, fed=fed: (fed.append([int(i) for i in ids]), embed(ids))[1]
        _chunks(session, clip, 0, 2)
        assert session.turn == 0 and len(session.reports) == 1      # chunk 1's log-mel waits for 40 samples past it
        assert [r.index for r in session.new_turn(note)] == [1] and session.turn == 1   # ended as a question ends it
        assert session.new_turn() == [] and session.turn == 1                   # no media in the new turn: no change
        _chunks(session, clip, 2, 2)
        asked = len(fed)
        got[backend] = list(session.ask_ids(question, max_new_tokens=3))
        layout, tok = session.stream.layout, session.tokenizer
        gap = gap_pieces(tok, note)
        assert gap.prefix_ids == turn_pieces(tok, "").prefix_ids                # the same turn opening as after an answer
        assert [c.index for c in layout.chunks] == [0, 1, 0, 1]
        assert layout.chunks[2].start == layout.chunks[1].end + 2 + len(gap.suffix_ids) + len(gap.prefix_ids) + 2
        assert [s.kind for s in session.stream.window.segments] == ["pinned", "chunk", "chunk", "text", "text",
                                                                    "chunk", "chunk", "text"]
        msgs = messages(note) + [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        t = session.spec.tokens
        media = "".join(tok.convert_ids_to_tokens([t.vision_bos, t.audio_bos, t.audio_eos, t.vision_eos]))
        want = tok(text.replace("".join(tok.convert_ids_to_tokens([t.vision_bos, t.video, t.vision_eos])), media),
                   add_special_tokens=False)["input_ids"]
        prefix = session.stream.layout.prefix()[0].tolist()                     # fed when the stream opened
        assert prefix + sum(fed[:asked + 1], []) == want   # every text id fed up to the question, in order
    assert got["onnxruntime"] == got["torch"] and len(got["torch"]) > 0


def test_onnxruntime_rebased_stream_gives_the_same_logits(folder):
    clip = synthetic_clip(16.0, *RES, seed=7)
    logits, tokens, bases = [], [], []
    for limit in (32768, 300):
        session = OmniSession(RuntimeConfig(folder, ratio=0.25, context_policy="sliding", window_seconds=4, position_limit=limit,
                                            system_prompt="Be brief."))
        _chunks(session, clip, 0, 8)
        tokens.append(list(session.ask_ids("What now?", max_new_tokens=4)))
        logits.append(session.stream.question_logits)
        bases.append(session.stream.window.base)
        assert session.stream.window.evicted_chunks == 6 and session.stream.window.chunks == 2
    assert bases[0] == 0 and bases[1] > 0
    assert session.manifest.rope.max_position_embeddings == 32768      # the default limit, from the export
    assert OmniSession(RuntimeConfig(folder, ratio=0.25)).stream.window.position_limit == 32768
    np.testing.assert_allclose(logits[1], logits[0], atol=2e-4, rtol=1e-4)
    assert tokens[0] == tokens[1]


def test_context_policy_bad_input(folder):
    with pytest.raises(UsageError, match="at least one 2-second chunk"):
        RuntimeConfig(folder, context_policy="sliding", window_seconds=1)
    with pytest.raises(UsageError, match="must be one of error, sliding"):
        RuntimeConfig(folder, context_policy="fifo")
    with pytest.raises(UsageError, match="use --window-seconds .* or less"):
        OmniSession(RuntimeConfig(folder, ratio=0.25, context_policy="sliding", window_seconds=60, max_context=256))
    clip = synthetic_clip(8.0, *RES, seed=8)
    session = OmniSession(RuntimeConfig(folder, ratio=0.25, context_policy="sliding", max_context=256, system_prompt="S"))
    _chunks(session, clip, 0, 4)
    assert session.stream.kv_length() <= 256
    with pytest.raises(UsageError, match="longer than the window"):
        list(session.ask_ids("why " * 300, max_new_tokens=2))
    assert len(list(session.ask_ids("Why?", max_new_tokens=2))) >= 1        # the stream stays usable
    # a follow-up extends the question/answer run, which it cannot evict: refused before anything changes
    stream = session.stream
    word = session.tokenizer.encode("why", add_special_tokens=False)[:1]      # one token
    room = stream.window.room("text")
    state = (stream.kv_length(), stream.layout.next_position, stream.window.evicted_chunks)
    with pytest.raises(UsageError, match="question and answer being written"):
        list(stream.ask(word * (room + 1), max_new_tokens=2))
    assert (stream.kv_length(), stream.layout.next_position, stream.window.evicted_chunks) == state
    # one that fits leaves 2 tokens for its answer: a longer answer stops with one line, stream intact
    answer = []
    with pytest.raises(UsageError, match="the answer .* longer than the window's 0"):
        for token in stream.ask(word * (room - 2), max_new_tokens=8):
            answer.append(token)
    assert len(answer) == 3 and not stream.full and stream.kv_length() <= 256      # 2 fed, the 3rd refused
    assert stream.layout.next_position == state[1] + room - 2 + 2
    pushed = len(stream.reports)
    _chunks(session, clip, 0, 2)                                               # more video in a new turn
    assert len(stream.reports) > pushed and not stream.closed                    # (the last may wait for audio)
    assert len(list(session.ask_ids("And now?", max_new_tokens=2))) >= 1
    ended = OmniSession(RuntimeConfig(folder, ratio=0.25))
    _chunks(ended, clip, 0, 1)
    ended.finish()
    with pytest.raises(UsageError, match="no question followed; ask one first"):
        _chunks(ended, clip, 1, 1)
    ended.close()
    with pytest.raises(UsageError, match="session was closed; open a new one"):
        _chunks(ended, clip, 1, 1)


def test_run_command_context_options(folder, tmp_path):
    from tests.helpers import write_clip as _write
    from tests.helpers import run_cli as _run

    video = _write(tmp_path / "clip.mp4", seconds=4.0, w=96, h=64)
    ok = _run("run", str(folder), "--video", str(video), "--question", "What?", "--max-new-tokens", "2",
              "--ratio", "0.25", "--context-policy", "sliding", "--window-seconds", "2")
    assert ok.returncode == 0, ok.stderr
    for flags, message in [(["--context-policy", "fifo"], "must be one of error, sliding"),
                           (["--context-policy", "sliding", "--window-seconds", "1"], "at least one 2-second chunk")]:
        bad = _run("run", str(folder), "--video", str(video), "--question", "Q", "--ratio", "0.25", *flags)
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr
