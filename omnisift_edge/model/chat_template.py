"""Find a model folder's chat template wherever transformers keeps it, so prompts are the model's.

Three places, in the order transformers itself prefers them (checked with 4.57): the
`chat_template.jinja` file current transformers writes, the `chat_template` key of
`tokenizer_config.json` (older checkpoints), and `chat_template.json` (processor-style folders).
A folder with none is refused unless the caller asks for the built-in Qwen2.5-Omni template: a
silently substituted template would make every prompt differ from the model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from omnisift_edge.errors import UsageError

JINJA_FILE = "chat_template.jinja"
PLACES = (JINJA_FILE, "tokenizer_config.json", "chat_template.json")


def find_chat_template(folder: str | Path) -> tuple[str, str] | None:
    """(template text, the file it came from) of `folder`, or None if it has none."""
    folder = Path(folder)
    jinja = folder / JINJA_FILE
    if jinja.is_file():
        return _read(jinja, lambda text: text), JINJA_FILE
    for name in PLACES[1:]:
        path = folder / name
        if path.is_file():
            template = _read(path, lambda text: json.loads(text).get("chat_template"))
            if isinstance(template, str) and template.strip():
                return template, name
            if isinstance(template, list):   # named templates: [{"name": "default", "template": ...}, ...]
                named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
                if isinstance(named.get("default"), str):
                    return named["default"], name
    return None


def require_chat_template(folder: str | Path, *, default: str | None = None) -> str:
    """The folder's template; `default` when it has none and one is given, else a UsageError."""
    found = find_chat_template(folder)
    if found is not None:
        return found[0]
    if default is not None:
        return default
    raise UsageError(f"{folder} has no chat template ({', '.join(PLACES)}); copy the checkpoint's, or pass "
                     "--default-chat-template to use Qwen2.5-Omni's built-in one")


def _read(path: Path, parse):
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise UsageError(f"cannot read the chat template in {path} ({type(exc).__name__}); re-copy it") from None
