"""The two kinds of error: the user's (printed as one line, exit 1) and ours (a traceback)."""

from __future__ import annotations

import importlib
from types import ModuleType


class UsageError(Exception):
    """The user can fix this: a bad flag, a missing file, a wrong shape, a missing extra.

    The message is one line that names the fix. The CLI prints it and exits 1; anything that is
    not a UsageError is a bug in omnisift-edge and keeps its traceback.
    """


# import name -> the pyproject extra that installs it
_EXTRA_FOR = {
    "torch": "model",
    "transformers": "model",
    "tokenizers": "model",
    "safetensors": "model",
    "av": "model",
    "PIL": "model",
    "tqdm": "model",
    "onnx": "export",
    "onnxruntime": "export",
    "optimum": "export",
    "matplotlib": "profile",
    "peft": "train",
}


def require(module: str, *, extra: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise a UsageError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or _EXTRA_FOR.get(module.split(".")[0], "model")
        raise UsageError(
            f"{module} is not installed ({exc}); install it with: pip install 'omnisift-edge[{extra}]'"
        ) from None
