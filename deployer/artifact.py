"""The artifact: a directory or a tar/zip file, validated whole before a byte leaves the machine.

``open_artifact`` reads only metadata and refuses anything that could write outside the release
(absolute or ``../`` members, members under a symlink, symlinks leaving the tree, hard links to
elsewhere, device files). ``write_tar`` then streams the contents as one tar (gzip) stream in
fixed-size chunks, so memory stays flat whatever the artifact size.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, cast

from deployer.errors import ArtifactError

EntryKind = Literal["file", "dir", "symlink"]
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One member of the release tree."""

    path: str
    kind: EntryKind
    mode: int
    size: int
    mtime: float
    linkname: str = ""
    source: str = ""  # where the content comes from: a file path, tar member or zip member name


@dataclass(frozen=True)
class Artifact:
    """A validated artifact: its kind and the entries of the tree it produces."""

    source: Path
    kind: Literal["dir", "tar", "zip"]
    entries: tuple[Entry, ...]

    @property
    def total_size(self) -> int:
        """Sum of the file sizes (uncompressed)."""
        return sum(e.size for e in self.entries if e.kind == "file")

    @property
    def file_count(self) -> int:
        """Number of regular files."""
        return sum(1 for e in self.entries if e.kind == "file")


def _refuse(artifact: Path, message: str) -> ArtifactError:
    return ArtifactError(f"artifact {artifact}: {message}")


def _normalize(artifact: Path, name: str) -> str:
    """A member name as a clean relative path, or '' for the root itself."""
    if "\0" in name or "\n" in name or "\t" in name:
        raise _refuse(
            artifact, f"member {name!r} contains a NUL, tab or newline character — rename it"
        )
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refuse(
            artifact,
            f"member {name!r} is an absolute path — rebuild the archive with relative paths",
        )
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(
            artifact,
            f"member {name!r} escapes the release directory — rebuild the archive with relative paths",
        )
    return "/".join(parts)


def _check_symlink(artifact: Path, path: str, target: str) -> None:
    if not target or target.startswith("/"):
        raise _refuse(
            artifact,
            f"symlink {path!r} -> {target!r} points outside the release — make it relative",
        )
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise _refuse(
            artifact,
            f"symlink {path!r} -> {target!r} points outside the release — make it relative",
        )


def _finish(artifact: Path, kind: Literal["dir", "tar", "zip"], entries: list[Entry]) -> Artifact:
    """Check the tree as a whole (duplicates, members under symlinks), add implied parents, sort."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        if entry.path in by_path:
            raise _refuse(artifact, f"member {entry.path!r} appears twice — rebuild the archive")
        by_path[entry.path] = entry
    for entry in list(by_path.values()):
        parent = posixpath.dirname(entry.path)
        while parent:
            existing = by_path.get(parent)
            if existing is None:
                by_path[parent] = Entry(parent, "dir", 0o755, 0, entry.mtime)
            elif existing.kind == "symlink":
                raise _refuse(
                    artifact,
                    f"member {entry.path!r} lies under the symlink {parent!r} — it would be written elsewhere",
                )
            elif existing.kind == "file":
                raise _refuse(
                    artifact,
                    f"member {entry.path!r} lies under the file {parent!r} — rebuild the archive",
                )
            parent = posixpath.dirname(parent)
    if not any(e.kind != "dir" for e in by_path.values()):
        raise ArtifactError(f"artifact {artifact} is empty — build it first or check the path")
    ordered = sorted(by_path.values(), key=lambda e: e.path.split("/"))
    return Artifact(artifact, kind, tuple(ordered))


def open_artifact(path: Path) -> Artifact:
    """Inspect and validate an artifact; raises ArtifactError before anything is written anywhere."""
    if not path.exists() and not path.is_symlink():
        raise ArtifactError(f"artifact {path} not found — build it first or check the path")
    if path.is_dir():
        return _finish(path, "dir", list(_scan_dir(path)))
    name = path.name.lower()
    if not os.access(path, os.R_OK):
        raise ArtifactError(
            f"artifact {path} is not readable (permission denied) — check its permissions"
        )
    if name.endswith(TAR_SUFFIXES):
        return _finish(path, "tar", _scan_tar(path))
    if name.endswith(".zip"):
        return _finish(path, "zip", _scan_zip(path))
    raise ArtifactError(
        f"artifact {path} is not a directory, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip"
        " — package it as one of those"
    )


def _scan_dir(root: Path) -> Iterator[Entry]:
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            items = list(os.scandir(folder))
        except PermissionError:
            raise ArtifactError(
                f"artifact {root}: cannot read directory {folder} (permission denied)"
            ) from None
        for item in items:
            rel = Path(item.path).relative_to(root).as_posix()
            info = item.stat(follow_symlinks=False)
            mode = stat.S_IMODE(info.st_mode)
            if item.is_symlink():
                target = os.readlink(item.path)
                _check_symlink(root, rel, target)
                yield Entry(rel, "symlink", 0o777, 0, info.st_mtime, target, item.path)
            elif item.is_dir(follow_symlinks=False):
                stack.append(Path(item.path))
                yield Entry(rel, "dir", mode, 0, info.st_mtime, source=item.path)
            elif item.is_file(follow_symlinks=False):
                if not os.access(item.path, os.R_OK):
                    raise ArtifactError(f"artifact {root}: cannot read {rel} (permission denied)")
                yield Entry(rel, "file", mode, info.st_size, info.st_mtime, source=item.path)
            else:
                raise _refuse(
                    root,
                    f"{rel!r} is a device, FIFO or socket — only files, directories and symlinks deploy",
                )


def _scan_tar(path: Path) -> list[Entry]:
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ArtifactError(
            f"artifact {path} is not a valid tar archive ({exc}) — rebuild it"
        ) from None
    entries: list[Entry] = []
    files = {}
    for member in members:
        rel = _normalize(path, member.name)
        if member.isfile():
            files[rel] = member
    for member in members:
        rel = _normalize(path, member.name)
        if not rel:
            continue  # the "./" root entry
        mode = member.mode & 0o7777
        if member.isdir():
            entries.append(Entry(rel, "dir", mode or 0o755, 0, member.mtime, source=member.name))
        elif member.issym():
            _check_symlink(path, rel, member.linkname)
            entries.append(
                Entry(rel, "symlink", 0o777, 0, member.mtime, member.linkname, member.name)
            )
        elif member.islnk():
            target = _normalize(path, member.linkname)
            linked = files.get(target)
            if linked is None:
                raise _refuse(
                    path,
                    f"hard link {rel!r} -> {member.linkname!r} does not point to a file in the archive",
                )
            entries.append(
                Entry(rel, "file", mode or 0o644, linked.size, member.mtime, source=linked.name)
            )
        elif member.isfile():
            entries.append(
                Entry(rel, "file", mode or 0o644, member.size, member.mtime, source=member.name)
            )
        else:
            raise _refuse(
                path,
                f"member {rel!r} is a device or FIFO — only files, directories and symlinks deploy",
            )
    return entries


def _zip_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) if info.create_system == 3 else 0


def _scan_zip(path: Path) -> list[Entry]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            entries: list[Entry] = []
            for info in infos:
                rel = _normalize(path, info.filename)
                if not rel:
                    continue
                if info.flag_bits & 0x1:
                    raise _refuse(
                        path, f"member {rel!r} is encrypted — build the zip without a password"
                    )
                mode = _zip_mode(info)
                mtime = _zip_mtime(info)
                if stat.S_ISLNK(mode):
                    target = archive.read(info).decode("utf-8", "replace")
                    _check_symlink(path, rel, target)
                    entries.append(Entry(rel, "symlink", 0o777, 0, mtime, target, info.filename))
                elif info.is_dir():
                    entries.append(
                        Entry(
                            rel, "dir", stat.S_IMODE(mode) or 0o755, 0, mtime, source=info.filename
                        )
                    )
                else:
                    entries.append(
                        Entry(
                            rel,
                            "file",
                            stat.S_IMODE(mode) or 0o644,
                            info.file_size,
                            mtime,
                            source=info.filename,
                        )
                    )
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ArtifactError(
            f"artifact {path} is not a valid zip archive ({exc}) — rebuild it"
        ) from None
    return entries


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return 0.0


class _Counted:
    """A read-only wrapper that reports how many content bytes were read."""

    def __init__(self, inner: BinaryIO, on_progress: Callable[[int], None] | None) -> None:
        self._inner = inner
        self._on_progress = on_progress

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(min(size, CHUNK) if size and size > 0 else CHUNK)
        if data and self._on_progress is not None:
            self._on_progress(len(data))
        return data


@contextmanager
def open_contents(artifact: Artifact) -> Iterator[Callable[[Entry], BinaryIO]]:
    """Yield opener(entry) -> a readable file for a file entry, valid inside the with-block."""
    if artifact.kind == "dir":
        yield lambda entry: open(entry.source, "rb")  # noqa: SIM115 - the caller closes it
    elif artifact.kind == "tar":
        with tarfile.open(artifact.source, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers()}

            def open_member(entry: Entry) -> BinaryIO:
                handle = tar.extractfile(members[entry.source])
                if handle is None:
                    raise ArtifactError(
                        f"artifact {artifact.source}: cannot read member {entry.path!r}"
                    )
                return cast(BinaryIO, handle)

            yield open_member
    else:
        with zipfile.ZipFile(artifact.source) as archive:

            def open_zip_member(entry: Entry) -> BinaryIO:
                return cast(BinaryIO, archive.open(entry.source))

            yield open_zip_member


class Sink(Protocol):
    """Where a tar stream goes: anything with write (an SSH channel, a pipe, a file)."""

    def write(self, data: bytes, /) -> int:
        """Write all of data."""
        ...


def write_tar(
    artifact: Artifact,
    out: Sink,
    *,
    compresslevel: int | None = 6,
    on_progress: Callable[[int], None] | None = None,
    only: Container[str] | None = None,
) -> None:
    """Stream the artifact as one tar (gzip when compresslevel is not None) into `out`.

    With `only`, regular files outside it are left out (they are already on the target);
    directories and symlinks are always sent.
    """
    sink = cast(BinaryIO, out)
    gz = None
    if compresslevel is not None:
        gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=compresslevel, mtime=0)
        sink = cast(BinaryIO, gz)
    try:
        with (
            tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar,
            open_contents(artifact) as open_content,
        ):
            for entry in artifact.entries:
                info = tarfile.TarInfo(entry.path)
                info.mode = entry.mode
                info.mtime = int(entry.mtime)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if entry.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif entry.kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = entry.linkname
                    tar.addfile(info)
                elif only is None or entry.path in only:
                    info.size = entry.size
                    handle = open_content(entry)
                    try:
                        tar.addfile(info, _Counted(handle, on_progress))
                    finally:
                        handle.close()
    finally:
        if gz is not None:
            gz.close()
