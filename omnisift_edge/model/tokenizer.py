"""Tokenizer and chat template: the embedded tiny one, and loading a real one from a folder.

The tiny tokenizer is byte-level BPE with no merges (one token per UTF-8 byte, ids 0..255) plus
Qwen2.5-Omni's special tokens at their real ids (151643...), so token ids, the chat template and
the processor's placeholder logic behave exactly as with the real tokenizer while the files stay a
few kilobytes. It is written as plain JSON: the vocabulary has a hole between 256 and 151643 by
design, which the `tokenizers` library loads fine.
"""

from __future__ import annotations

import json
from pathlib import Path

from omnisift_edge.errors import UsageError, require
from omnisift_edge.model.spec import SPECIAL_TOKENS, TokenIds

DEFAULT_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)

# Qwen2.5-Omni's chat template (same rendering for system/user/assistant turns with text, audio,
# image and video parts), written out here so the embedded default needs no download.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# the attributes Qwen2_5OmniProcessor reads from its tokenizer
EXTRA_SPECIAL_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (what ByteLevel BPE uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_tokenizer_json(ids: TokenIds = TokenIds()) -> dict:
    """The tokenizer.json of the embedded default: bytes 0..255 plus the real special tokens."""
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    added = []
    for text, field_name in SPECIAL_TOKENS.items():
        token_id = getattr(ids, field_name)
        vocab[text] = token_id
        added.append({"id": token_id, "content": text, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": sorted(added, key=lambda t: t["id"]),
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }


def write_tiny_tokenizer(folder: Path, ids: TokenIds = TokenIds()) -> Path:
    """Write tokenizer.json, tokenizer_config.json and chat_template.json of the tiny default."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tiny_tokenizer_json(ids), ensure_ascii=False))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 32768,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "extra_special_tokens": EXTRA_SPECIAL_TOKENS,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    return folder


def load_tokenizer(folder: Path, *, default_template: bool = False):
    """Load the tokenizer of a model folder (real Qwen2.5-Omni or the tiny default's).

    The chat template is the folder's, wherever it lives (model/chat_template.py); a folder without
    one is refused unless `default_template` asks for the built-in Qwen2.5-Omni template.
    """
    from omnisift_edge.model.chat_template import require_chat_template

    folder = Path(folder)
    template = require_chat_template(folder, default=CHAT_TEMPLATE if default_template else None)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise UsageError(f"no tokenizer in {folder} (expected tokenizer.json or vocab.json + merges.txt); "
                         "copy the tokenizer files of the Qwen2.5-Omni checkpoint into it")
    transformers = require("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.chat_template = template
    missing = [k for k in EXTRA_SPECIAL_TOKENS if getattr(tokenizer, k, None) is None]
    if missing:  # older tokenizer configs: the special tokens exist, the attribute names don't
        for key in missing:
            setattr(tokenizer, key, EXTRA_SPECIAL_TOKENS[key])
    return tokenizer
