"""layout.py against transformers' Qwen2.5-Omni processor + get_rope_index, streaming == whole clip.

The reference: `Qwen2_5OmniProcessor` cannot be constructed here (its video processor needs
torchvision, and the constructor type-checks that argument), so `replace_multimodal_special_tokens`
and `get_chunked_index` run unbound on `_ProcessorStub`, which carries what they read: a real
`Qwen2VLImageProcessor`, a real `BaseVideoProcessor` with merge_size 2 / temporal_patch_size 2,
and the tokenizer's special-token strings. Audio lengths come from a real `WhisperFeatureExtractor`
attention mask and the processor's own formula. Positions come from `get_rope_index` of a tiny
real `Qwen2_5OmniThinkerForConditionalGeneration` (config given `vision_start_token_id=151652`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2VLImageProcessor,
    WhisperFeatureExtractor,
)
from transformers.video_processing_utils import BaseVideoProcessor  # noqa: E402

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.layout import (  # noqa: E402
    StreamingLayout,
    build_layout,
    chunk_counts,
    grid_hw_for_pixels,
    omnisift_chunks,
    text_positions,
)
from omnisift_edge.model.prompt import build_prompt, render_prompt  # noqa: E402
from omnisift_edge.model.spec import OmniSpec  # noqa: E402
from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer, write_tiny_tokenizer  # noqa: E402

SPEC = OmniSpec()
FPS = 2.0


class _ProcessorStub:
    """What Qwen2_5OmniProcessor.replace_multimodal_special_tokens reads from `self`."""

    replace_multimodal_special_tokens = Qwen2_5OmniProcessor.replace_multimodal_special_tokens
    get_chunked_index = Qwen2_5OmniProcessor.get_chunked_index

    def __init__(self, tokenizer):
        self.image_processor = Qwen2VLImageProcessor()
        self.video_processor = BaseVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2)
        self.feature_extractor = WhisperFeatureExtractor(feature_size=128)
        for name in ("image_token", "audio_token", "video_token", "vision_bos_token", "vision_eos_token",
                     "audio_bos_token", "audio_eos_token"):
            setattr(self, name, getattr(tokenizer, name))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def reference(tokenizer):
    cfg = Qwen2_5OmniThinkerConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, rope_scaling={"mrope_section": [2, 1, 1], "rope_type": "default",
                                                              "type": "default"}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[0]),
        audio_config=dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          output_dim=16),
        vision_start_token_id=SPEC.tokens.vision_bos)
    thinker = Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()
    return _ProcessorStub(tokenizer), thinker


def hf_layout(reference, tokenizer, text, *, n_grids, grid_hw, n_samples):
    """(input_ids (L,), position_ids (3, L), rope_delta, audio tokens) the way transformers makes them."""
    proc, thinker = reference
    feats = proc.feature_extractor(np.zeros(n_samples, np.float32), sampling_rate=16000,
                                   padding="max_length", return_attention_mask=True)
    mel = feats["attention_mask"].sum(-1)                                   # (1,) valid mel frames
    audio_lengths = ((mel - 1) // 2 + 1 - 2) // 2 + 1                      # the processor's formula
    thw = np.array([n_grids, *grid_hw])
    second_per_grid = proc.video_processor.temporal_patch_size / FPS
    [expanded] = proc.replace_multimodal_special_tokens(
        [text], iter(audio_lengths), iter([]), iter([thw]), video_second_per_grid=iter([second_per_grid]),
        use_audio_in_video=True, position_id_per_seconds=SPEC.position_id_per_seconds,
        seconds_per_chunk=SPEC.seconds_per_chunk)
    ids = torch.tensor([tokenizer(expanded)["input_ids"]])                 # (1, L)
    pos, delta = thinker.get_rope_index(ids, None, torch.from_numpy(thw[None]), torch.ones_like(ids),
                                        use_audio_in_video=True, audio_seqlens=torch.tensor(mel),
                                        second_per_grids=torch.tensor([second_per_grid]))
    return ids[0].numpy(), pos[:, 0].numpy(), int(delta.reshape(-1)[0]), int(audio_lengths[0])


def stream(spec, prefix, suffix, *, n_grids, grid_hw, n_audio):
    """Concatenated pieces of a StreamingLayout fed chunk by chunk."""
    s = StreamingLayout(spec, prefix, grid_hw=grid_hw)
    p_ids, p_pos = s.prefix()
    ids, pos = [p_ids], [p_pos]
    for g, a in chunk_counts(spec, n_grids, n_audio):
        c = s.chunk(g, a)
        assert c.start == sum(x.size for x in ids)
        ids.append(c.input_ids)
        pos.append(c.position_ids)
    i, p = s.close(suffix)
    ids.append(i)
    pos.append(p)
    return s, np.concatenate(ids), np.concatenate(pos, axis=1)


# (grid steps, audio seconds, frame pixels (h, w), system prompt: default/none/custom, question)
CASES = [(g, float(g), (56, 56), True, "What happens?") for g in range(1, 10)] + [
    (4, 5.3, (56, 56), True, "Longer audio, by less than a chunk."),
    (3, 3.5, (112, 84), "custom", "Odd frames, audio longer."),
    (2, 7.9, (56, 56), True, "Audio longer by more than a chunk."),
    (5, 9.2, (112, 84), True, "Audio longer by two chunks."),
    (4, 3.1, (56, 56), False, "Audio shorter by less than a chunk."),
    (5, 4.5, (448, 448), True, "Odd frames, audio shorter."),
    (8, 2.3, (112, 84), True, "Audio shorter by more than a chunk."),
    (9, 0.5, (56, 56), False, "Half a second of audio."),
    (6, 0.04, (56, 56), True, "One audio token."),
    (4, 3.37, (448, 448), False, "Partial last chunk."),
    (7, 6.61, (112, 84), True, "Partial last chunk, odd frames."),
    (4, 2.1, (56, 56), True, "Short last audio: eos below the video max."),
    (2, 0.1, (56, 56), False, ""),                      # short suffix: rope delta from the video
    (3, 3.0, (448, 448), "custom", "big frames"),
    (3, 1.0, (1456, 112), True, "Tall frames: the last video segment's max is on the h row."),
    (1, 0.3, (112, 1456), "custom", "Wide frames."),
]


@pytest.mark.parametrize("n_grids, seconds, pixels, with_system, question", CASES)
def test_matches_transformers(tokenizer, reference, n_grids, seconds, pixels, with_system, question):
    system = {True: DEFAULT_SYSTEM_PROMPT, False: None, "custom": "You are a careful narrator."}[with_system]
    pieces = build_prompt(tokenizer, question, system=system)
    n_samples = int(round(seconds * SPEC.sample_rate))
    grid_hw = grid_hw_for_pixels(SPEC, *pixels)
    n_audio = SPEC.audio_tokens_for_samples(n_samples)
    ids, pos, delta, hf_audio = hf_layout(reference, tokenizer, render_prompt(tokenizer, question, system=system),
                                          n_grids=n_grids, grid_hw=grid_hw, n_samples=n_samples)
    assert n_audio == hf_audio
    layout = build_layout(SPEC, pieces.prefix_ids, pieces.suffix_ids, n_grids=n_grids, grid_hw=grid_hw,
                          n_audio=n_audio)
    np.testing.assert_array_equal(layout.input_ids, ids)
    np.testing.assert_array_equal(layout.position_ids, pos)
    assert layout.rope_delta == delta
    assert len(layout.chunks) == max(math.ceil(n_grids / 2), math.ceil(n_audio / 50))
    assert sum(c.length for c in layout.chunks) == layout.media_span[1] - layout.media_span[0]

    s, s_ids, s_pos = stream(SPEC, pieces.prefix_ids, pieces.suffix_ids, n_grids=n_grids, grid_hw=grid_hw,
                             n_audio=n_audio)
    np.testing.assert_array_equal(s_ids, layout.input_ids)
    np.testing.assert_array_equal(s_pos, layout.position_ids)
    assert (s.rope_delta, s.length, s.next_position) == (layout.rope_delta, layout.length, layout.next_position)
    for a, b in zip(s.chunks, layout.chunks):
        assert (a.index, a.n_grids, a.n_audio, a.start, a.time_start, a.time_end) == (
            b.index, b.n_grids, b.n_audio, b.start, b.time_start, b.time_end)
    # text after the prompt: transformers decodes index i at i + rope_delta
    more = s.text([1, 2, 3])
    np.testing.assert_array_equal(more, text_positions(layout.length + layout.rope_delta, 3))
    np.testing.assert_array_equal(s.text([4]), text_positions(layout.length + 3 + layout.rope_delta, 1))
    assert s.rope_delta == layout.rope_delta


def test_quirks_are_exercised(tokenizer):
    """The cases above include an eos below the global max and a rope delta not set by the text."""
    pieces = build_prompt(tokenizer, "Short last audio: eos below the video max.")
    lay = build_layout(SPEC, pieces.prefix_ids, pieces.suffix_ids, n_grids=4, grid_hw=(4, 4),
                       n_audio=SPEC.audio_tokens_for_samples(int(2.1 * 16000)))
    eos = lay.position_ids[0, lay.media_span[1]]
    media_max = lay.position_ids[:, lay.media_span[0]:lay.media_span[1]].max()
    assert eos < media_max                                        # last audio segment is short
    assert lay.position_ids[0, lay.media_span[0] - 2] == lay.position_ids[0, lay.media_span[0] - 1]
    assert lay.position_ids[0, lay.media_span[1]] == lay.position_ids[0, lay.media_span[1] + 1]
    short = build_prompt(tokenizer, "", system=None)
    lay = build_layout(SPEC, short.prefix_ids, short.suffix_ids, n_grids=2, grid_hw=(4, 4), n_audio=2)
    assert lay.position_ids[:, -1].max() + 1 < lay.next_position     # generation jumps past the video


def _table_by_time_ids(layout, spec):
    """OMNISIFT.md's rule on raw arrays: frames = distinct video time ids, two per chunk; audio by range."""
    ids, t = layout.input_ids, layout.position_ids[0]                      # (L,), (L,)
    video, audio = ids == spec.tokens.video, ids == spec.tokens.audio
    frames = np.unique(t[video])
    media_max = t[video | audio].max()
    rows = []
    for c in range(0, frames.size, 2):
        t0 = frames[c]
        t1 = frames[c + 2] if c + 2 < frames.size else media_max + 1
        f = [np.flatnonzero(video & (t == frames[k])) for k in range(c, min(c + 2, frames.size))]
        a = np.flatnonzero(audio & (t >= t0) & (t < t1))
        rows.append((f, a, t0, t1))
    return rows


@pytest.mark.parametrize("n_grids, n_audio, grid_hw", [
    (1, 1, (4, 4)), (4, 100, (8, 6)), (3, 75, (4, 4)), (2, 197, (4, 4)), (5, 230, (8, 6)),
    (8, 57, (4, 4)), (9, 12, (4, 4)), (7, 330, (4, 8)), (6, 150, (32, 32))])
def test_omnisift_chunk_table(n_grids, n_audio, grid_hw):
    lay = build_layout(SPEC, [10, 11, 12], [13, 14], n_grids=n_grids, grid_hw=grid_hw, n_audio=n_audio)
    table = omnisift_chunks(lay)
    rows = _table_by_time_ids(lay, SPEC)
    assert len(table) == len(rows) == math.ceil(n_grids / 2)
    tpf = table.tokens_per_frame
    for c, (frames, audio, t0, t1) in enumerate(rows):
        for k, f in enumerate(frames):
            np.testing.assert_array_equal(f, np.arange(table.frame_starts[c, k], table.frame_starts[c, k] + tpf))
        if len(frames) == 1:
            assert table.frame_starts[c, 1] == -1
        np.testing.assert_array_equal(audio, np.arange(table.audio_starts[c], table.audio_ends[c]))
        assert (table.time_starts[c], table.time_ends[c]) == (t0, t1)
    assert (table.audio_ends - table.audio_starts).sum() == n_audio


def test_chunk_counts_and_pixels():
    assert chunk_counts(SPEC, 5, 120) == [(2, 50), (2, 50), (1, 20)]
    assert chunk_counts(SPEC, 2, 130) == [(2, 50), (0, 50), (0, 30)]
    assert chunk_counts(SPEC, 6, 10) == [(2, 10), (2, 0), (2, 0)]
    assert grid_hw_for_pixels(SPEC, 112, 84) == (8, 6)
    assert grid_hw_for_pixels(SPEC, 448, 448) == (32, 32)
    np.testing.assert_array_equal(text_positions(7, 2), [[7, 8], [7, 8], [7, 8]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_grids=0, grid_hw=(4, 4), n_audio=50), "both video and audio"),
    (dict(n_grids=2, grid_hw=(4, 4), n_audio=0), "both video and audio"),
    (dict(n_grids=-1, grid_hw=(4, 4), n_audio=50), ">= 0"),
    (dict(n_grids=2, grid_hw=(4, 4), n_audio=-3), ">= 0"),
    (dict(n_grids=2, grid_hw=(5, 4), n_audio=50), "multiples of the spatial merge size"),
    (dict(n_grids=2, grid_hw=(4, 0), n_audio=50), "multiples of the spatial merge size"),
])
def test_build_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        build_layout(SPEC, [1, 2], [3], **kwargs)


def test_other_errors():
    with pytest.raises(UsageError, match="multiple of 28.*try 448x448"):
        grid_hw_for_pixels(SPEC, 450, 450)
    with pytest.raises(UsageError, match="media token ids"):
        build_layout(SPEC, [1, SPEC.tokens.video], [3], n_grids=1, grid_hw=(4, 4), n_audio=5)
    bad = StreamingLayout(SPEC, [1], grid_hw=(4, 4))
    bad.chunk(2, 50)
    with pytest.raises(UsageError, match="media token ids"):
        bad.close([SPEC.tokens.audio_eos])
    with pytest.raises(UsageError, match=">= 0"):
        text_positions(0, -1)
    s = StreamingLayout(SPEC, [1, 2], grid_hw=(4, 4))
    with pytest.raises(UsageError, match="before close"):
        s.text([5])
    with pytest.raises(UsageError, match="before any chunk"):
        s.close([3])
    for g, a in [(0, 50), (2, 0), (3, 50), (2, 51), (0, 0), (-1, 5)]:
        with pytest.raises(UsageError):
            s.chunk(g, a)
    s.chunk(1, 50)                                  # the video ended here
    with pytest.raises(UsageError, match="video ended"):
        s.chunk(1, 50)
    s.chunk(0, 20)                                  # the audio ended here too
    with pytest.raises(UsageError, match="audio ended"):
        s.chunk(0, 5)
    s.close([3])
    with pytest.raises(UsageError, match="after close"):
        s.chunk(0, 5)
    with pytest.raises(UsageError, match="twice"):
        s.close([3])


def test_arrays_are_read_only():
    lay = build_layout(SPEC, [1], [2], n_grids=1, grid_hw=(4, 4), n_audio=3)
    with pytest.raises(ValueError):
        lay.position_ids[0, 0] = 5
    assert lay.input_ids.dtype == lay.position_ids.dtype == lay.chunks[0].position_ids.dtype == np.int64


def hf_conversation(reference, tokenizer, text, videos):
    """(ids (L,), positions (3, L)) of a rendered conversation with several videos, as transformers makes them.

    `videos`: [(n_grids, grid_hw, n_samples)] in the order the turns show them."""
    proc, thinker = reference
    mels, thws = [], []
    for n_grids, grid_hw, n_samples in videos:
        feats = proc.feature_extractor(np.zeros(n_samples, np.float32), sampling_rate=16000,
                                       padding="max_length", return_attention_mask=True)
        mels.append(int(feats["attention_mask"].sum()))
        thws.append(np.array([n_grids, *grid_hw]))
    audio_lengths = [((m - 1) // 2 + 1 - 2) // 2 + 1 for m in mels]
    spg = proc.video_processor.temporal_patch_size / FPS
    [expanded] = proc.replace_multimodal_special_tokens(
        [text], iter(audio_lengths), iter([]), iter(thws), video_second_per_grid=iter([spg] * len(videos)),
        use_audio_in_video=True, position_id_per_seconds=SPEC.position_id_per_seconds,
        seconds_per_chunk=SPEC.seconds_per_chunk)
    ids = torch.tensor([tokenizer(expanded)["input_ids"]])                 # (1, L)
    pos, _ = thinker.get_rope_index(ids, None, torch.from_numpy(np.stack(thws)), torch.ones_like(ids),
                                    use_audio_in_video=True, audio_seqlens=torch.tensor(mels),
                                    second_per_grids=torch.tensor([spg] * len(videos)))
    return ids[0].numpy(), pos[:, 0].numpy()


# turns: (grid steps, audio seconds) per video; frames (h, w)
TURN_CASES = [
    ([(4, 4.0), (2, 2.0)], (56, 56)),
    ([(2, 2.0), (6, 6.0), (4, 4.0)], (112, 84)),
    ([(5, 5.3), (3, 2.5)], (56, 56)),           # a padded last chunk in the first turn, short audio in the second
    ([(6, 6.0), (1, 0.5)], (448, 448)),
]


@pytest.mark.parametrize("turns, pixels", TURN_CASES)
def test_new_turns_match_transformers_conversation(tokenizer, reference, turns, pixels):
    """Video while the stream goes on: question, answer, more chunks in a new user turn, question..."""
    from omnisift_edge.model.prompt import messages, turn_pieces

    grid_hw = grid_hw_for_pixels(SPEC, *pixels)
    questions = [f"Question {i}: what now?" for i in range(len(turns))]
    answers = [f"Answer {i} is here." for i in range(len(turns) - 1)]
    msgs = messages(questions[0], system=DEFAULT_SYSTEM_PROMPT)
    for answer, question in zip(answers, questions[1:]):
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        msgs.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    videos = [(g, grid_hw, int(round(sec * SPEC.sample_rate))) for g, sec in turns]
    ids, pos = hf_conversation(reference, tokenizer, text, videos)

    first = build_prompt(tokenizer, questions[0])
    s = StreamingLayout(SPEC, first.prefix_ids, grid_hw=grid_hw)
    pieces = [s.prefix()]
    for i, (n_grids, _, n_samples) in enumerate(videos):
        if i:
            answer_ids = tokenizer(answers[i - 1], add_special_tokens=False)["input_ids"]
            pieces.append((np.asarray(answer_ids), s.text(answer_ids)))
            turn = turn_pieces(tokenizer, questions[i])
            pieces.append(s.open_turn(turn.prefix_ids))
        for g, a in chunk_counts(SPEC, n_grids, SPEC.audio_tokens_for_samples(n_samples)):
            c = s.chunk(g, a)
            pieces.append((c.input_ids, c.position_ids))
        pieces.append(s.close(first.suffix_ids if i == 0 else turn.suffix_ids))
    np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), ids)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces], axis=1), pos)
    assert s.length == ids.size and s.next_position == pos.max() + 1
    assert len(s.chunks) == sum(len(chunk_counts(SPEC, g, SPEC.audio_tokens_for_samples(n))) for g, _, n in videos)


def test_turn_errors():
    s = StreamingLayout(SPEC, [1], grid_hw=(4, 4))
    with pytest.raises(UsageError, match="media span is open"):
        s.open_turn([5])
    s.chunk(2, 50)
    s.close([3])
    with pytest.raises(UsageError, match="open_turn"):
        s.chunk(2, 50)
    with pytest.raises(UsageError, match="media token ids"):
        s.open_turn([SPEC.tokens.video])
    ids, pos = s.open_turn([7, 8])
    assert ids.tolist()[-2:] == [SPEC.tokens.vision_bos, SPEC.tokens.audio_bos]
    assert pos[:, -1].tolist() == pos[:, -2].tolist() == [pos[0, 1] + 1] * 3
    with pytest.raises(UsageError, match="both video and audio"):
        s.chunk(0, 50)                               # a turn's first chunk needs both, like a clip's
    c = s.chunk(2, 50)
    assert c.index == 0 and c.time_start == pos[0, -1] + 1


@pytest.mark.parametrize("note", ["", "(the camera was off for 3 s)"])
def test_a_gap_turn_matches_transformers_conversation(tokenizer, reference, note):
    """A live source back after a gap (OmniSession.new_turn): two user videos with no answer between,
    closed with gap_pieces; ids and positions are transformers' for the rendered conversation."""
    from omnisift_edge.model.prompt import gap_pieces, messages, turn_pieces

    grid_hw = grid_hw_for_pixels(SPEC, 112, 84)
    question = "What happened?"
    msgs = messages(note, system=DEFAULT_SYSTEM_PROMPT)
    msgs.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    videos = [(4, grid_hw, 4 * SPEC.sample_rate), (3, grid_hw, int(2.5 * SPEC.sample_rate))]
    ids, pos = hf_conversation(reference, tokenizer, text, videos)

    first = build_prompt(tokenizer, note)
    gap = gap_pieces(tokenizer, note)
    s = StreamingLayout(SPEC, first.prefix_ids, grid_hw=grid_hw)
    pieces = [s.prefix()]
    for i, (n_grids, _, n_samples) in enumerate(videos):
        if i:
            pieces.append(s.open_turn(gap.prefix_ids))
        for g, a in chunk_counts(SPEC, n_grids, SPEC.audio_tokens_for_samples(n_samples)):
            c = s.chunk(g, a)
            pieces.append((c.input_ids, c.position_ids))
        pieces.append(s.close(gap.suffix_ids if i == 0 else turn_pieces(tokenizer, question).suffix_ids))
    np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), ids)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces], axis=1), pos)
