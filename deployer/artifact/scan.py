"""The artifact: a directory or a tar/zip file, validated whole before a byte leaves the machine.

``open_artifact`` reads the whole artifact once and refuses anything that could write outside the
release (absolute or ``..`` members, members under a symlink, symlinks leading out of the tree,
hard links to elsewhere, device files, duplicates) or that is damaged (truncated or corrupt
archives, unreadable files). ``write_tar`` then streams the tree as one tar (gzip) stream in
fixed-size chunks, so memory stays flat whatever the artifact size.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import posixpath
import stat
import struct
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Container, Generator, Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Literal, NamedTuple, Protocol, cast

from deployer.errors import ArtifactError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

EntryKind = Literal["file", "dir", "symlink"]
ArtifactKind = Literal["dir", "tar", "zip"]
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SUPPORTED = "a directory or a .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip file"
CHUNK = 1 << 20
_WRITE = 64 << 10  # smallest write handed to `out`: tar headers alone would be 512-byte packets
_MAX_LINK = 4096  # PATH_MAX: a longer zip "symlink" is not a symlink target
_MAX_HOPS = 40  # Linux gives up with ELOOP after this many symlinks in one path
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)  # a file swapped for a FIFO must not hang the deploy
    | getattr(os, "O_CLOEXEC", 0)
)
# What reading a damaged or changing artifact raises, from the archive and compression modules.
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
    NotImplementedError,
)


@dataclass(frozen=True)
class Entry:
    """One member of the release tree."""

    path: str
    kind: EntryKind
    mode: int
    size: int
    mtime: float
    linkname: str = ""


class _Origin(NamedTuple):
    """Where an entry sits in a tar or zip artifact (indexes in the archive's own order)."""

    position: int  # the member that produced the entry
    name: str  # its name as stored, to notice an archive replaced since it was checked
    content: int  # the member holding the bytes: differs from position for tar hard links
    content_name: str


@dataclass(frozen=True)
class Artifact:
    """A validated artifact: its kind and the entries of the tree it produces."""

    source: Path
    kind: ArtifactKind
    entries: tuple[Entry, ...]
    _origins: Mapping[str, _Origin] = field(default_factory=dict, repr=False, compare=False)

    @property
    def total_size(self) -> int:
        """Sum of the file sizes (uncompressed)."""
        return sum(e.size for e in self.entries if e.kind == "file")

    @property
    def file_count(self) -> int:
        """Number of regular files."""
        return sum(1 for e in self.entries if e.kind == "file")


class Sink(Protocol):
    """Where a tar stream goes: anything with write (an SSH channel, a pipe, a file)."""

    def write(self, data: bytes, /) -> int:
        """Write all of data."""
        ...


# --------------------------------------------------------------------------- names and messages


def _label(path: Path | str) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class _BadName(Exception):
    """Why a member name cannot be used (phrased to follow the name) and the fix."""

    def __init__(self, reason: str, fix: str = "rebuild the archive with relative paths") -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


def _clean(name: str, *, dos: bool = False) -> str:
    """A member name as a normalized relative path ('' for the release directory itself)."""
    if "\0" in name:
        raise _BadName("contains a NUL byte", "rebuild the archive")
    if any(char in name for char in "\n\r\t"):
        raise _BadName(
            "has a line break or tab in its name",
            "rename it (release manifests and checksums on the target are one line per file)",
        )
    if dos:
        # zip tools on Windows write backslashes and drive letters; unzip treats them as such
        name = name.replace("\\", "/")
        if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
            raise _BadName("is an absolute path")
    if not name:
        raise _BadName("has an empty name", "rebuild the archive")
    if name.startswith("/"):
        raise _BadName("is an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        if posixpath.normpath("/".join(parts)).split("/")[0] == "..":
            raise _BadName("escapes the release directory")
        raise _BadName("contains a '..' component")
    return "/".join(parts)


def _member(label: str, name: str, *, dos: bool = False) -> str:
    try:
        return _clean(name, dos=dos)
    except _BadName as exc:
        raise ArtifactError(f"artifact {label}: member {name!r} {exc.reason} — {exc.fix}") from None


def _changed(label: str, path: str | None, detail: str) -> ArtifactError:
    where = f"artifact {label}" + ("" if path is None else f": {path!r}")
    return ArtifactError(
        f"{where} changed after it was checked ({detail})"
        " — leave the artifact alone during a deploy, then push again"
    )


def _special(label: str, what: str, path: str, kind: str) -> ArtifactError:
    return ArtifactError(
        f"artifact {label}: {what} {path!r} is a {kind} — only files, directories and symlinks"
        " can be deployed; remove it"
    )


# --------------------------------------------------------------------------- opening


def open_artifact(path: Path) -> Artifact:
    """Inspect and validate an artifact; raises ArtifactError before anything is written anywhere."""
    label = _label(path)
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
            f"artifact {label} cannot be read ({_reason(exc)}) — check the path"
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        return _assemble(path, label, "dir", _scan_dir(path, label), {})
    lowered = path.name.lower()
    if not stat.S_ISREG(info.st_mode) or not lowered.endswith((*TAR_SUFFIXES, ".zip")):
        raise ArtifactError(f"artifact {label} is not {SUPPORTED} — package it as one of those")
    if lowered.endswith(".zip"):
        entries, origins = _scan_zip(path, label)
        return _assemble(path, label, "zip", entries, origins)
    entries, origins = _scan_tar(path, label)
    return _assemble(path, label, "tar", entries, origins)


def _unreadable(label: str) -> ArtifactError:
    return ArtifactError(
        f"artifact {label} cannot be read (permission denied)"
        " — make it readable by the user running deployer"
    )


def _scan_dir(root: Path, label: str) -> list[Entry]:
    entries: list[Entry] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(os.path.join(root, folder) if folder else root) as items:
                listing = list(items)
        except PermissionError:
            if not folder:
                raise _unreadable(label) from None
            raise ArtifactError(
                f"artifact {label}: directory {folder!r} cannot be read (permission denied)"
                " — make it readable by the user running deployer"
            ) from None
        except OSError as exc:
            raise ArtifactError(
                f"artifact {label}: directory {folder or '.'!r} cannot be read ({_reason(exc)})"
                " — check the directory"
            ) from exc
        for item in listing:
            rel = _member(label, f"{folder}/{item.name}" if folder else item.name)
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
                    os.close(os.open(item.path, _OPEN_FLAGS))
                    entries.append(
                        Entry(rel, "file", stat.S_IMODE(mode), info.st_size, info.st_mtime)
                    )
                else:
                    raise _special(label, "file", rel, _type_name(mode))
            except PermissionError:
                raise ArtifactError(
                    f"artifact {label}: {rel!r} cannot be read (permission denied)"
                    " — make it readable by the user running deployer"
                ) from None
            except OSError as exc:
                raise ArtifactError(
                    f"artifact {label}: {rel!r} cannot be read ({_reason(exc)}) — check the file"
                ) from exc
    return entries


def _type_name(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return f"special file (type {stat.S_IFMT(mode):o})"


_TAR_TYPES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}


def _scan_tar(path: Path, label: str) -> tuple[list[Entry], dict[str, _Origin]]:
    try:
        with _TarSource(path) as source:
            tar = tarfile.TarFile(fileobj=source, mode="r")
            members = tar.getmembers()
            source.check_end(tar.offset)
    except PermissionError:
        raise _unreadable(label) from None
    except _READ_ERRORS as exc:
        raise ArtifactError(
            f"artifact {label} is not a valid tar archive ({_reason(exc)}) — rebuild it"
        ) from exc
    paths = [_member(label, m.name) for m in members]
    files = {
        rel: index for index, (m, rel) in enumerate(zip(members, paths, strict=True)) if m.isfile()
    }
    entries: list[Entry] = []
    origins: dict[str, _Origin] = {}
    for index, (member, rel) in enumerate(zip(members, paths, strict=True)):
        if not rel:
            if member.isdir():
                continue  # "./": the release directory itself, created by the target
            raise ArtifactError(
                f"artifact {label}: member {member.name!r} names the release directory itself"
                " but is not a directory — rebuild the archive"
            )
        mode = member.mode & 0o7777
        origin = _Origin(index, member.name, index, member.name)
        if member.isdir():
            entries.append(Entry(rel, "dir", mode or 0o755, 0, member.mtime))
        elif member.issym():
            entries.append(Entry(rel, "symlink", 0o777, 0, member.mtime, member.linkname))
        elif member.islnk():
            try:
                linked = files.get(_clean(member.linkname))
            except _BadName as exc:
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
            origin = _Origin(index, member.name, linked, target.name)
        elif member.isfile():
            entries.append(Entry(rel, "file", mode or 0o644, member.size, member.mtime))
        else:
            kind = _TAR_TYPES.get(member.type, f"tar entry of type {member.type.decode()!r}")
            raise _special(label, "member", rel, kind)
        origins[rel] = origin
    return entries, origins


def _scan_zip(path: Path, label: str) -> tuple[list[Entry], dict[str, _Origin]]:
    try:
        with open(path, "rb") as raw, zipfile.ZipFile(raw) as archive:
            entries, origins = _zip_entries(archive, label)
            _verify_zip(archive, label, entries, origins)
    except PermissionError:
        raise _unreadable(label) from None
    except _READ_ERRORS as exc:
        raise ArtifactError(
            f"artifact {label} is not a valid zip archive ({_reason(exc)}) — rebuild it"
        ) from exc
    return entries, origins


def _zip_entries(archive: zipfile.ZipFile, label: str) -> tuple[list[Entry], dict[str, _Origin]]:
    entries: list[Entry] = []
    origins: dict[str, _Origin] = {}
    for index, info in enumerate(archive.infolist()):
        rel = _member(label, info.filename, dos=True)
        if info.flag_bits & 0x1:
            raise ArtifactError(
                f"artifact {label}: member {info.filename!r} is encrypted"
                " — build the zip without a password"
            )
        # unix zip tools keep st_mode in the high half; elsewhere it holds junk (Python: 0600)
        unix = info.external_attr >> 16 if info.create_system == 3 else 0
        perms = stat.S_IMODE(unix)
        mtime = _zip_mtime(info)
        is_dir = info.filename.replace("\\", "/").endswith("/") or stat.S_ISDIR(unix)
        if not rel:
            if is_dir:
                continue
            raise ArtifactError(
                f"artifact {label}: member {info.filename!r} names the release directory itself"
                " but is not a directory — rebuild the archive"
            )
        if is_dir:
            entries.append(Entry(rel, "dir", perms or 0o755, 0, mtime))
        elif stat.S_ISLNK(unix):
            entries.append(Entry(rel, "symlink", 0o777, 0, mtime, _zip_link(archive, info, label)))
        elif stat.S_IFMT(unix) in (0, stat.S_IFREG):
            entries.append(Entry(rel, "file", perms or 0o644, info.file_size, mtime))
        else:
            raise _special(label, "member", rel, _type_name(unix))
        origins[rel] = _Origin(index, info.filename, index, info.filename)
    return entries, origins


def _zip_link(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> str:
    if info.file_size > _MAX_LINK:
        raise ArtifactError(
            f"artifact {label}: symlink {info.filename!r} has a {info.file_size}-byte target"
            " — rebuild the zip (zip --symlinks)"
        )
    return archive.read(info).decode("utf-8", "surrogateescape")


def _verify_zip(
    archive: zipfile.ZipFile, label: str, entries: list[Entry], origins: Mapping[str, _Origin]
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
                f" ({_reason(exc)}) — build the zip with deflate"
            ) from exc
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise ArtifactError(
                f"artifact {label}: member {rel!r} is damaged ({_reason(exc)}) — rebuild the zip"
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


def _assemble(
    source: Path,
    label: str,
    kind: ArtifactKind,
    entries: list[Entry],
    origins: Mapping[str, _Origin],
) -> Artifact:
    """Check the tree as a whole (duplicates, paths through symlinks, links leaving it), sort it."""
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
        raise ArtifactError(
            f"artifact {label} is empty (no files) — build it first or check the path"
        )
    ordered = tuple(sorted(by_path.values(), key=lambda e: e.path.split("/")))
    return Artifact(source, kind, ordered, origins)


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


# --------------------------------------------------------------------------- reading tar sources


def _decompressed(raw: io.BufferedReader) -> io.BufferedIOBase:
    """The tar bytes inside raw, recognised by magic number as GNU tar does (not by file name)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


class _TarSource:
    """The uncompressed bytes of a tar artifact, as the file object tarfile reads.

    Forward seeks read on; the first backward seek into a compressed stream unpacks the archive
    once into a temporary file, because gzip/bz2/xz would otherwise decompress again from the
    start on every backward seek (random access in sorted order would cost minutes).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        with ExitStack() as stack:
            raw = stack.enter_context(open(path, "rb"))
            self._stream: io.BufferedIOBase | IO[bytes] = stack.enter_context(_decompressed(raw))
            self._stack = stack.pop_all()
        self._seekable = self._stream is raw
        self._last = (0, b"")

    def __enter__(self) -> _TarSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every file this source opened."""
        self._stack.close()

    def read(self, size: int = -1, /) -> bytes:
        """Read from the current position (remembering the block, see check_end)."""
        at = self._stream.tell()
        data = self._stream.read(size)
        self._last = (at, data[: tarfile.BLOCKSIZE])
        return data

    def tell(self) -> int:
        """The position in the uncompressed tar."""
        return self._stream.tell()

    def seek(self, pos: int, whence: int = 0, /) -> int:
        """Move in the uncompressed tar; see the class docstring about going backwards."""
        if whence == 1:
            pos += self._stream.tell()
        elif whence != 0:
            raise io.UnsupportedOperation("seek from the end")
        here = self._stream.tell()
        if pos >= here and not self._seekable:
            while here < pos and self._stream.read(min(CHUNK, pos - here)):
                here = self._stream.tell()
            return here
        if not self._seekable:
            self._unpack()
        return self._stream.seek(pos)

    def write(self, data: bytes, /) -> int:
        """Sources are read-only."""
        raise io.UnsupportedOperation("write")

    def _unpack(self) -> None:
        spool = self._stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - closed by close()
        with open(self._path, "rb") as raw, _decompressed(raw) as stream:
            while chunk := stream.read(CHUNK):
                spool.write(chunk)
        self._stream, self._seekable = spool, True

    def check_end(self, offset: int) -> None:
        """Raise unless tarfile stopped at a real end of archive, then read to the very end.

        tarfile ends quietly at the first header it cannot parse, where GNU tar fails with
        "Skipping to next header"; reading on makes gzip, bzip2 and xz verify their checksums.
        """
        at, block = self._last
        if at == offset and block.strip(b"\0"):
            raise tarfile.ReadError(f"damaged header at byte {offset}")
        if at == offset and 0 < len(block) < tarfile.BLOCKSIZE:
            raise tarfile.ReadError("truncated header at the end")
        while self._stream.read(CHUNK):
            pass


def _tar_members(tar: tarfile.TarFile, label: str) -> Iterator[tuple[int, tarfile.TarInfo]]:
    index = 0
    while True:
        try:
            member = tar.next()
        except _READ_ERRORS as exc:
            raise _changed(label, None, f"it can no longer be read: {_reason(exc)}") from exc
        if member is None:
            return
        yield index, member
        index += 1


# --------------------------------------------------------------------------- reading contents


class _Content(io.RawIOBase):
    """Exactly the checked size of one file; read errors and size changes become ArtifactError."""

    def __init__(
        self,
        inner: IO[bytes],
        label: str,
        entry: Entry,
        on_progress: Callable[[int], None] | None = None,
        *,
        owns: bool = True,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._label = label
        self._entry = entry
        self._on_progress = on_progress
        self._owns = owns
        self._left = entry.size

    def readable(self) -> bool:
        """Always: this is a reader."""
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to size bytes (all that is left when size is negative), never short before the end."""
        want = self._left if size is None or size < 0 else min(size, self._left)
        chunks: list[bytes] = []
        got = 0
        while got < want:
            try:
                data = self._inner.read(min(want - got, CHUNK))
            except _READ_ERRORS as exc:
                raise _changed(self._label, self._entry.path, _reason(exc)) from exc
            if not data:
                raise _changed(self._label, self._entry.path, "it is shorter now")
            chunks.append(data)
            got += len(data)
        self._left -= got
        if got and self._on_progress is not None:
            self._on_progress(got)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill buffer from read()."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Close the underlying file when this reader owns it."""
        if self._owns and not self.closed:
            self._inner.close()
        super().close()


def _open_file(root: Path, label: str, entry: Entry) -> IO[bytes]:
    """A file of a directory artifact, refusing anything that is no longer a regular file."""
    try:
        fd = os.open(os.path.join(root, entry.path), _OPEN_FLAGS)
    except OSError as exc:
        raise _changed(label, entry.path, _reason(exc)) from exc
    handle = open(fd, "rb", buffering=0)  # noqa: SIM115 - returned to the caller
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise _changed(label, entry.path, "it is no longer a regular file")
    return handle


def _zip_member(
    infos: list[zipfile.ZipInfo], label: str, path: str, origin: _Origin
) -> zipfile.ZipInfo:
    info = infos[origin.content] if origin.content < len(infos) else None
    if info is None or info.filename != origin.content_name:
        raise _changed(label, path, "the zip was replaced")
    return info


def _fetcher(artifact: Artifact, label: str, stack: ExitStack) -> Callable[[Entry], IO[bytes]]:
    """Random access to file contents, for open_contents."""
    if artifact.kind == "dir":
        return lambda entry: _open_file(artifact.source, label, entry)
    if artifact.kind == "zip":
        raw = stack.enter_context(open(artifact.source, "rb"))  # noqa: SIM115 - the stack closes it
        archive = stack.enter_context(zipfile.ZipFile(raw))
        infos = archive.infolist()
        return lambda entry: archive.open(
            _zip_member(infos, label, entry.path, artifact._origins[entry.path])
        )
    tar = tarfile.TarFile(fileobj=stack.enter_context(_TarSource(artifact.source)))
    members = tar.getmembers()

    def fetch(entry: Entry) -> IO[bytes]:
        origin = artifact._origins[entry.path]
        member = members[origin.content] if origin.content < len(members) else None
        if member is None or member.name != origin.content_name or member.size != entry.size:
            raise _changed(label, entry.path, "the archive was replaced")
        return _extract(tar, member, label)

    return fetch


@contextmanager
def open_contents(artifact: Artifact) -> Iterator[Callable[[Entry], BinaryIO]]:
    """Yield opener(entry) -> a readable file for a file entry, valid inside the with-block.

    Any order works; for a compressed tar, reading out of the archive's own order costs one extra
    decompression into a temporary file.
    """
    label = _label(artifact.source)
    with ExitStack() as stack:
        try:
            fetch = _fetcher(artifact, label, stack)
        except _READ_ERRORS as exc:
            raise _changed(label, None, f"it can no longer be read: {_reason(exc)}") from exc

        def opener(entry: Entry) -> BinaryIO:
            if entry.kind != "file":
                raise ValueError(f"{entry.path!r} is a {entry.kind}, not a file")
            try:
                inner = fetch(entry)
            except _READ_ERRORS as exc:
                raise _changed(label, entry.path, _reason(exc)) from exc
            return cast(BinaryIO, _Content(inner, label, entry))

        yield opener


@contextmanager
def read_in_order(
    artifact: Artifact, only: Container[str] | None = None
) -> Iterator[Iterator[tuple[Entry, IO[bytes] | None]]]:
    """Every entry with its content (None for directories and symlinks), in the artifact's fastest order."""
    with closing(_in_order(artifact, _label(artifact.source), only)) as items:
        yield items


def _in_order(
    artifact: Artifact, label: str, only: Container[str] | None
) -> Generator[tuple[Entry, IO[bytes] | None], None, None]:
    """Entries to send, each with its content, in the order the artifact can be read fastest.

    Directories and zips are read in entry order. A tar is read once, front to back, in its own
    member order (random access into a compressed tar means decompressing it again and again).
    """
    wanted = [e for e in artifact.entries if e.kind != "file" or only is None or e.path in only]
    if artifact.kind == "tar":
        yield from _tar_in_order(artifact, label, wanted)
        return
    with ExitStack() as stack:
        if artifact.kind == "zip":
            try:
                raw = stack.enter_context(open(artifact.source, "rb"))
                archive = stack.enter_context(zipfile.ZipFile(raw))
            except _READ_ERRORS as exc:
                raise _changed(label, None, f"it can no longer be read: {_reason(exc)}") from exc
            infos = archive.infolist()
        for entry in wanted:
            if entry.kind != "file":
                yield entry, None
            elif artifact.kind == "dir":
                with _open_file(artifact.source, label, entry) as handle:
                    yield entry, handle
                    # a consumer that read the whole declared size must have reached the end
                    if handle.tell() >= entry.size and handle.read(1):
                        raise _changed(label, entry.path, "it is longer now")
            else:
                origin = artifact._origins[entry.path]
                try:
                    member = archive.open(_zip_member(infos, label, entry.path, origin))
                except _READ_ERRORS as exc:
                    raise _changed(label, entry.path, _reason(exc)) from exc
                with member:
                    yield entry, member


def _tar_in_order(
    artifact: Artifact, label: str, wanted: list[Entry]
) -> Iterator[tuple[Entry, IO[bytes] | None]]:
    origins = artifact._origins
    at: dict[int, list[Entry]] = {}  # member index -> entries sent when the reading gets there
    needs: dict[int, Entry] = {}  # member index -> an entry that takes its bytes
    copied: set[int] = set()  # members whose bytes a hard link elsewhere needs again
    for entry in wanted:
        origin = origins.get(entry.path)
        if origin is None or entry.kind == "dir":
            continue  # write_tar sends directories right before their first member
        # a hard link is sent where it was stored; one stored before its target waits for it
        at.setdefault(max(origin.position, origin.content), []).append(entry)
        if entry.kind == "file":
            needs[origin.content] = entry
            if origin.content != origin.position:
                copied.add(origin.content)
    try:
        source = _TarSource(artifact.source)
    except _READ_ERRORS as exc:
        raise _changed(label, None, f"it can no longer be read: {_reason(exc)}") from exc
    with source, ExitStack() as stack:
        tar = tarfile.TarFile(fileobj=source)
        spool: IO[bytes] | None = None
        spooled: dict[int, int] = {}  # member index -> where its bytes start in the spool
        for index, member in _tar_members(tar, label):
            group = at.pop(index, [])
            for entry in group:
                if (
                    origins[entry.path].position == index
                    and member.name != origins[entry.path].name
                ):
                    raise _changed(label, entry.path, "the archive was replaced")
            taker = needs.get(index)
            if taker is not None:
                origin = origins[taker.path]
                if member.name != origin.content_name or member.size != taker.size:
                    raise _changed(label, taker.path, "the archive was replaced")
            if taker is not None and index in copied:
                # one temporary file for all copied contents: memory and descriptors stay flat
                if spool is None:
                    spool = stack.enter_context(tempfile.TemporaryFile())
                spool.seek(0, os.SEEK_END)
                spooled[index] = spool.tell()
                content = _Content(_extract(tar, member, label), label, taker)
                while chunk := content.read(CHUNK):
                    spool.write(chunk)
            for entry in group:
                content_at = origins[entry.path].content
                if entry.kind != "file":
                    yield entry, None
                elif spool is not None and content_at in spooled:
                    spool.seek(spooled[content_at])
                    yield entry, spool
                else:
                    yield entry, _extract(tar, member, label)
            if not at:
                break  # nothing further is needed: skip decompressing the rest
        if at:
            raise _changed(label, None, "the archive is shorter now")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> IO[bytes]:
    handle = tar.extractfile(member) if member.isfile() else None
    if handle is None:
        raise _changed(label, member.name, "it is no longer a regular file")
    return handle


# --------------------------------------------------------------------------- writing


class _Sink:
    """What tarfile writes into: optional gzip, then `out`, in writes of at least _WRITE bytes."""

    def __init__(self, out: Sink, compresslevel: int | None) -> None:
        self._out = out
        # wbits 31: a gzip member with header and trailer, mtime 0 and no file name (reproducible)
        self._gzip = (
            None if compresslevel is None else zlib.compressobj(compresslevel, zlib.DEFLATED, 31)
        )
        self._pending = bytearray()
        self._written = 0

    def write(self, data: bytes, /) -> int:
        """Take uncompressed tar bytes."""
        self._written += len(data)
        self._emit(data if self._gzip is None else self._gzip.compress(data))
        return len(data)

    def tell(self) -> int:
        """Uncompressed bytes taken so far (tarfile asks once)."""
        return self._written

    def read(self, size: int = -1, /) -> bytes:
        """Sinks are write-only."""
        raise io.UnsupportedOperation("read")

    def seek(self, pos: int, /) -> int:
        """Sinks are streams."""
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        """Nothing to do: `out` belongs to the caller, and finish() ends the stream."""

    def _emit(self, data: bytes) -> None:
        if self._pending or len(data) < _WRITE:
            self._pending += data
            if len(self._pending) < _WRITE:
                return
            data = bytes(self._pending)
            self._pending.clear()
        self._out.write(data)

    def finish(self) -> None:
        """Write what is pending and the gzip trailer, then flush `out` if it can."""
        if self._gzip is not None:
            self._pending += self._gzip.flush()
        if self._pending:
            self._out.write(bytes(self._pending))
            self._pending.clear()
        flush = getattr(self._out, "flush", None)
        if callable(flush):
            flush()


def _header(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[
        entry.kind
    ]
    info.mode = entry.mode
    info.size = entry.size if entry.kind == "file" else 0
    info.linkname = entry.linkname if entry.kind == "symlink" else ""
    info.mtime = int(entry.mtime)  # a float would cost an extra PAX header per member
    info.uid = info.gid = 0
    info.uname = info.gname = ""  # the target extracts as the deploying user
    return info


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
    if compresslevel is not None and not 0 <= compresslevel <= 9:
        raise ValueError(f"compresslevel must be 0-9 or None, not {compresslevel}")
    label = _label(artifact.source)
    by_path = {e.path: e for e in artifact.entries}
    sink = _Sink(out, compresslevel)
    tar = tarfile.TarFile(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK)
    sent: set[str] = set()
    # On failure neither the end-of-archive blocks nor the gzip trailer are written, so the
    # receiving tar sees a cut stream and fails instead of unpacking a shorter "valid" tree.
    with closing(_in_order(artifact, label, only)) as items:
        for entry, content in items:
            # each directory comes right before its contents: GNU tar applies a directory's
            # mode and mtime as soon as a member outside it appears
            missing: list[Entry] = []
            parent = posixpath.dirname(entry.path)
            while parent and parent not in sent:
                missing.append(by_path[parent])
                parent = posixpath.dirname(parent)
            for directory in reversed(missing):
                tar.addfile(_header(directory))
                sent.add(directory.path)
            if entry.path in sent:
                continue
            if content is None:
                tar.addfile(_header(entry))
            else:
                reader = _Content(content, label, entry, on_progress, owns=False)
                tar.addfile(_header(entry), cast(IO[bytes], reader))
            sent.add(entry.path)
        for entry in artifact.entries:
            if entry.kind == "dir" and entry.path not in sent:
                tar.addfile(_header(entry))  # empty directories, and those no file went into
    tar.close()
    sink.finish()
