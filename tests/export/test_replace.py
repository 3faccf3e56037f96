"""Replacing an export (issue 13.2): only an export or an empty folder, never neither in place,
and what killed runs left behind is cleaned up by the next run to the same name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omnisift_edge.errors import UsageError
from omnisift_edge import atomic
from omnisift_edge.export.replace import OWNER, prepare_staging, publish


def _export(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    (folder / "graph.onnx").write_text(text)
    return folder


def _staged(out: Path, text: str) -> Path:
    staging = prepare_staging(out, overwrite=True)
    (staging / "manifest.json").write_text("{}")
    (staging / "graph.onnx").write_text(text)
    return staging


def test_a_previous_export_is_swapped_out_whole(tmp_path):
    out = _export(tmp_path / "art", "old")
    publish(_staged(out, "new"), out)
    assert (out / "graph.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]          # no hidden leftovers
    assert not (out / OWNER).exists()


def test_only_an_export_or_an_empty_folder_is_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="not an omnisift-edge export"):
        prepare_staging(mine, overwrite=True)
    with pytest.raises(UsageError, match="pass --overwrite"):
        prepare_staging(_export(tmp_path / "art", "old"), overwrite=False)
    (tmp_path / "empty").mkdir()
    staging = prepare_staging(tmp_path / "empty", overwrite=False)
    assert staging.name.startswith(".empty.partial-")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["art", "empty", "mine"]


def test_stale_staging_folders_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "art"
    dead = tmp_path / ".art.partial-dead"
    dead.mkdir()
    (dead / "decoder.onnx.data").write_bytes(b"0" * 1000)
    old = tmp_path / ".art.old-123"
    old.mkdir()
    live = tmp_path / ".art.partial-live"
    live.mkdir()
    (live / OWNER).write_text(str(os.getppid()))                          # a running process owns it
    other = tmp_path / ".other.partial-x"
    other.mkdir()
    staging = prepare_staging(out, overwrite=False)
    assert not dead.exists() and not old.exists()
    assert live.exists() and other.exists() and staging.exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_the_swap_never_leaves_neither(tmp_path, monkeypatch, exchange):
    out = _export(tmp_path / "art", "old")
    staging = _staged(out, "new")
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    elif not atomic._exchange(staging, staging):   # probe: same path, a no-op where supported
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this filesystem")
    real_rename = Path.rename

    def interrupted(self, target):
        if Path(self) == staging:
            raise KeyboardInterrupt                 # Ctrl-C exactly between the two renames
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    try:
        publish(staging, out)
    except KeyboardInterrupt:
        assert not exchange
    assert (out / "graph.onnx").read_text() == ("new" if exchange else "old")
