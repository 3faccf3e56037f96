"""Atomic writes: the target appears whole with normal permissions, or is left as it was."""

from __future__ import annotations

import os
import stat

import pytest

from omnisift_edge.atomic import atomic_path, umask


def test_success_replaces_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "file.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".file.json.")
        tmp.write_text("new")
        assert not target.exists()                       # nothing at the final name until the end
    assert target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask()
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "file.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]
