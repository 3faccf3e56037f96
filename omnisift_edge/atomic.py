"""Atomic file writes: every artifact appears whole at its final name, or not at all.

An interrupted export, build, profile or training run must never leave a half file that looks
complete. Writers get a hidden temporary path beside the target (same filesystem, so the final
`os.replace` is atomic); it becomes the target only when the writer returns.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it vanishes.

    The temporary name starts with "." (manifest checksums skip hidden files); the file is synced to
    disk before the rename and gets the permissions the umask gives a new file, not mkstemp's
    owner-only ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_file(tmp_path)                       # the bytes are on disk before the name points at them
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write `data` to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's bytes to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def finish_tree(folder: str | os.PathLike) -> None:
    """Make a folder staged under a temporary name ready to be renamed into place: every file's bytes
    on disk, and the modes a plain write would give (mkdtemp/mkstemp create them owner-only)."""
    folder = Path(folder)
    mask = umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_file():
            fsync_file(path)
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
