"""Where an export is staged and what it may replace: the export's policy on `atomic.staged_folder`'s rules.

- `--overwrite` replaces only a previous export (a folder with our `manifest.json`) or an empty
  folder; any other folder is refused, so a typo in `-o` cannot delete someone's files.
- `-o LINK` with LINK a symlink to an export replaces the export it points to; the link stays.
- Staging, stale-folder cleanup, the atomic swap and its rollback are `omnisift_edge.atomic`'s
  (`new_staging`, `publish_folder`): one implementation for every folder the project writes.
"""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.atomic import OWNER, check_replaceable, new_staging, publish_folder, remove_stale
from omnisift_edge.errors import UsageError
from omnisift_edge.paths import check_output_dir

MANIFEST = "manifest.json"   # the export's manifest (artifact/manifest.py); a folder with it is ours

__all__ = ["MANIFEST", "OWNER", "is_export", "prepare_staging", "publish", "remove_stale"]


def is_export(folder: Path) -> bool:
    """A folder the export wrote (it holds our manifest)."""
    return (folder / MANIFEST).is_file()


def prepare_staging(out: Path, overwrite: bool) -> Path:
    """Check `out` may be (re)placed, remove stale staging folders, return a new staging folder."""
    out = check_output_dir(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite to replace a previous export, or choose another -o")
    check_replaceable(out, is_export, f"{{folder}} holds files but no {MANIFEST}: it is not an omnisift-edge export, "
                      "and --overwrite only replaces a previous export or an empty folder; choose another -o")
    return new_staging(out)


def publish(staging: Path, out: Path) -> None:
    """Make `staging` the export at `out` (a symlink's target); a previous export is removed after the swap."""
    publish_folder(staging, out)
