"""Where an export is staged and how it replaces the previous one, without ever losing either.

- `--overwrite` replaces only a previous export (a folder with our `manifest.json`) or an empty
  folder; any other folder is refused, so a typo in `-o` cannot delete someone's files.
- The export is built in a hidden `.NAME.partial-XXXX` folder beside the output, marked with the
  owning process id. Folders of that name left by killed runs (gigabytes for a 7B export) are
  removed by the next run to the same name; a live run's folder is left alone.
- The finished folder is swapped in with one atomic exchange (Linux `renameat2(RENAME_EXCHANGE)`):
  at every instant the output name holds the old export or the new one. Where the exchange is
  not available, two renames run with Ctrl-C deferred, and a failed second rename puts the old
  export back. The old export is deleted only after the swap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from omnisift_edge.errors import UsageError
from omnisift_edge.paths import check_output_dir

MANIFEST = "manifest.json"   # the export's manifest (export/manifest.py); a folder with it is ours
OWNER = ".owner-pid"         # in a staging folder: the process that is writing it
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def prepare_staging(out: Path, overwrite: bool) -> Path:
    """Check `out` may be (re)placed, remove stale staging folders, return a new staging folder."""
    out = check_output_dir(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} is not empty; pass --overwrite to replace a previous export, or choose another -o")
        if not (out / MANIFEST).is_file():
            raise UsageError(f"{out} holds files but no {MANIFEST}: it is not an omnisift-edge export, and "
                             "--overwrite only replaces a previous export or an empty folder; choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    (staging / OWNER).write_text(str(os.getpid()))
    return staging


def remove_stale(out: Path) -> list[Path]:
    """Delete `.NAME.partial-*` / `.NAME.old-*` folders beside `out` whose writer is gone; return them."""
    removed = []
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


def publish(staging: Path, out: Path) -> None:
    """Make `staging` the folder at `out`; a previous export there is removed after the swap."""
    (staging / OWNER).unlink(missing_ok=True)
    with _deferred_interrupt():
        if not out.exists():
            staging.rename(out)
            return
        if _exchange(staging, out):        # staging now holds the old export
            old = staging
        else:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            try:
                staging.rename(out)
            except BaseException:
                old.rename(out)            # put the previous export back
                raise
        shutil.rmtree(old, ignore_errors=True)   # inside: an interrupt cannot make "nothing was written" untrue


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
