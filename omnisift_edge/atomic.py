"""Atomic writes: every artifact (a file or a whole folder) appears whole at its final name, or not at all.

An interrupted export, build, profile or training run must never leave a half file that looks
complete. Files: writers get a hidden temporary path beside the target (same filesystem, so the
final `os.replace` is atomic); it becomes the target only when the writer returns.

Folders (an export, engines, a tiny model, a checkpoint, a Triton repository) go through one
helper, `staged_folder`, and nothing else in the package renames or replaces a folder:
- what may be replaced: an empty folder, or a folder the caller's `owned` says the project wrote
  (its manifest or marker); anything else is refused with one line, so `-o` never deletes a
  user's files;
- a symlink at the target is followed: the folder it points to is replaced, the link stays;
- the new folder is built in a hidden `.NAME.partial-XXXX` beside the target, marked with the
  writing process id; staging folders of dead writers are removed, a live writer's never;
- the swap is one atomic exchange (Linux `renameat2(RENAME_EXCHANGE)`); where unavailable, two
  renames with Ctrl-C deferred, the old folder put back if the second fails. The old folder is
  deleted only after the swap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from omnisift_edge.errors import UsageError

OWNER = ".owner-pid"         # in a staging folder: the process that is writing it
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


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


def move_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """`os.replace` for one file (a staged graph, its data file) on the same filesystem; a folder is a bug
    here: folders move only through `staged_folder` / `publish_folder`."""
    if Path(src).is_dir():
        raise IsADirectoryError(f"move_file moves files, not folders ({src}); use staged_folder")
    os.replace(src, dst)


def real_folder(path: str | os.PathLike) -> Path:
    """The folder `path` names: a symlink's target (absolute), so replacing it replaces the target, not the link."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def check_replaceable(out: str | os.PathLike, owned: Callable[[Path], bool], refuse: str) -> Path:
    """`out`'s real folder, if a staged folder may replace it: absent, empty, or `owned(folder)`;
    else a UsageError `refuse` (formatted with `folder`)."""
    target = real_folder(out)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{out} exists and is a file, not a folder; choose another path")
    if target.is_dir() and any(target.iterdir()) and not owned(target):
        raise UsageError(refuse.format(folder=out))
    return target


def new_staging(out: str | os.PathLike) -> Path:
    """A fresh hidden `.NAME.partial-XXXX` folder beside `out`'s real folder, marked with this process
    id; staging folders there whose writer is gone are removed first."""
    target = real_folder(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    (staging / OWNER).write_text(str(os.getpid()))
    return staging


def remove_stale(out: str | os.PathLike) -> list[Path]:
    """Delete `.NAME.partial-*` / `.NAME.old-*` folders beside `out` whose writer is gone; return them."""
    out, removed = Path(out), []
    for pattern in (f".{out.name}.partial-*", f".{out.name}.old-*"):
        for folder in out.parent.glob(pattern):
            if folder.is_dir() and not _owner_alive(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _owner_alive(folder: Path) -> bool:
    try:
        pid = int((folder / OWNER).read_text())
    except (OSError, ValueError):
        return False                       # no marker: left by a killed run (or an old version)
    if pid == os.getpid():
        return False                       # ours from an earlier, failed call in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish_folder(staging: Path, out: str | os.PathLike) -> None:
    """Make `staging` the folder at `out` (a symlink's target): files synced and given plain modes, then
    swapped in atomically; a previous folder there is removed only after the swap."""
    target = real_folder(out)
    (staging / OWNER).unlink(missing_ok=True)
    finish_tree(staging)
    with _deferred_interrupt():
        if not target.exists():
            staging.rename(target)
            return
        if _exchange(staging, target):     # staging now holds the old folder
            old = staging
        else:
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            target.rename(old)
            try:
                staging.rename(target)
            except BaseException:
                old.rename(target)         # put the previous folder back
                raise
        shutil.rmtree(old, ignore_errors=True)   # inside: an interrupt cannot make "nothing was written" untrue


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, owned: Callable[[Path], bool] = lambda folder: False,
                  refuse: str = "{folder} is not empty; choose another path") -> Iterator[Path]:
    """Yield a new staging folder for `out`; when the block completes it replaces `out` (see the module
    docstring), on any error (or Ctrl-C) it is removed and `out` is as it was."""
    check_replaceable(out, owned, refuse)
    staging = None
    try:
        staging = new_staging(out)
        yield staging
        publish_folder(staging, out)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        else:   # Ctrl-C while it was being made: a staging folder of this process counts as stale, so it goes too
            remove_stale(real_folder(out))


def remove_folder(folder: str | os.PathLike) -> None:
    """Delete a folder of ours: renamed to a hidden `.NAME.old-PID` first, so a half-deleted folder never
    looks like a whole one under its name."""
    folder = Path(folder)
    trash = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0                     # EINVAL/ENOSYS (filesystem without it): use the fallback


@contextlib.contextmanager
def _deferred_interrupt():
    """Hold Ctrl-C until the block is done (main thread only); the finished swap is not undone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
