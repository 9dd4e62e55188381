"""The upload stream: the checked tree as one tar (zstd or gzip when asked), in large writes, memory flat."""

from __future__ import annotations

import io
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Container
from typing import IO, cast

from deployer.artifact.adapt import AdaptiveZstd, AdaptLog, LevelPolicy
from deployer.artifact.compression import Compression
from deployer.artifact.contents import read_in_order
from deployer.artifact.model import CHUNK, PERMISSION_BITS, Artifact, Entry, Sink
from deployer.artifact.source import Content, label_of

GZIP_6 = Compression("gzip", 6)  # gzip's own default, for callers that do not choose

_WRITE = 64 << 10  # smallest write handed to `out`: tar headers alone would be 512-byte packets


class _Sink:
    """What tarfile writes into: the codec, then `out`, in writes of at least _WRITE bytes."""

    def __init__(self, out: Sink, compression: Compression) -> None:
        self._out = out
        # wbits 31: a gzip member with header and trailer, mtime 0 and no file name (reproducible)
        self._gzip = (
            zlib.compressobj(compression.level or 1, zlib.DEFLATED, 31)
            if compression.codec == "gzip"
            else None
        )
        self.zstd: AdaptiveZstd | None = None
        if compression.codec == "zstd":
            level = compression.level
            policy = LevelPolicy() if level is None else LevelPolicy(level, level, level)
            self.zstd = AdaptiveZstd(out, policy)
        self._pending = bytearray()
        self._written = 0

    def write(self, data: bytes, /) -> int:
        """Take uncompressed tar bytes."""
        self._written += len(data)
        if self.zstd is not None:
            # zstd takes its input in large pieces (tar headers alone would be 512-byte calls)
            self._pending += data
            if len(self._pending) >= _WRITE:
                self.zstd.write(bytes(self._pending))
                self._pending.clear()
            return len(data)
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
        """Write what is pending and the codec's end, then flush `out` if it can."""
        if self.zstd is not None:
            if self._pending:
                self.zstd.write(bytes(self._pending))
                self._pending.clear()
            self.zstd.finish()
        if self._gzip is not None:
            self._pending += self._gzip.flush()
        if self._pending:
            self._out.write(bytes(self._pending))
            self._pending.clear()
        flush = getattr(self._out, "flush", None)
        if callable(flush):
            flush()

    def abandon(self) -> None:
        """The stream failed: stop the zstd writer without ending the stream."""
        if self.zstd is not None:
            self.zstd.close(discard=True)


def _header(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[
        entry.kind
    ]
    info.mode = entry.mode & PERMISSION_BITS  # the scan cleared the rest; never send it anyway
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
    compression: Compression = GZIP_6,
    on_progress: Callable[[int], None] | None = None,
    only: Container[str] | None = None,
) -> AdaptLog | None:
    """Stream the artifact as one tar, encoded as `compression` says, into `out`.

    With `only`, regular files outside it are left out (they are already on the target);
    directories and symlinks are always sent. Returns what zstd's level did (None: not zstd).
    """
    label = label_of(artifact.source)
    by_path = {e.path: e for e in artifact.entries}
    sink = _Sink(out, compression)
    try:
        _write_members(artifact, sink, label, by_path, on_progress, only)
        sink.finish()
    except BaseException:
        sink.abandon()
        raise
    return sink.zstd.log if sink.zstd is not None else None


def _write_members(
    artifact: Artifact,
    sink: _Sink,
    label: str,
    by_path: dict[str, Entry],
    on_progress: Callable[[int], None] | None,
    only: Container[str] | None,
) -> None:
    tar = tarfile.TarFile(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK)
    sent: set[str] = set()
    # On failure neither the end-of-archive blocks nor the codec's trailer are written, so the
    # receiving tar sees a cut stream and fails instead of unpacking a shorter "valid" tree.
    with read_in_order(artifact, only) as items:
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
                reader = Content(content, label, entry, on_progress, owns=False)
                tar.addfile(_header(entry), cast(IO[bytes], reader))
            sent.add(entry.path)
        for entry in artifact.entries:
            if entry.kind == "dir" and entry.path not in sent:
                tar.addfile(_header(entry))  # empty directories, and those no file went into
    tar.close()
