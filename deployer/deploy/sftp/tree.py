"""Release trees over SFTP: removing them (never the live one), and the stat snapshots.

There is no ``rm -rf`` over SFTP: a tree is listed level by level (one batch per level, every
directory of the level at once), its files removed as they are found, then its directories
deepest level first. Releases go into ``.deployer/trash`` by one atomic rename first, so that a
prune that stops halfway leaves no half-removed release behind.

The stat snapshot (``<id>.stat``) vouches for unchanged files at the next deploy. SFTP shows
neither inodes nor ctimes, so a release published over SFTP records ``0`` as inode and ``-`` as
ctime (a later shell deploy then trusts none of its entries and hashes every copy), and the SFTP
side compares size and mtime only, like rsync's quick check.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone

from deployer.remote.files import FileBatch, FileSession, FileStat
from deployer.remote.layout import RELEASE_ID, manifest_path, snapshot_path


def remove_trees(files: FileSession, roots: Sequence[str]) -> None:
    """Delete whole directory trees (missing ones are fine)."""
    levels: list[list[str]] = []
    level = list(roots)
    while level:
        levels.append(level)
        below: list[str] = []
        batch = files.batch()

        for directory in level:
            batch.listdir(directory, _sorter(batch, directory, below))
        batch.wait()
        level = below
    for level in reversed(levels):
        batch = files.batch()
        for directory in level:
            batch.rmdir(directory)
        batch.wait()


def _sorter(
    batch: FileBatch, directory: str, below: list[str]
) -> Callable[[list[tuple[str, FileStat]]], None]:
    """A listing handler: subdirectories are kept for the next level, everything else removed."""

    def handle(entries: list[tuple[str, FileStat]]) -> None:
        for name, stat in entries:
            if stat.kind == "dir":
                below.append(f"{directory}/{name}")
            else:
                batch.remove(f"{directory}/{name}")

    return handle


def trash_releases(files: FileSession, path: str, release_ids: Iterable[str]) -> list[str]:
    """Rename releases into DIR/.deployer/trash (each vanishes at once) and drop their manifests.

    The release `current` points at is never moved (read again here, just before). Returns the
    trash entries to delete.
    """
    release_ids = list(release_ids)
    if not release_ids:
        return []
    live = (files.readlink(f"{path}/current") or "").rstrip("/").rsplit("/", 1)[-1]
    files.mkdir(f"{path}/.deployer/trash", 0o700)
    moved = []
    for rid in release_ids:
        if not RELEASE_ID.match(rid):
            raise ValueError(f"not a release id: {rid!r}")
        if rid == live:
            continue
        trash = f"{path}/.deployer/trash/{rid}.{secrets.token_hex(4)}"
        if files.lstat(f"{path}/releases/{rid}") is not None:
            files.rename(f"{path}/releases/{rid}", trash)
            moved.append(trash)
        files.remove(manifest_path(path, rid))
        files.remove(snapshot_path(path, rid))
    return moved


def empty_trash(files: FileSession, path: str) -> None:
    """Delete whatever lies in DIR/.deployer/trash (left by this deploy or an earlier one)."""
    found: list[tuple[str, FileStat]] = []
    batch = files.batch()
    batch.listdir(f"{path}/.deployer/trash", found.extend)
    batch.wait()
    dirs = [f"{path}/.deployer/trash/{n}" for n, s in found if s.kind == "dir"]
    batch = files.batch()
    for name, stat in found:
        if stat.kind != "dir":
            batch.remove(f"{path}/.deployer/trash/{name}")
    batch.wait()
    remove_trees(files, dirs)


def _stamp(seconds: int) -> str:
    """A time as ``stat -c %y`` writes it with TZ=UTC0."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S.000000000 +0000"
    )


def _seconds(stamp: str) -> int | None:
    """Whole seconds of a ``%y`` time (None when it is not one)."""
    try:
        moment = datetime.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    offset = stamp.rsplit(" ", 1)[-1]
    shift = 0
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        shift = (int(offset[1:3]) * 60 + int(offset[3:])) * 60 * (1 if offset[0] == "+" else -1)
    return int(moment.replace(tzinfo=timezone.utc).timestamp()) - shift


def snapshot_text(marker: int, entries: Mapping[str, tuple[int, int]]) -> str:
    """An SFTP release's snapshot: `#marker`, then `0|size|mtime|-|./path` per file."""
    lines = [f"#{_stamp(marker)}"]
    lines += [f"0|{size}|{_stamp(mtime)}|-|./{p}" for p, (size, mtime) in sorted(entries.items())]
    return "\n".join(lines) + "\n"


def parse_snapshot(text: str) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime) of the entries a snapshot vouches for (any writer's).

    Entries whose mtime is not older than the snapshot's marker are left out: a write in the
    same second would not show (git's racy entries).
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("#"):
        return {}
    marker = _seconds(lines[0][1:])
    if marker is None:
        return {}
    trusted = {}
    for line in lines[1:]:
        fields = line.split("|", 4)
        if len(fields) != 5 or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        mtime = _seconds(fields[2])
        if mtime is not None and mtime < marker:
            trusted[fields[4].removeprefix("./")] = (int(fields[1]), mtime)
    return trusted
