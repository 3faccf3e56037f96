"""Prompt token ids around the video: the pieces `build_layout`/`StreamingLayout` take.

The tokenizer's chat template renders `[system, user: (video, question)]` with a generation
prompt; the text before `<|vision_bos|><|VIDEO|><|vision_eos|>` is the prefix and the text after
it the suffix. Special tokens split tokenization, so tokenizing the two pieces separately gives
the same ids as tokenizing the whole rendering (tested). No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from omnisift_edge.errors import UsageError
from omnisift_edge.model.spec import OmniSpec
from omnisift_edge.model.tokenizer import DEFAULT_SYSTEM_PROMPT

_ANSWER_MARK = "\x00omnisift-answer\x00"   # stands in for an answer while rendering a follow-up


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


def _encode(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"])


def video_part(tokenizer, spec: OmniSpec = OmniSpec()) -> str:
    """The text the template writes for a video: `<|vision_bos|><|VIDEO|><|vision_eos|>`."""
    t = spec.tokens
    return "".join(tokenizer.convert_ids_to_tokens([t.vision_bos, t.video, t.vision_eos]))


def render_prompt(tokenizer, question: str, *, system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The chat-template text of a one-video question, ending in the assistant generation prompt."""
    return _render(tokenizer, messages(question, system=system), True)


def build_prompt(tokenizer, question: str, *, system: str | None = DEFAULT_SYSTEM_PROMPT,
                 spec: OmniSpec = OmniSpec()) -> PromptPieces:
    """Prefix and suffix ids around the video of `render_prompt(tokenizer, question, system=...)`."""
    text = render_prompt(tokenizer, question, system=system)
    part = video_part(tokenizer, spec)
    if text.count(part) != 1:
        raise UsageError(f"the rendered prompt has {text.count(part)} video parts, expected 1; remove "
                         f"{part!r} from the question and system prompt")
    before, after = text.split(part)
    pieces = PromptPieces(prefix_ids=_encode(tokenizer, before), suffix_ids=_encode(tokenizer, after))
    t = spec.tokens
    media = {t.audio, t.audio_bos, t.audio_eos, t.vision_bos, t.vision_eos, t.image, t.video}
    if media & set(pieces.prefix_ids + pieces.suffix_ids):
        raise UsageError("the question or system prompt contains media tokens such as <|AUDIO|>; "
                         "remove them (the layout places media tokens itself)")
    return pieces


def followup_ids(tokenizer, question: str, spec: OmniSpec = OmniSpec()) -> tuple[int, ...]:
    """Ids that close an answer and ask `question`:
    `<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`.

    Append them after the answer's ids (without the `<|im_end|>` that stopped generation: that
    token was sampled, never fed back). Derived from the chat template, so the conversation's
    whole rendering tokenizes to prompt + answer + follow-up (tested).
    """
    text = _render(tokenizer, messages("", system=None, answers_and_followups=(_ANSWER_MARK, question)), True)
    tail = text[text.index(_ANSWER_MARK) + len(_ANSWER_MARK):]
    im_end = tokenizer.convert_ids_to_tokens(spec.tokens.im_end)
    if not tail.startswith(im_end):
        raise UsageError(f"the chat template does not end an assistant turn with {im_end}; "
                         "use Qwen2.5-Omni's chat template (omnisift_edge.model.tokenizer.CHAT_TEMPLATE)")
    return _encode(tokenizer, tail)


def turn_pieces(tokenizer, question: str = "", spec: OmniSpec = OmniSpec()) -> PromptPieces:
    """Ids around the video of a new user turn that follows an answer (video while the stream goes on):
    prefix `<|im_end|>\\n<|im_start|>user\\n`, suffix `{question}<|im_end|>\\n<|im_start|>assistant\\n`.

    The prefix does not depend on the question, so a stream writes it when the turn's first chunk
    arrives and the suffix when the question does. Derived from the chat template like
    `followup_ids` (append after the answer's ids, without the sampled `<|im_end|>`).
    """
    msgs = messages("", system=None, answers_and_followups=(_ANSWER_MARK,))
    msgs.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
    text = _render(tokenizer, msgs, True)
    tail = text[text.index(_ANSWER_MARK) + len(_ANSWER_MARK):]
    part = video_part(tokenizer, spec)
    if tail.count(part) != 1:
        raise UsageError(f"the rendered turn has {tail.count(part)} video parts, expected 1; remove {part!r} "
                         "from the question")
    before, after = tail.split(part)
    pieces = PromptPieces(prefix_ids=_encode(tokenizer, before), suffix_ids=_encode(tokenizer, after))
    t = spec.tokens
    if {t.audio, t.audio_bos, t.audio_eos, t.vision_bos, t.vision_eos, t.image, t.video} & set(pieces.suffix_ids):
        raise UsageError("the question contains media tokens such as <|AUDIO|>; remove them "
                         "(the layout places media tokens itself)")
    return pieces
