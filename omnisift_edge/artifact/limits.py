"""One rule for `--max-context`, declared once: every command that takes it (export, build, plan, run,
profile, triton) checks it here.

A context must hold the system prompt, at least one 2-second chunk and a question with a short
answer: MIN_CONTEXT tokens (a ratio-1 chunk at 112x84 is 74 tokens; the chat prompt ~30). The
upper bound is the caller's: the model's positions (export, plan) or what the export was made for
(build, run: the decoders' caches are sized at export), named in the message with its fix.
"""

from __future__ import annotations

from omnisift_edge.errors import UsageError

MIN_CONTEXT = 256


def check_max_context(value, *, most: int | None = None, fix: str = "", flag: str = "--max-context") -> int:
    """`value` as a token count in MIN_CONTEXT..`most`, or a one-line UsageError (`fix`: how to get more)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{flag} must be a whole number of tokens (got {value!r})")
    if value < MIN_CONTEXT:
        raise UsageError(f"{flag} must be at least {MIN_CONTEXT} tokens (the prompt, one chunk and an answer); "
                         f"got {value}")
    if most is not None and value > most:
        raise UsageError(f"{flag} {value} is more than {most}{': ' + fix if fix else ''}")
    return value
