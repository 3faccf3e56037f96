"""Checks for values read from an untrusted manifest.json: each failure is one UsageError line that
names the key (as a dotted path, e.g. `graphs.decoder.opset`) and the fix.

Export folders travel between machines and teams, so nothing in a manifest is trusted: every value
is checked for its type and range before a runtime acts on it, and every path it names must stay
inside the export folder (after resolving symlinks), so a manifest cannot make a command read,
hash or build a file elsewhere.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath

from omnisift_edge.errors import UsageError

FIX = "it is not an omnisift-edge manifest this version can read (edited by hand, or from another version?); export again"
MAX_DEPTH = 32            # manifest.json nests 8 levels (builds.<t>.engines.<g>.profiles[].axes.<a>[]); 32 is generous
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")   # graph keys and build targets: they form file names
_MISSING = object()


def bad(where: str, what: str) -> UsageError:
    """The one-line error for a manifest value `where` that is `what`."""
    return UsageError(f"manifest.json: {where} {what}, so {FIX}")


def key(obj: dict, name: str, where: str, default=_MISSING):
    """`obj[name]`, or a UsageError naming `where.name` when it is missing (and no default is given)."""
    if name in obj:
        return obj[name]
    if default is _MISSING:
        raise bad(_join(where, name), "is missing")
    return default


def obj(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise bad(where, f"is {_kind(value)}, expected an object")
    return value


def lst(value, where: str, *, nonempty: bool = False) -> list:
    if not isinstance(value, list):
        raise bad(where, f"is {_kind(value)}, expected a list")
    if nonempty and not value:
        raise bad(where, "is empty")
    return value


def text(value, where: str) -> str:
    if not isinstance(value, str):
        raise bad(where, f"is {_kind(value)}, expected a string")
    return value


def flag(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise bad(where, f"is {_kind(value)}, expected true or false")
    return value


def integer(value, where: str, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool, not 2.5) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(where, f"is {_kind(value)}, expected an integer")
    _range(value, where, low, high)
    return value


def positive(value, where: str, *, high: int | None = None) -> int:
    return integer(value, where, low=1, high=high)


def number(value, where: str, *, low: float | None = None, high: float | None = None,
           above: float | None = None) -> float:
    """A finite int or float within [low, high] (and > above); returned as written (1 stays 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(where, f"is {_kind(value)}, expected a finite number")
    if above is not None and not value > above:
        raise bad(where, f"is {value}, expected > {above:g}")
    _range(value, where, low, high)
    return value


def strings(value, where: str) -> tuple[str, ...]:
    return tuple(text(v, f"{where}[{i}]") for i, v in enumerate(lst(value, where)))


def ints(value, where: str, *, low: int | None = None) -> tuple[int, ...]:
    return tuple(integer(v, f"{where}[{i}]", low=low) for i, v in enumerate(lst(value, where)))


def name(value, where: str) -> str:
    """A graph key or build target: it becomes part of a file name (engines/<target>/<graph>.engine)."""
    value = text(value, where)
    if not NAME.match(value) or value in (".", ".."):
        raise bad(where, f"names {value!r}, not a plain name (letters, digits, _ . -): it could form a path "
                         "outside the export folder")
    return value


def relative(value, where: str) -> str:
    """A path inside the export folder, as written: relative, no `..`, no backslash or drive."""
    value = text(value, where)
    parts = PurePosixPath(value).parts
    if (not value or value.startswith(("/", "\\")) or "\\" in value or ":" in value or "\x00" in value
            or any(p == ".." for p in parts)):
        raise bad(where, f"is {value!r}, a path outside the export folder (paths must be relative, without ..)")
    return value


def contained(folder: Path, value: str, where: str) -> Path:
    """`folder/value` with symlinks resolved, or a UsageError when that leaves the export folder."""
    root = Path(folder).resolve()
    path = (root / relative(value, where)).resolve()
    if path != root and root not in path.parents:
        raise UsageError(f"manifest.json: {where} ({value}) resolves to {path}, outside the export folder {root} "
                         "(a symlink?); copy the export without links that point out of it, or export again")
    return path


def depth(value, where: str = "manifest.json") -> None:
    """Nesting deeper than MAX_DEPTH is refused before anything walks it (no RecursionError)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DEPTH:
            raise UsageError(f"{where} nests deeper than {MAX_DEPTH} levels, so {FIX}")
        if isinstance(item, dict):
            stack += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, level + 1) for v in item]


def _range(value, where: str, low, high) -> None:
    if low is not None and value < low:
        raise bad(where, f"is {value}, expected >= {low}")
    if high is not None and value > high:
        raise bad(where, f"is {value}, expected <= {high}")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value} (a number)"
    if isinstance(value, str):
        return f"{value[:40]!r} (a string)"
    return f"a {'list' if isinstance(value, list) else 'object' if isinstance(value, dict) else type(value).__name__}"
