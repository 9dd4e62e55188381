"""Member names and the tree as a whole: nothing that could write outside the release reaches a target."""

from __future__ import annotations

import posixpath
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from deployer.artifact.model import (
    DEPLOYED_BITS,
    PERMISSION_BITS,
    Artifact,
    ArtifactKind,
    Entry,
    Origin,
)
from deployer.errors import ArtifactError

if TYPE_CHECKING:
    pass


MAX_LINK_TARGET = 4096  # PATH_MAX: a longer zip "symlink" is not a symlink target


_MAX_HOPS = 40  # Linux gives up with ELOOP after this many symlinks in one path


class BadName(Exception):
    """Why a member name cannot be used (phrased to follow the name) and the fix."""

    def __init__(self, reason: str, fix: str = "rebuild the archive with relative paths") -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


def clean_name(name: str, *, dos: bool = False) -> str:
    """A member name as a normalized relative path ('' for the release directory itself)."""
    if "\0" in name:
        raise BadName("contains a NUL byte", "rebuild the archive")
    if any(char in name for char in "\n\r\t"):
        raise BadName(
            "has a line break or tab in its name",
            "rename it (release manifests and checksums on the target are one line per file)",
        )
    if dos:
        # zip tools on Windows write backslashes and drive letters; unzip treats them as such
        name = name.replace("\\", "/")
        if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
            raise BadName("is an absolute path")
    if not name:
        raise BadName("has an empty name", "rebuild the archive")
    if name.startswith("/"):
        raise BadName("is an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        if posixpath.normpath("/".join(parts)).split("/")[0] == "..":
            raise BadName("escapes the release directory")
        raise BadName("contains a '..' component")
    return "/".join(parts)


def member_name(label: str, name: str, *, dos: bool = False) -> str:
    try:
        return clean_name(name, dos=dos)
    except BadName as exc:
        raise ArtifactError(f"artifact {label}: member {name!r} {exc.reason} — {exc.fix}") from None


def special_error(label: str, what: str, path: str, kind: str) -> ArtifactError:
    return ArtifactError(
        f"artifact {label}: {what} {path!r} is a {kind} — only files, directories and symlinks"
        " can be deployed; remove it"
    )


def unreadable_error(label: str) -> ArtifactError:
    return ArtifactError(
        f"artifact {label} cannot be read (permission denied)"
        " — make it readable by the user running deployer"
    )


def type_name(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return f"special file (type {stat.S_IFMT(mode):o})"


TAR_TYPES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}


def assemble(
    source: Path,
    label: str,
    kind: ArtifactKind,
    entries: list[Entry],
    origins: Mapping[str, Origin],
    excluded: tuple[str, ...] = (),
) -> Artifact:
    """Check the tree as a whole (duplicates, paths through symlinks, links leaving it), sort it,
    and keep of each mode only DEPLOYED_BITS (the special bits dropped are named in `cleared`)."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        seen = by_path.get(entry.path)
        if seen is not None:
            kinds = "" if seen.kind == entry.kind else f" (as a {seen.kind} and as a {entry.kind})"
            raise ArtifactError(
                f"artifact {label}: member {entry.path!r} appears twice{kinds}"
                " — rebuild the archive so every path appears once"
            )
        by_path[entry.path] = entry
    for entry in entries:
        parent = posixpath.dirname(entry.path)
        while parent:
            existing = by_path.get(parent)
            if existing is None:
                # archives may omit directories; the target's tar would make them 0755 anyway
                by_path[parent] = Entry(parent, "dir", 0o755, 0, entry.mtime)
            elif existing.kind == "dir":
                break  # its own ancestors are checked when it is visited
            else:
                why = "tar would write it through the link" if existing.kind == "symlink" else ""
                raise ArtifactError(
                    f"artifact {label}: member {entry.path!r} lies under the {existing.kind}"
                    f" {parent!r}{f' ({why})' if why else ''} — rebuild the archive without it"
                )
            parent = posixpath.dirname(parent)
    links = {e.path: e.linkname for e in entries if e.kind == "symlink"}
    for path, target in links.items():
        _check_symlink(label, path, target, links)
    if not any(e.kind == "file" for e in entries):
        if excluded:
            raise ArtifactError(
                f"artifact {label}: every file is excluded (by .deployignore or --exclude)"
                " — check the patterns (--dry-run lists what they exclude)"
            )
        raise ArtifactError(
            f"artifact {label} is empty (no files) — build it first or check the path"
        )
    ordered = tuple(sorted(by_path.values(), key=lambda e: e.path.split("/")))
    cleared = tuple(e.path for e in ordered if e.kind != "symlink" and e.mode & ~PERMISSION_BITS)
    kept = tuple(
        e if e.kind == "symlink" else replace(e, mode=e.mode & DEPLOYED_BITS) for e in ordered
    )
    return Artifact(source, kind, kept, origins, cleared, excluded)


def _check_symlink(label: str, path: str, target: str, links: Mapping[str, str]) -> None:
    problem = ""
    if not target:
        problem = "has an empty target"
    elif "\0" in target:
        problem = "has a target containing a NUL byte"
    elif _escapes(path, links):
        problem = f"-> {target!r} points outside the release"
    if problem:
        raise ArtifactError(
            f"artifact {label}: symlink {path!r} {problem} — point it at a relative path inside"
            " the artifact (or use --shared for data that lives outside releases)"
        )


def _escapes(path: str, links: Mapping[str, str]) -> bool:
    """Whether resolving the symlink at `path` on the target ever climbs above the release root.

    Resolves like the kernel, following the artifact's own symlinks on the way: a lexical check
    alone misses chains such as ``a/up -> ..`` plus ``a/out -> up/..``.
    """
    if links[path].startswith("/"):
        return True
    current = path.split("/")[:-1]
    pending = list(reversed(links[path].split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return True
            current.pop()
            continue
        current.append(part)
        target = links.get("/".join(current))
        if target is None:
            continue
        hops += 1
        if hops > _MAX_HOPS:
            return False  # ELOOP: the link never resolves, so it cannot lead anywhere
        if target.startswith("/"):
            return True
        current.pop()
        pending.extend(reversed(target.split("/")))
    return False
