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
from omnisift_edge.export.stage import ExportConfig, export  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402
from omnisift_edge.runtime.stream import ContextFullError  # noqa: E402

RES = (112, 84)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("rt") / "art"
    export(ExportConfig(out=out, ratios=(0.25, 1.0), resolution=RES))
    return out


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
    assert set(quarter.reports[0].seconds) == {"vision", "audio", "compressor", "prefill"}
    with pytest.raises(UsageError, match="has no compressor for ratio 0.5"):
        OmniSession(RuntimeConfig(folder, ratio=0.5))


def test_append_file_decodes_and_resizes(folder, tmp_path):
    from tests.model.test_media import _write

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
    from tests.model.test_media import _write
    from tests.test_cli import _run

    video = _write(tmp_path / "clip.mp4", seconds=2.0, w=96, h=64)
    result = _run("run", str(folder), "--video", str(video), "--question", "What is it?",
                  "--question", "Why?", "--max-new-tokens", "3", "--ratio", "0.25")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("answer ids: [") == 2 and "1 chunks, kept" in result.stderr
    bad = _run("run", str(folder), "--video", str(tmp_path / "none.mp4"), "--question", "Q")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
