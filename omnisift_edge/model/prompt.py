"""Prompt token ids around the video: the pieces `build_layout`/`StreamingLayout` take.

The tokenizer's chat template renders `[system, user: (video, question)]` with a generation
prompt; the text before `<|vision_bos|><|VIDEO|><|vision_eos|>` is the prefix and the text after
it the suffix. Special tokens split tokenization, so tokenizing the two pieces separately gives
the same ids as tokenizing the whole rendering (tested). No torch here.

Questions and system prompts are untrusted text (a CLI user, a Triton client): a question holding
`<|im_end|>\n<|im_start|>system\n...` must not open a fake system turn. They are rendered as
markers and tokenized with transformers' `split_special_tokens=True`, so chat control tokens (and
media tokens) in them are plain text (`<`, `|`, `im`, ...), while the template's own control tokens
stay control. Text, not refusal: a question may quote such a string legitimately, and the same
choice is what the tokenizers library offers (`encode_special_tokens`). For text without control
tokens the ids equal tokenizing the whole rendering (tested), so nothing else changes.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from omnisift_edge.errors import UsageError
from omnisift_edge.model.spec import OmniSpec
from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT

_ANSWER_MARK = "\x00omnisift-answer\x00"   # stands in for an answer while rendering a follow-up
_QUESTION_MARK = "\x00omnisift-question\x00"   # stands in for the (untrusted) question while rendering
_SYSTEM_MARK = "\x00omnisift-system\x00"       # and for the (untrusted) system prompt
# split_special_tokens sets a flag on the shared Rust tokenizer for the call: one encode at a time
_ENCODE_LOCK = threading.Lock()


@dataclass(frozen=True)
class PromptPieces:
    """Token ids before `<|vision_bos|>` and after `<|vision_eos|>` of a one-video question."""

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]


def messages(question: str, *, system: str | None = DEFAULT_SYSTEM_PROMPT, answers_and_followups=()) -> list[dict]:
    """Chat messages: optional system, user (video part, then `question`), then alternating
    assistant/user text turns from `answers_and_followups`. `system=None` leaves the system
    message out (the template then writes its own default one)."""
    out = []
    if system is not None:
        out.append({"role": "system", "content": [{"type": "text", "text": system}]})
    out.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
    for i, text in enumerate(answers_and_followups):
        out.append({"role": "assistant" if i % 2 == 0 else "user", "content": [{"type": "text", "text": text}]})
    return out


def _render(tokenizer, msgs: list[dict], generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise UsageError("the tokenizer has no chat template; load it with "
                         "omnisift_edge.model.tokenizer.load_tokenizer (it adds Qwen2.5-Omni's)")
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer, text: str, *, plain: bool = False) -> tuple[int, ...]:
    """Ids of `text`; `plain`: special tokens in it are text (transformers' split_special_tokens)."""
    with _ENCODE_LOCK:
        out = tokenizer(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"]
    return tuple(int(i) for i in out)


def _added_tokens(tokenizer) -> re.Pattern:
    """Matches the tokenizer's added tokens, longest first (where template text splits)."""
    tokens = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens) if tokens else r"(?!)")


def _encode_untrusted(tokenizer, text: str, values: dict[str, str]) -> tuple[int, ...]:
    """Ids of a rendering `text` whose markers (keys of `values`) stand for untrusted text.

    The template's text is tokenized as usual; the untrusted text, together with the template text
    around it up to the nearest added tokens, in one plain piece (its control tokens are text). As
    added tokens split tokenization anyway, the ids equal tokenizing the filled-in text whole when
    the untrusted text holds no control tokens.
    """
    marks = "|".join(re.escape(m) for m in values)
    added = _added_tokens(tokenizer)
    ids: list[int] = []
    pending = ""   # plain text (no template control tokens), encoded in split mode
    for i, part in enumerate(re.split(f"({marks})", text)):
        if i % 2:
            pending += values[part]
            continue
        found = list(added.finditer(part))
        if not found:
            pending += part
            continue
        first, last = found[0].start(), found[-1].end()
        ids += _encode(tokenizer, pending + part[:first], plain=True) if pending + part[:first] else ()
        ids += _encode(tokenizer, part[first:last])
        pending = part[last:]
    return tuple(ids) + (_encode(tokenizer, pending, plain=True) if pending else ())


def video_part(tokenizer, spec: OmniSpec = OmniSpec()) -> str:
    """The text the template writes for a video: `<|vision_bos|><|VIDEO|><|vision_eos|>`."""
    t = spec.tokens
    return "".join(tokenizer.convert_ids_to_tokens([t.vision_bos, t.video, t.vision_eos]))


def render_prompt(tokenizer, question: str, *, system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The chat-template text of a one-video question, ending in the assistant generation prompt."""
    return _render(tokenizer, messages(question, system=system), True)


def _rendered(tokenizer, msgs: list[dict], values: dict[str, str]) -> str:
    """The generation-prompt rendering of `msgs` (holding markers), each marker written once."""
    text = _render(tokenizer, msgs, True)
    for mark in values:
        if text.count(mark) != 1:
            raise UsageError(f"the chat template writes a message's text {text.count(mark)} times, expected once; "
                             "use Qwen2.5-Omni's chat template (omnisift_edge.model.tokenizer.CHAT_TEMPLATE)")
    return text


def _around_video(tokenizer, text: str, values: dict[str, str], spec: OmniSpec) -> PromptPieces:
    part = video_part(tokenizer, spec)
    if text.count(part) != 1:
        raise UsageError(f"the chat template renders {text.count(part)} video parts for one video, expected 1; "
                         "use Qwen2.5-Omni's chat template (omnisift_edge.model.tokenizer.CHAT_TEMPLATE)")
    before, after = text.split(part)
    pieces = PromptPieces(prefix_ids=_encode_untrusted(tokenizer, before, values),
                          suffix_ids=_encode_untrusted(tokenizer, after, values))
    t = spec.tokens
    if {t.audio, t.audio_bos, t.audio_eos, t.vision_bos, t.vision_eos, t.image, t.video} & set(
            pieces.prefix_ids + pieces.suffix_ids):   # only a template could put them there now
        raise UsageError("the chat template writes media tokens such as <|AUDIO|> around the video; use "
                         "Qwen2.5-Omni's chat template (the layout places media tokens itself)")
    return pieces


def build_prompt(tokenizer, question: str, *, system: str | None = DEFAULT_SYSTEM_PROMPT,
                 spec: OmniSpec = OmniSpec()) -> PromptPieces:
    """Prefix and suffix ids around the video of `render_prompt(tokenizer, question, system=...)`.

    `question` and `system` are plain text: control tokens written in them are tokenized as text.
    """
    values = {_QUESTION_MARK: question} | ({} if system is None else {_SYSTEM_MARK: system})
    msgs = messages(_QUESTION_MARK, system=None if system is None else _SYSTEM_MARK)
    return _around_video(tokenizer, _rendered(tokenizer, msgs, values), values, spec)


def followup_ids(tokenizer, question: str, spec: OmniSpec = OmniSpec()) -> tuple[int, ...]:
    """Ids that close an answer and ask `question`:
    `<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`.

    Append them after the answer's ids (without the `<|im_end|>` that stopped generation: that
    token was sampled, never fed back). Derived from the chat template, so the conversation's
    whole rendering tokenizes to prompt + answer + follow-up (tested).
    """
    values = {_QUESTION_MARK: question}
    msgs = messages("", system=None, answers_and_followups=(_ANSWER_MARK, _QUESTION_MARK))
    text = _rendered(tokenizer, msgs, values)
    tail = text[text.index(_ANSWER_MARK) + len(_ANSWER_MARK):]
    im_end = tokenizer.convert_ids_to_tokens(spec.tokens.im_end)
    if not tail.startswith(im_end):
        raise UsageError(f"the chat template does not end an assistant turn with {im_end}; "
                         "use Qwen2.5-Omni's chat template (omnisift_edge.model.tokenizer.CHAT_TEMPLATE)")
    return _encode_untrusted(tokenizer, tail, values)


def turn_pieces(tokenizer, question: str = "", spec: OmniSpec = OmniSpec()) -> PromptPieces:
    """Ids around the video of a new user turn that follows an answer (video while the stream goes on):
    prefix `<|im_end|>\\n<|im_start|>user\\n`, suffix `{question}<|im_end|>\\n<|im_start|>assistant\\n`.

    The prefix does not depend on the question, so a stream writes it when the turn's first chunk
    arrives and the suffix when the question does. Derived from the chat template like
    `followup_ids` (append after the answer's ids, without the sampled `<|im_end|>`).
    """
    values = {_QUESTION_MARK: question}
    msgs = messages("", system=None, answers_and_followups=(_ANSWER_MARK,))
    msgs.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": _QUESTION_MARK}]})
    text = _rendered(tokenizer, msgs, values)
    return _around_video(tokenizer, text[text.index(_ANSWER_MARK) + len(_ANSWER_MARK):], values, spec)


def gap_pieces(tokenizer, note: str = "", spec: OmniSpec = OmniSpec()) -> PromptPieces:
    """Ids between the videos of two user turns with no answer between them (a live source that came
    back after a gap): suffix `{note}` ends the first turn's message after its video, prefix
    `<|im_end|>\\n<|im_start|>user\\n` opens the next turn before its video.

    Derived from the chat template's rendering of `user: (video, note), user: (video, ...)`, split at
    the `<|im_end|>` that ends the note (a special token splits tokenization, so the two pieces are
    exact); the prefix equals `turn_pieces(...).prefix_ids` with Qwen2.5-Omni's template.
    """
    values = {_QUESTION_MARK: note}
    msgs = messages(_QUESTION_MARK, system=None)
    msgs.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": ""}]})
    text = _rendered(tokenizer, msgs, values)
    part = video_part(tokenizer, spec)
    if text.count(part) != 2:
        raise UsageError(f"the chat template renders {text.count(part)} video parts for two videos, expected 2; "
                         "use Qwen2.5-Omni's chat template (omnisift_edge.model.tokenizer.CHAT_TEMPLATE)")
    between = text.split(part)[1]
    im_end = tokenizer.convert_ids_to_tokens(spec.tokens.im_end)
    cut = between.find(im_end, between.index(_QUESTION_MARK) + len(_QUESTION_MARK))
    if cut < 0:
        raise UsageError(f"the chat template does not end a user turn with {im_end}; "
                         "use Qwen2.5-Omni's chat template (omnisift_edge.model.tokenizer.CHAT_TEMPLATE)")
    return PromptPieces(prefix_ids=_encode_untrusted(tokenizer, between[cut:], values),
                        suffix_ids=_encode_untrusted(tokenizer, between[:cut], values))
