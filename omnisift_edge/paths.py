"""Output paths checked before the work: one readable line instead of a traceback after minutes.

Every writer (export, profile, tiny-model, train, build, verify --record) asks `check_output_dir`
about its folder before it loads a model or measures anything: a path under a regular file, a
folder it may not write (permissions, a read-only disk), or `-o .` (the folder you stand in, which
an atomic swap cannot replace) is a `UsageError` naming the fix. What cannot be known up front
(the disk filling up mid-write) is turned into one line by `filesystem_error`, which the CLI uses.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from omnisift_edge.errors import UsageError

# OSError numbers that are the user's to fix (space, permissions, a path through a file)
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
               errno.ENAMETOOLONG, errno.EMLINK, errno.EFBIG}


def check_output_dir(path: str | os.PathLike, option: str = "-o") -> Path:
    """`path` as a Path, or a UsageError if a folder cannot be created or replaced there.

    An existing folder must be writable; a new one needs its nearest existing ancestor to be a
    writable folder. The current folder and its ancestors are refused: replacing them would pull
    the floor from under the running process (and `-o .` cannot be swapped atomically).
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise UsageError(f"{option} must be a folder path; got {path!r}")
    path = Path(path)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"{option} {path} is the current folder (or one above it); name a new folder, "
                         f"e.g. {option} artifacts")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} exists and is a file, not a folder; choose another {option}")
    ancestor = path if path.exists() else _existing_ancestor(path)
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path} cannot be created: {ancestor} is a file, not a folder; "
                         f"choose another {option}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path} cannot be written: no write permission in {ancestor} "
                         f"(or the disk is read-only); choose another {option}")
    return path


def _existing_ancestor(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def filesystem_error(exc: OSError) -> UsageError | None:
    """A one-line UsageError for a user-fixable OSError (full disk, permissions...), else None (a bug)."""
    if exc.errno not in USER_ERRNOS:
        return None
    where = f": {exc.filename}" if exc.filename else ""
    fix = ("free some space or write elsewhere" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "check the path and its permissions, or choose another folder")
    return UsageError(f"{exc.strerror or os.strerror(exc.errno)}{where}; {fix}")


def check_writable_folder(folder: str | os.PathLike, option: str = "FOLDER") -> Path:
    """An existing folder that a command adds files to (build, verify --record): writable, or a UsageError."""
    folder = Path(folder)
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {folder} cannot be written (no write permission, or a read-only disk); "
                         "copy the export somewhere writable")
    return folder
