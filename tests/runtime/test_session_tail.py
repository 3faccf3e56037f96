"""The clip's last partial chunk (issues 13.8 and 25): the torch session gives transformers' whole-clip
result on the unpadded clip, and the exported graphs (valid-length inputs) give the torch session's;
padding the tail (still available) is what moves it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from omnisift_edge.model.preprocess import log_mel, video_patches  # noqa: E402
from omnisift_edge.model.prompt import build_prompt  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402
from omnisift_edge.runtime.torch_pipeline import (  # noqa: E402
    ClipFeatures,
    CompressionConfig,
    greedy_decode,
    whole_clip_prefill,
)

RES = (112, 84)
QUESTION = "What happens?"


@pytest.fixture(scope="module")
def folder(small_export):
    return small_export(ratios=(0.25,), resolution=RES)


def tail_clip(seconds: float):
    """A generated clip whose loudest sound comes first, so the stream's running log-mel maximum is
    the whole clip's from the first chunk on (docs/streaming.md rule 2) and only the tail differs."""
    clip = synthetic_clip(seconds, *RES, seed=4)
    pcm = clip.pcm[:len(clip.frames) * 8000].astype(np.float32)                  # the video's duration
    t = np.arange(3200) / 16000
    pcm[:3200] += (0.9 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    return clip.frames, pcm


def session_answer(folder, frames, pcm, **kwargs):
    session = OmniSession(RuntimeConfig(folder, ratio=0.25, **kwargs))
    for j in range(0, len(frames), 3):                                           # pieces across chunk edges
        session.append_chunk(frames[j:j + 3], pcm[j * 8000:(j + 3) * 8000])
    tokens = list(session.ask_ids(QUESTION, max_new_tokens=5))
    return session, tokens


def whole_clip(model, plan, frames, pcm):
    """transformers' forward on the unpadded clip, with OmniSIFT hooked in as the authors do."""
    pixels, grid = video_patches(frames, model.spec, size=RES)
    features = ClipFeatures(pixel_values=pixels, grid_thw=tuple(int(v) for v in grid), mel=log_mel(pcm, model.spec))
    pieces = build_prompt(model.tokenizer, QUESTION, system=DEFAULT_SYSTEM_PROMPT, spec=model.spec)
    prefill = whole_clip_prefill(model, features, pieces.prefix_ids, pieces.suffix_ids,
                                 CompressionConfig(plan.rho_video, plan.rho_audio))
    tokens = list(greedy_decode(model, prefill, max_new_tokens=5, stop_ids=[model.spec.tokens.im_end,
                                                                            model.spec.tokens.endoftext]))
    return prefill, tokens


@pytest.mark.parametrize("seconds", [5.0, 6.5])     # a 1-grid-step tail; an odd frame and a short window
def test_torch_tail_equals_the_unpadded_whole_clip(folder, seconds):
    frames, pcm = tail_clip(seconds)
    session, tokens = session_answer(folder, frames, pcm, backend="torch")
    whole, whole_tokens = whole_clip(session.stream.model, session.plan, frames, pcm)
    assert session.reports[-1].video_tokens == session.stream.tokens_per_frame          # 1 grid step, no pad
    assert sum(r.audio_tokens for r in session.reports) == session.stream.model.spec.audio_tokens_for_mel_frames(
        log_mel(pcm).shape[1])                                                           # no padded audio
    assert session.stream.kv_length() == whole.cache.get_seq_length()
    torch.testing.assert_close(session.stream.question_logits, whole.last_logits, rtol=1e-4, atol=1e-4)
    assert tokens == whole_tokens


def test_padding_the_tail_is_what_moves_the_answer(folder):
    """The padded tail (what graphs and engines need) adds tokens and moves the logits; measured."""
    frames, pcm = tail_clip(5.0)
    exact, _ = session_answer(folder, frames, pcm, backend="torch")
    padded, _ = session_answer(folder, frames, pcm, backend="torch", pad_tail=True)
    assert padded.stream.kv_length() > exact.stream.kv_length()
    a, b = exact.stream.question_logits.double(), padded.stream.question_logits.double()
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=-1)) < 1 - 1e-6


@pytest.mark.parametrize("seconds", [5.0, 7.0, 9.0, 6.5])
def test_onnxruntime_tail_equals_torch(folder, seconds):
    """The graphs take a short last chunk as it is (valid-length inputs): the same tokens in the cache,
    first-token logits within 1e-4 of the torch backend's (fp32), the same greedy answer."""
    frames, pcm = tail_clip(seconds)
    exact, tokens = session_answer(folder, frames, pcm, backend="torch")
    graphs, graph_tokens = session_answer(folder, frames, pcm, backend="onnxruntime")
    assert graphs.reports[-1].video_tokens == exact.reports[-1].video_tokens
    assert [r.audio_tokens for r in graphs.reports] == [r.audio_tokens for r in exact.reports]
    assert graphs.stream.kv_length() == exact.stream.kv_length()
    np.testing.assert_allclose(np.asarray(graphs.stream.question_logits).reshape(-1),
                               exact.stream.question_logits.float().numpy().reshape(-1), rtol=0, atol=1e-4)
    assert graph_tokens == tokens


def test_padding_on_request_still_pads_the_graphs(folder):
    frames, pcm = tail_clip(5.0)
    exact, _ = session_answer(folder, frames, pcm, backend="onnxruntime")
    padded, _ = session_answer(folder, frames, pcm, backend="onnxruntime", pad_tail=True)
    assert padded.stream.kv_length() > exact.stream.kv_length()
