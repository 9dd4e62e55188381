"""The release layout on a target, and the names in it (pure).

    DIR/releases/<id>/         immutable release trees (a partial upload lives in releases/.<id>.partial)
    DIR/current -> releases/<id>   the live release; switched by renaming a new symlink over it
    DIR/shared/                what survives releases, linked into each release
    DIR/.deployer/lock/        the deploy lock (mkdir is atomic); lock/info says who holds it
    DIR/.deployer/manifests/   <id>.tsv (sha256, size, mode, path per file) and <id>.stat snapshots
    DIR/.deployer/history      one JSON line per deploy, rollback or failure

The scripts that manage it (probe, lock, stage, switch, history) need only a POSIX shell, tar,
gzip and GNU coreutils/findutils or BusyBox (``mv -T`` for the atomic switch); ``tools`` lists
every tool and option they use, and the probe checks them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from deployer.errors import ConfigError

RELEASE_ID = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")


def new_release_id(now: datetime, existing: Sequence[str]) -> str:
    """A sortable UTC timestamp id, suffixed past every release with that id already there.

    Past, not into the first free slot: once `--keep` pruned `ID`, a fourth push in the same
    second must still sort after `ID-2` and `ID-3` (it would have been `ID` again, sorted as
    the oldest release, and pruning would have kept the wrong ones).
    """
    base = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    taken = [
        1 if release == base else int(release[len(base) + 1 :])
        for release in existing
        if release == base
        or (release.startswith(f"{base}-") and release[len(base) + 1 :].isdigit())
    ]
    return f"{base}-{max(taken) + 1}" if taken else base


def validate_path(path: str) -> str:
    """The deploy directory as given (--path), without a trailing slash; refuse what is no path."""
    if not path.strip() or "\n" in path or "\0" in path:
        raise ConfigError("--path must name a directory on the target, like /srv/app")
    return path.rstrip("/") or "/"


def validate_shared(items: Sequence[str]) -> tuple[str, ...]:
    """Check shared entries are relative paths inside the release ('dir/' for directories)."""
    for item in items:
        bare = item.rstrip("/")
        parts = bare.split("/")
        if not bare or item.startswith("/") or ".." in parts or "." in parts or "" in parts:
            raise ConfigError(
                f"shared entry {item!r} must be a relative path inside the release, like 'storage/' or '.env'"
            )
    return tuple(items)


@dataclass(frozen=True)
class Layout:
    """Absolute paths of one deploy on a target."""

    path: str
    release_id: str

    @property
    def release_dir(self) -> str:
        """DIR/releases/<id>."""
        return f"{self.path}/releases/{self.release_id}"

    @property
    def partial_dir(self) -> str:
        """Where the upload lands before it is complete."""
        return f"{self.path}/releases/.{self.release_id}.partial"


def manifest_path(path: str, release_id: str) -> str:
    """DIR/.deployer/manifests/<id>.tsv: sha256, size, mode and path of every file."""
    return f"{path}/.deployer/manifests/{release_id}.tsv"


def snapshot_path(path: str, release_id: str) -> str:
    """DIR/.deployer/manifests/<id>.stat: every file's inode, size, mtime and ctime at publish."""
    return f"{path}/.deployer/manifests/{release_id}.stat"


def hook_environment(layout: Layout, previous: str) -> dict[str, str]:
    """The variables every hook of a deploy (or rollback) to `layout` sees; previous: the live id."""
    return {
        "DEPLOYER_RELEASE_DIR": layout.release_dir,
        "DEPLOYER_PREVIOUS_RELEASE_DIR": f"{layout.path}/releases/{previous}" if previous else "",
        "DEPLOYER_PATH": layout.path,
        "DEPLOYER_RELEASE_ID": layout.release_id,
    }
