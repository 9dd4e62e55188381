"""The artifact: a directory or a tar/zip file, validated whole before a byte leaves the machine.

``open_artifact`` reads the whole artifact once and refuses anything that could write outside the
release (absolute or ``..`` members, members under a symlink, symlinks leading out of the tree,
hard links to elsewhere, device files, duplicates) or that is damaged (truncated or corrupt
archives, unreadable files); ``artifact.safety`` holds the checks on names and on the tree.
Reading the contents again later (``artifact.contents``, ``artifact.tar``) re-checks that the
artifact is still what was checked.
"""

from __future__ import annotations

import lzma
import os
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from deployer.artifact.ignore import (
    IGNORE_FILE,
    MAX_IGNORE_FILE,
    Exclusion,
    check_patterns,
    check_size,
    not_a_file_error,
    read_patterns,
)
from deployer.artifact.model import CHUNK, SUPPORTED, TAR_SUFFIXES, Artifact, Entry, Origin
from deployer.artifact.safety import (
    MAX_LINK_TARGET,
    TAR_TYPES,
    BadName,
    assemble,
    clean_name,
    member_name,
    special_error,
    type_name,
    unreadable_error,
)
from deployer.artifact.source import OPEN_FLAGS, READ_ERRORS, TarSource, label_of
from deployer.errors import ArtifactError, reason

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------- names and messages


# --------------------------------------------------------------------------- opening


# Entries an artifact may hold: each costs memory while it is checked, and an archive of tiny
# members compresses to almost nothing (a few MB can name millions).
MAX_MEMBERS = 500_000


def _too_many(label: str, limit: int) -> ArtifactError:
    return ArtifactError(
        f"artifact {label} has more than {limit} entries — that many files are no release;"
        " package fewer (e.g. an archive of the dependencies as one file)"
    )


def open_artifact(
    path: Path, max_members: int = MAX_MEMBERS, exclude: Sequence[str] = ()
) -> Artifact:
    """Inspect and validate an artifact; raises ArtifactError before anything is written anywhere.

    What its root's .deployignore and the `exclude` patterns (gitignore syntax, applied after the
    file's) leave out is absent from the result: its entries, sizes, manifest and upload.
    """
    label = label_of(path)
    patterns = check_patterns(exclude)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ArtifactError(
            f"artifact {label} not found — build it first or check the path"
        ) from None
    except PermissionError:
        raise ArtifactError(
            f"artifact {label} cannot be read (permission denied)"
            " — make it and its parent directories readable by the user running deployer"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"artifact {label} cannot be read ({reason(exc)}) — check the path"
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        exclusion = Exclusion([*_dir_ignore_file(path, label), *patterns])
        entries = _scan_dir(path, label, max_members, exclusion)
        return assemble(path, label, "dir", entries, {}, exclusion.excluded)
    lowered = path.name.lower()
    if not stat.S_ISREG(info.st_mode) or not lowered.endswith((*TAR_SUFFIXES, ".zip")):
        raise ArtifactError(f"artifact {label} is not {SUPPORTED} — package it as one of those")
    if lowered.endswith(".zip"):
        entries, origins, excluded = _scan_zip(path, label, max_members, patterns)
        return assemble(path, label, "zip", entries, origins, excluded)
    entries, origins, excluded = _scan_tar(path, label, max_members, patterns)
    return assemble(path, label, "tar", entries, origins, excluded)


def _dir_ignore_file(root: Path, label: str) -> list[str]:
    """The patterns of the directory's own .deployignore (none when it has none)."""
    where = root / IGNORE_FILE
    try:
        mode = where.lstat().st_mode
    except OSError:
        return []  # none; or the directory itself cannot be read, which its scan reports
    if not stat.S_ISREG(mode):
        kind = "symlink" if stat.S_ISLNK(mode) else "directory" if stat.S_ISDIR(mode) else ""
        raise not_a_file_error(label, kind or type_name(mode))
    try:
        with open(os.open(where, OPEN_FLAGS), "rb") as handle:
            return read_patterns(handle.read(MAX_IGNORE_FILE + 1), label)
    except OSError as exc:
        raise ArtifactError(
            f"artifact {label}: {IGNORE_FILE} cannot be read ({reason(exc)})"
            " — make it readable by the user running deployer"
        ) from exc


def _scan_dir(root: Path, label: str, max_members: int, exclusion: Exclusion) -> list[Entry]:
    entries: list[Entry] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(os.path.join(root, folder) if folder else root) as items:
                listing = list(items)
        except PermissionError:
            if not folder:
                raise unreadable_error(label) from None
            raise ArtifactError(
                f"artifact {label}: directory {folder!r} cannot be read (permission denied)"
                " — make it readable by the user running deployer"
            ) from None
        except OSError as exc:
            raise ArtifactError(
                f"artifact {label}: directory {folder or '.'!r} cannot be read ({reason(exc)})"
                " — check the directory"
            ) from exc
        for item in listing:
            rel = f"{folder}/{item.name}" if folder else item.name
            try:
                # an excluded directory is not even walked: node_modules/ may hold 100 000 files
                if exclusion.skip(rel, item.is_dir(follow_symlinks=False)):
                    continue
            except OSError:
                pass  # is_dir() could not tell: the stat below reports it
            rel = member_name(label, rel)
            try:
                info = item.stat(follow_symlinks=False)
                mode = info.st_mode
                if stat.S_ISLNK(mode):
                    target = os.readlink(item.path)
                    entries.append(Entry(rel, "symlink", 0o777, 0, info.st_mtime, target))
                elif stat.S_ISDIR(mode):
                    pending.append(rel)
                    entries.append(Entry(rel, "dir", stat.S_IMODE(mode), 0, info.st_mtime))
                elif stat.S_ISREG(mode):
                    # opening is the only true test: os.access is blind to root and ACLs
                    os.close(os.open(item.path, OPEN_FLAGS))
                    entries.append(
                        Entry(rel, "file", stat.S_IMODE(mode), info.st_size, info.st_mtime)
                    )
                else:
                    raise special_error(label, "file", rel, type_name(mode))
            except PermissionError:
                raise ArtifactError(
                    f"artifact {label}: {rel!r} cannot be read (permission denied)"
                    " — make it readable by the user running deployer"
                ) from None
            except OSError as exc:
                raise ArtifactError(
                    f"artifact {label}: {rel!r} cannot be read ({reason(exc)}) — check the file"
                ) from exc
        if len(entries) > max_members:
            raise _too_many(label, max_members)
    return entries


def _is_ignore_file(name: str, *, dos: bool = False) -> bool:
    try:
        return clean_name(name, dos=dos) == IGNORE_FILE
    except BadName:
        return False  # refused with its reason once every name is checked


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "directory"
    if member.issym():
        return "symlink"
    return "hard link" if member.islnk() else TAR_TYPES.get(member.type, "special file")


def _scan_tar(
    path: Path, label: str, max_members: int, patterns: Sequence[str]
) -> tuple[list[Entry], dict[str, Origin], tuple[str, ...]]:
    ignore: list[str] | None = None
    try:
        with TarSource(path) as source:
            tar = tarfile.TarFile(fileobj=source, mode="r")
            members: list[tarfile.TarInfo] = []
            for member in tar:  # header by header: stop at the limit, not after reading them all
                members.append(member)
                if len(members) > max_members:
                    raise _too_many(label, max_members)
                if _is_ignore_file(member.name):
                    if not member.isfile():
                        raise not_a_file_error(label, _member_kind(member))
                    if ignore is not None:
                        raise _twice(label, member.name)
                    # read now, in passing: a compressed stream is read front to back once
                    check_size(member.size, label)
                    ignore = read_patterns(_read_member(tar, member), label)
            source.check_end(tar.offset)
    except PermissionError:
        raise unreadable_error(label) from None
    except READ_ERRORS as exc:
        raise ArtifactError(
            f"artifact {label} is not a valid tar archive ({reason(exc)}) — rebuild it"
        ) from exc
    paths = [member_name(label, m.name) for m in members]
    files = {
        rel: index for index, (m, rel) in enumerate(zip(members, paths, strict=True)) if m.isfile()
    }
    exclusion = Exclusion([*(ignore or []), *patterns])
    entries: list[Entry] = []
    origins: dict[str, Origin] = {}
    for index, (member, rel) in enumerate(zip(members, paths, strict=True)):
        if not rel:
            if member.isdir():
                continue  # "./": the release directory itself, created by the target
            raise ArtifactError(
                f"artifact {label}: member {member.name!r} names the release directory itself"
                " but is not a directory — rebuild the archive"
            )
        if exclusion.skip(rel, member.isdir()):
            continue
        mode = member.mode & 0o7777
        origin = Origin(index, member.name, index, member.name)
        if member.isdir():
            entries.append(Entry(rel, "dir", mode or 0o755, 0, member.mtime))
        elif member.issym():
            entries.append(Entry(rel, "symlink", 0o777, 0, member.mtime, member.linkname))
        elif member.islnk():
            try:
                linked = files.get(clean_name(member.linkname))
            except BadName as exc:
                raise ArtifactError(
                    f"artifact {label}: hard link {rel!r} -> {member.linkname!r} {exc.reason}"
                    " — archive the file itself (tar --hard-dereference)"
                ) from None
            if linked is None:
                raise ArtifactError(
                    f"artifact {label}: hard link {rel!r} -> {member.linkname!r} does not point to"
                    " a regular file in the archive — archive the file itself (tar --hard-dereference)"
                )
            target = members[linked]
            entries.append(Entry(rel, "file", mode or 0o644, target.size, member.mtime))
            origin = Origin(index, member.name, linked, target.name)
        elif member.isfile():
            entries.append(Entry(rel, "file", mode or 0o644, member.size, member.mtime))
        else:
            kind = TAR_TYPES.get(member.type, f"tar entry of type {member.type.decode()!r}")
            raise special_error(label, "member", rel, kind)
        origins[rel] = origin
    return entries, origins, exclusion.excluded


def _twice(label: str, name: str) -> ArtifactError:
    return ArtifactError(
        f"artifact {label}: member {name!r} appears twice — rebuild the archive so every path"
        " appears once"
    )


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return b"" if handle is None else handle.read(MAX_IGNORE_FILE + 1)


def _scan_zip(
    path: Path, label: str, max_members: int, patterns: Sequence[str]
) -> tuple[list[Entry], dict[str, Origin], tuple[str, ...]]:
    try:
        with open(path, "rb") as raw:
            declared = zip_entry_count(raw)
            if declared is not None and declared > max_members:
                raise _too_many(label, max_members)  # before zipfile reads them all into memory
            with zipfile.ZipFile(raw) as archive:
                if len(archive.infolist()) > max_members:
                    raise _too_many(label, max_members)
                exclusion = Exclusion([*_zip_ignore_file(archive, label), *patterns])
                entries, origins = _zip_entries(archive, label, exclusion)
                _verify_zip(archive, label, entries, origins)
    except PermissionError:
        raise unreadable_error(label) from None
    except READ_ERRORS as exc:
        raise ArtifactError(
            f"artifact {label} is not a valid zip archive ({reason(exc)}) — rebuild it"
        ) from exc
    return entries, origins, exclusion.excluded


def _zip_ignore_file(archive: zipfile.ZipFile, label: str) -> list[str]:
    """The patterns of the zip's own .deployignore (none when it has none)."""
    found = [i for i in archive.infolist() if _is_ignore_file(i.filename, dos=True)]
    if not found:
        return []
    if len(found) > 1:
        raise _twice(label, found[1].filename)
    info = found[0]
    unix, is_dir = _zip_mode(info)
    if is_dir or stat.S_IFMT(unix) not in (0, stat.S_IFREG):
        kind = "directory" if is_dir else "symlink" if stat.S_ISLNK(unix) else type_name(unix)
        raise not_a_file_error(label, kind)
    check_size(info.file_size, label)  # before reading it
    return read_patterns(archive.read(info), label)


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (APPNOTE 4.3.16)
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator (4.3.15)
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record (4.3.14)


def zip_entry_count(raw: BinaryIO) -> int | None:
    """The number of entries a zip's end records declare (None when they cannot be read)."""
    size = raw.seek(0, os.SEEK_END)
    tail_size = min(size, _EOCD.size + 0xFFFF)  # the record, then a comment of up to 64 KiB
    raw.seek(size - tail_size)
    tail = raw.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return None
    entries = int(_EOCD.unpack_from(tail, at)[4])
    if entries != 0xFFFF or at < _ZIP64_LOCATOR.size:
        return entries
    signature, _, offset, _ = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
    if signature != b"PK\x06\x07" or offset + _ZIP64_EOCD.size > size:
        return None
    raw.seek(offset)
    record = raw.read(_ZIP64_EOCD.size)
    if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
        return None
    return int(_ZIP64_EOCD.unpack(record)[7])


def _zip_mode(info: zipfile.ZipInfo) -> tuple[int, bool]:
    """The member's unix st_mode (0 when the zip has none) and whether it is a directory."""
    # unix zip tools keep st_mode in the high half; elsewhere it holds junk (Python: 0600)
    unix = info.external_attr >> 16 if info.create_system == 3 else 0
    return unix, info.filename.replace("\\", "/").endswith("/") or stat.S_ISDIR(unix)


def _zip_entries(
    archive: zipfile.ZipFile, label: str, exclusion: Exclusion
) -> tuple[list[Entry], dict[str, Origin]]:
    entries: list[Entry] = []
    origins: dict[str, Origin] = {}
    for index, info in enumerate(archive.infolist()):
        rel = member_name(label, info.filename, dos=True)
        unix, is_dir = _zip_mode(info)
        if not rel:
            if is_dir:
                continue
            raise ArtifactError(
                f"artifact {label}: member {info.filename!r} names the release directory itself"
                " but is not a directory — rebuild the archive"
            )
        if exclusion.skip(rel, is_dir):
            continue
        if info.flag_bits & 0x1:
            raise ArtifactError(
                f"artifact {label}: member {info.filename!r} is encrypted"
                " — build the zip without a password"
            )
        perms = stat.S_IMODE(unix)
        mtime = _zip_mtime(info)
        if is_dir:
            entries.append(Entry(rel, "dir", perms or 0o755, 0, mtime))
        elif stat.S_ISLNK(unix):
            entries.append(Entry(rel, "symlink", 0o777, 0, mtime, _zip_link(archive, info, label)))
        elif stat.S_IFMT(unix) in (0, stat.S_IFREG):
            entries.append(Entry(rel, "file", perms or 0o644, info.file_size, mtime))
        else:
            raise special_error(label, "member", rel, type_name(unix))
        origins[rel] = Origin(index, info.filename, index, info.filename)
    return entries, origins


def _zip_link(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> str:
    if info.file_size > MAX_LINK_TARGET:
        raise ArtifactError(
            f"artifact {label}: symlink {info.filename!r} has a {info.file_size}-byte target"
            " — rebuild the zip (zip --symlinks)"
        )
    return archive.read(info).decode("utf-8", "surrogateescape")


def _verify_zip(
    archive: zipfile.ZipFile, label: str, entries: list[Entry], origins: Mapping[str, Origin]
) -> None:
    """Read every file once: CRC errors and unsupported methods show up now, not mid-upload."""
    infos = archive.infolist()
    for entry in entries:
        if entry.kind != "file":
            continue
        rel, info = entry.path, infos[origins[entry.path].content]
        try:
            with archive.open(info) as handle:
                while handle.read(CHUNK):
                    pass
        except NotImplementedError as exc:
            raise ArtifactError(
                f"artifact {label}: member {rel!r} uses an unsupported compression method"
                f" ({reason(exc)}) — build the zip with deflate"
            ) from exc
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise ArtifactError(
                f"artifact {label}: member {rel!r} is damaged ({reason(exc)}) — rebuild the zip"
            ) from exc


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    """The UTC mtime from the extended-timestamp field when present, else the local DOS time."""
    extra, offset = info.extra, 0
    while offset + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, offset)
        if tag == 0x5455 and size >= 5 and extra[offset + 4] & 1:
            return float(struct.unpack_from("<i", extra, offset + 5)[0])
        offset += 4 + size
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return 0.0


# --------------------------------------------------------------------------- reading tar sources


# --------------------------------------------------------------------------- reading contents


# --------------------------------------------------------------------------- writing
