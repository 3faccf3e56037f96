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


# ---- staged folders (issue 24: one helper; issue 26: a user's folder is never ours to delete) ----

def _folder(path, **files):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _ours(folder):
    return (folder / "manifest.json").is_file()


def test_staged_folder_replaces_only_what_is_ours_and_leaves_nothing_beside(tmp_path):
    from omnisift_edge.atomic import staged_folder
    from omnisift_edge.errors import UsageError

    out = _folder(tmp_path / "out", **{"manifest.json": "{}", "graph.onnx": "old"})
    with staged_folder(out, owned=_ours) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.partial-")
        (staging / "manifest.json").write_text("{}")
        (staging / "graph.onnx").write_text("new")
        assert (out / "graph.onnx").read_text() == "old"          # nothing changes until the block ends
    assert (out / "graph.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not (out / ".owner-pid").exists()
    assert stat.S_IMODE(os.stat(out / "graph.onnx").st_mode) == 0o666 & ~umask()
    mine = _folder(tmp_path / "mine", **{"notes.txt": "keep"})
    with pytest.raises(UsageError, match="not ours"):
        with staged_folder(mine, owned=_ours, refuse="{folder} is not ours"):
            raise AssertionError("never reached: refused before staging")
    assert (mine / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]


def test_a_failed_block_keeps_the_old_folder_and_removes_its_staging(tmp_path):
    from omnisift_edge.atomic import staged_folder

    out = _folder(tmp_path / "out", **{"manifest.json": "{}", "graph.onnx": "old"})
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out, owned=_ours) as staging:
            (staging / "graph.onnx").write_text("half")
            raise KeyboardInterrupt
    assert (out / "graph.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlink_to_a_folder_replaces_its_target_and_keeps_the_link(tmp_path):
    """Issue 26: `-o LINK --overwrite` replaced the link with a folder, left the target stale and a hidden
    `.LINK.partial-*` behind."""
    from omnisift_edge.atomic import staged_folder

    target = _folder(tmp_path / "exports" / "v1", **{"manifest.json": "{}", "graph.onnx": "old"})
    link = tmp_path / "current"
    link.symlink_to(target, target_is_directory=True)
    with staged_folder(link, owned=_ours) as staging:
        (staging / "manifest.json").write_text("{}")
        (staging / "graph.onnx").write_text("new")
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "graph.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "exports"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["v1"]


def test_engines_staging_leaves_a_running_build_alone(tmp_path):
    """Issue 24: engines/store.py removed every `.TARGET.partial-*`, including one another build was writing."""
    from omnisift_edge.atomic import OWNER
    from omnisift_edge.engines.store import staging_dir

    engines = tmp_path / "engines"
    live = _folder(engines / ".rtx.partial-live", **{OWNER: str(os.getppid()), "decoder.engine": "x"})
    dead = _folder(engines / ".rtx.partial-dead", **{OWNER: "999999999", "decoder.engine": "x"})
    staging = staging_dir(tmp_path, "rtx")
    assert live.exists() and not dead.exists() and staging.name.startswith(".rtx.partial-")


def test_tiny_model_refuses_a_folder_with_files_and_keeps_them(tmp_path):
    """Issue 24: write_tiny_checkpoint removed the old folder before its rename (and a non-empty one
    failed with a raw OSError after the weights were written)."""
    from omnisift_edge.errors import UsageError
    from omnisift_edge.model.tiny import write_tiny_checkpoint

    pytest.importorskip("torch")
    folder = _folder(tmp_path / "model", **{"notes.txt": "keep"})
    with pytest.raises(UsageError, match="not empty"):
        write_tiny_checkpoint(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and (folder / "notes.txt").read_text() == "keep"


def test_remove_folder_and_move_file(tmp_path):
    from omnisift_edge.atomic import move_file, remove_folder

    folder = _folder(tmp_path / "step-000001", **{"state.pt": "x"})
    remove_folder(folder)
    assert list(tmp_path.iterdir()) == []
    a = tmp_path / "a"
    a.write_text("1")
    move_file(a, tmp_path / "b")
    assert (tmp_path / "b").read_text() == "1" and not a.exists()
    with pytest.raises(IsADirectoryError):
        move_file(_folder(tmp_path / "dir"), tmp_path / "elsewhere")
