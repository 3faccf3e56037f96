"""Where the engines stage writes in an export folder, and how (atomically, checksums kept true)."""

from __future__ import annotations

from pathlib import Path

from omnisift_edge.atomic import atomic_write, new_staging, publish_folder
from omnisift_edge.errors import UsageError
from omnisift_edge.artifact.manifest import ENGINES_DIR, MANIFEST, as_manifest, load_manifest, sha256, write_manifest

PLAN_FILE = "build_plan.json"
ENGINE_SUFFIX = ".engine"


def engine_dir(folder: Path, target: str) -> Path:
    return Path(folder) / ENGINES_DIR / target


def engine_path(folder: Path, target: str, graph: str) -> Path:
    return engine_dir(folder, target) / f"{graph}{ENGINE_SUFFIX}"


def write_side_file(folder: Path, relative: str, data: bytes, manifest: dict) -> Path:
    """Write a small file into the export folder without leaving the manifest's checksums stale.

    When the manifest already lists `relative` (a later build checksummed it), every checksum is
    verified first, the file rewritten, and the manifest written again; otherwise the file is
    just written (the next `write_manifest` records it).
    """
    folder, path = Path(folder), Path(folder) / relative
    listed = relative in as_manifest(manifest).files
    if listed and path.is_file() and path.read_bytes() == data:
        return path
    if listed:
        manifest = load_manifest(folder, verify=True)
    atomic_write(path, data)
    if listed:
        write_manifest(folder, manifest)
    return path


def verify_sources(folder: Path, manifest: dict) -> dict[str, dict]:
    """Check the checksums of every file a build reads: all but earlier engines (a failed rebuild may
    have replaced those; the build rewrites them and the manifest). Returns what was verified, name ->
    {sha256, bytes, mtime_ns}, for `write_manifest(known=...)`: each file is hashed once per build."""
    verified = {}
    for name, entry in as_manifest(manifest).files.items():
        if name.startswith(ENGINES_DIR + "/"):
            continue
        file = Path(folder) / name
        if not file.is_file():
            raise UsageError(f"{file} is missing from the export; copy the whole folder or export again")
        stat = file.stat()
        if stat.st_size != entry.bytes or sha256(file) != entry.sha256:
            raise UsageError(f"{file} does not match its checksum in {MANIFEST} (modified or partly copied); "
                             "copy it again or export again")
        verified[name] = {"sha256": entry.sha256, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return verified


def staging_dir(folder: Path, target: str) -> Path:
    """A hidden folder beside DIR/engines/<target> to build into (`atomic.new_staging`): leftovers of
    interrupted builds are removed, a staging folder another running build is writing is left alone."""
    return new_staging(engine_dir(folder, target))


def publish(staging: Path, final: Path) -> None:
    """Swap the finished engines in (`atomic.publish_folder`): the previous ones are removed only after the swap."""
    publish_folder(staging, final)
