"""Reading an artifact's bytes: tar sources, contents of exactly the checked size, changed artifacts.

An artifact is checked once and read again later (hashing, sending): every read re-checks that
it is still what was checked, and says so in one line when it is not.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING

from deployer.artifact.model import CHUNK, Entry, Origin
from deployer.errors import ArtifactError, reason

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)  # a file swapped for a FIFO must not hang the deploy
    | getattr(os, "O_CLOEXEC", 0)
)


# What reading a damaged or changing artifact raises, from the archive and compression modules.
READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
    NotImplementedError,
)


def label_of(path: Path | str) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)


def changed_error(label: str, path: str | None, detail: str) -> ArtifactError:
    where = f"artifact {label}" + ("" if path is None else f": {path!r}")
    return ArtifactError(
        f"{where} changed after it was checked ({detail})"
        " — leave the artifact alone during a deploy, then push again"
    )


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


class TarSource:
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

    def __enter__(self) -> TarSource:
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


def tar_members(tar: tarfile.TarFile, label: str) -> Iterator[tuple[int, tarfile.TarInfo]]:
    index = 0
    while True:
        try:
            member = tar.next()
        except READ_ERRORS as exc:
            raise changed_error(label, None, f"it can no longer be read: {reason(exc)}") from exc
        if member is None:
            return
        yield index, member
        index += 1


class Content(io.RawIOBase):
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
            except READ_ERRORS as exc:
                raise changed_error(self._label, self._entry.path, reason(exc)) from exc
            if not data:
                raise changed_error(self._label, self._entry.path, "it is shorter now")
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


def open_dir_file(root: Path, label: str, entry: Entry) -> IO[bytes]:
    """A file of a directory artifact, refusing anything that is no longer a regular file."""
    try:
        fd = os.open(os.path.join(root, entry.path), OPEN_FLAGS)
    except OSError as exc:
        raise changed_error(label, entry.path, reason(exc)) from exc
    handle = open(fd, "rb", buffering=0)  # noqa: SIM115 - returned to the caller
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise changed_error(label, entry.path, "it is no longer a regular file")
    return handle


def zip_member(
    infos: list[zipfile.ZipInfo], label: str, path: str, origin: Origin
) -> zipfile.ZipInfo:
    info = infos[origin.content] if origin.content < len(infos) else None
    if info is None or info.filename != origin.content_name:
        raise changed_error(label, path, "the zip was replaced")
    return info


def extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> IO[bytes]:
    handle = tar.extractfile(member) if member.isfile() else None
    if handle is None:
        raise changed_error(label, member.name, "it is no longer a regular file")
    return handle
