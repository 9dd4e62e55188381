"""SFTP requests in flight: a batch sends requests without waiting and handles each reply as it
comes (paramiko calls back per request number), so that many files are written, copied, listed or
removed at once. Plain ``sftp`` waits for every file before the next; here only memory
(``MAX_BUFFERED``), open handles (``MAX_OPEN``) and requests in flight (``MAX_REQUESTS``) bound
what is outstanding. ``ssh.sftp.SftpSession.batch`` hands these out.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_LSTAT,
    CMD_MKDIR,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READDIR,
    CMD_REMOVE,
    CMD_RMDIR,
    CMD_SETSTAT,
    CMD_STATUS,
    CMD_SYMLINK,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    int64,
)

from deployer.errors import RemoteError
from deployer.remote.files import COPY_DATA, HARDLINK, FileKind, FileStat

if TYPE_CHECKING:
    from deployer.ssh.sftp import SftpSession

MAX_REQUESTS = 1024  # requests sent and not yet answered (WRITEs wait for the SSH window anyway)
# Files open at once: a server-side copy is a chain of three round trips (open both, copy-data,
# close), so what is open bounds how many copies overlap. OpenSSH's sftp-server is bounded by its
# fd limit (limits@openssh.com tells); without that extension, stay modest.
MAX_OPEN = 64
MAX_OPEN_LIMITED = 384
MAX_BUFFERED = 8 << 20  # bytes held for files whose handle has not arrived yet

WRITE_FLAGS = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC

# An S_IFMT value (from lstat's mode) -> what it is.
_KINDS: dict[int, FileKind] = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}

CONNECTION_ERRORS = (paramiko.SSHException, EOFError, socket.timeout, ConnectionError)


def wire(path: str) -> bytes:
    """A path as sent: UTF-8, with undecodable names (from a listing) given back byte for byte."""
    return path.encode("utf-8", "surrogateescape")


def to_stat(attrs: paramiko.SFTPAttributes) -> FileStat:
    """An SFTP attribute block as a FileStat."""
    mode = attrs.st_mode or 0
    return FileStat(
        _KINDS.get(mode & 0o170000, "other"), attrs.st_size or 0, mode & 0o7777, attrs.st_mtime or 0
    )


def attributes(mode: int | None = None, mtime: int | None = None) -> paramiko.SFTPAttributes:
    """An attribute block setting the mode and/or the times (only what is given)."""
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = mode
    if mtime is not None:
        attrs.st_atime = attrs.st_mtime = int(mtime)
    return attrs


class _Reply:
    """Receives the reply to one request (paramiko calls _async_response, holding a weak ref)."""

    __slots__ = ("__weakref__", "batch", "handle")

    def __init__(self, batch: SftpBatch, handle: Callable[[int, paramiko.Message], None]) -> None:
        self.batch = batch
        self.handle = handle

    def _async_response(self, kind: int, message: paramiko.Message, number: int) -> None:
        self.batch.answered(number)
        self.handle(kind, message)


def _status(kind: int, message: paramiko.Message) -> tuple[int, str]:
    """(code, text) of a STATUS reply; anything else is a protocol failure."""
    if kind != CMD_STATUS:
        return -1, f"unexpected reply type {kind}"
    code = message.get_int()
    text = message.get_string().decode(errors="replace")
    return code, text or f"status {code}"


class SftpBatch:
    """Requests sent without waiting; replies handled as they arrive; failures kept for `wait`."""

    def __init__(self, session: SftpSession) -> None:
        self.session = session
        self.client = session.client
        self.waiting: dict[int, _Reply] = {}
        self.failures: list[str] = []
        self.buffered = 0  # bytes held for files whose handle has not come yet
        self.open_files = 0
        self._pumping = False

    # ------------------------------------------------------------------ the engine

    def send(
        self, kind: int, args: Sequence[object], handle: Callable[[int, paramiko.Message], None]
    ) -> None:
        """Send one request; handle(kind, message) gets its reply."""
        reply = _Reply(self, handle)
        try:
            number = self.client._async_request(reply, kind, *args)
        except (*CONNECTION_ERRORS, OSError) as exc:
            raise self.session.lost(exc) from exc
        self.waiting[number] = reply
        self.throttle()

    def answered(self, number: int) -> None:
        """A reply came (called before its handler)."""
        self.waiting.pop(number, None)

    def throttle(self) -> None:
        """Handle replies while too much is in flight (not from inside a reply's handler)."""
        if self._pumping:
            return
        while self.waiting and (
            len(self.waiting) > MAX_REQUESTS
            or self.buffered > MAX_BUFFERED
            or self.open_files > self.session.max_open
        ):
            self.pump()

    def pump(self) -> None:
        """Read and handle one reply."""
        self._pumping = True
        try:
            self.client._read_response()
        except (*CONNECTION_ERRORS, OSError) as exc:
            raise self.session.lost(exc) from exc
        finally:
            self._pumping = False

    def fail(self, what: str, path: str, text: str) -> None:
        """Remember a failed operation (the first one is reported by wait)."""
        self.failures.append(f"{what} {path} on {self.session.label} failed: {text}")

    def expect_ok(
        self, what: str, path: str, *, missing_ok: bool = False
    ) -> Callable[[int, paramiko.Message], None]:
        """A handler for a STATUS reply that must be OK (or NO_SUCH_FILE with missing_ok)."""

        def handle(kind: int, message: paramiko.Message) -> None:
            code, text = _status(kind, message)
            if code != SFTP_OK and not (missing_ok and code == SFTP_NO_SUCH_FILE):
                self.fail(what, path, text)

        return handle

    def wait(self) -> None:
        """Handle every outstanding reply; raise the first failure."""
        while self.waiting:
            self.pump()
        if self.failures:
            more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            raise RemoteError(self.failures[0] + more)

    # ------------------------------------------------------------------ operations

    def mkdir(self, path: str, mode: int) -> None:
        """Create a directory; one that exists already is fine."""

        def created(kind: int, message: paramiko.Message) -> None:
            code, text = _status(kind, message)
            if code == SFTP_OK:
                return

            def exists(found: FileStat | None) -> None:  # SFTP v3 says only "Failure" for EEXIST
                if found is None or found.kind != "dir":
                    self.fail("creating", path, text)

            self.lstat(path, exists)

        self.send(CMD_MKDIR, (wire(path), attributes(mode)), created)

    def create(self, path: str, mode: int, mtime: int) -> _NewFile:
        """Create a file to write into."""
        return _NewFile(self, path, mode, mtime)

    def copy(self, source: str, path: str, mode: int, mtime: int) -> None:
        """Copy a file on the server with copy-data."""
        _Copy(self, source, path, mode, mtime)

    def link(self, source: str, path: str) -> None:
        """Hard-link path to source."""
        self.send(
            CMD_EXTENDED, (HARDLINK, wire(source), wire(path)), self.expect_ok("linking", path)
        )

    def symlink(self, target: str, path: str) -> None:
        """Create the symlink path -> target (OpenSSH's argument order unless the server says)."""
        args = (path, target) if self.session.symlink_reversed else (target, path)
        self.send(
            CMD_SYMLINK, tuple(wire(a) for a in args), self.expect_ok("creating the symlink", path)
        )

    def chmod(self, path: str, mode: int) -> None:
        """Set a path's permission bits."""
        self.send(
            CMD_SETSTAT, (wire(path), attributes(mode)), self.expect_ok("setting the mode of", path)
        )

    def lstat(self, path: str, on_reply: Callable[[FileStat | None], object]) -> None:
        """on_reply(what path is, or None)."""

        def handle(kind: int, message: paramiko.Message) -> None:
            if kind == CMD_ATTRS:
                on_reply(to_stat(paramiko.SFTPAttributes._from_msg(message)))
                return
            code, text = _status(kind, message)
            if code == SFTP_NO_SUCH_FILE:
                on_reply(None)
            else:
                self.fail("inspecting", path, text)

        self.send(CMD_LSTAT, (wire(path),), handle)

    def listdir(self, path: str, on_reply: Callable[[list[tuple[str, FileStat]]], object]) -> None:
        """on_reply(the entries of a directory, without . and ..); a missing one lists as empty."""
        _Listing(self, path, on_reply)

    def remove(self, path: str) -> None:
        """Remove a file or symlink; a missing one is fine."""
        self.send(CMD_REMOVE, (wire(path),), self.expect_ok("removing", path, missing_ok=True))

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; a missing one is fine."""
        self.send(CMD_RMDIR, (wire(path),), self.expect_ok("removing", path, missing_ok=True))


class _NewFile:
    """A file being written: data waits in memory until the handle arrives, then goes at once."""

    def __init__(self, batch: SftpBatch, path: str, mode: int, mtime: int) -> None:
        self.batch = batch
        self.path = path
        self.mode = mode
        self.mtime = mtime
        self.handle: bytes | None = None
        self.held: list[tuple[int, bytes]] = []
        self.offset = 0
        self.closing = False
        self.failed = False
        batch.open_files += 1
        batch.send(CMD_OPEN, (wire(path), WRITE_FLAGS, attributes(0o600)), self._opened)

    def _opened(self, kind: int, message: paramiko.Message) -> None:
        held, self.held = self.held, []
        self.batch.buffered -= sum(len(data) for _, data in held)
        if kind != CMD_HANDLE:
            self.failed = True
            self.batch.open_files -= 1
            self.batch.fail("creating", self.path, _status(kind, message)[1])
            return
        self.handle = message.get_binary()
        for offset, data in held:
            self._send(offset, data)
        if self.closing:
            self._finish()

    def write(self, data: bytes) -> None:
        """Send data in requests of at most one SSH packet each."""
        for start in range(0, len(data), self.batch.session.write_size):
            if self.failed:
                return
            piece = data[start : start + self.batch.session.write_size]
            offset, self.offset = self.offset, self.offset + len(piece)
            if self.handle is None:
                self.held.append((offset, piece))
                self.batch.buffered += len(piece)
                self.batch.throttle()
            else:
                self._send(offset, piece)

    def _send(self, offset: int, data: bytes) -> None:
        assert self.handle is not None
        self.batch.send(
            CMD_WRITE,
            (self.handle, int64(offset), data),
            self.batch.expect_ok("writing", self.path),
        )

    def close(self) -> None:
        """Set mode and mtime, then close (after every write: same handle, so in order)."""
        self.closing = True
        if self.handle is not None:
            self._finish()

    def _finish(self) -> None:
        assert self.handle is not None
        batch = self.batch
        batch.send(CMD_FSETSTAT, (self.handle, attributes(self.mode, self.mtime)),
                   batch.expect_ok("setting the mode of", self.path))  # fmt: skip

        def closed(kind: int, message: paramiko.Message) -> None:
            batch.open_files -= 1
            batch.expect_ok("closing", self.path)(kind, message)

        batch.send(CMD_CLOSE, (self.handle,), closed)


class _Copy:
    """A server-side copy: open both files, copy-data between them, set mode and mtime, close."""

    def __init__(self, batch: SftpBatch, source: str, path: str, mode: int, mtime: int) -> None:
        self.batch = batch
        self.path = path
        self.attrs = attributes(mode, mtime)
        self.handles: dict[str, bytes | None] = {}
        batch.open_files += 2
        batch.send(
            CMD_OPEN, (wire(source), SFTP_FLAG_READ, attributes()), self._opened("source", source)
        )
        batch.send(
            CMD_OPEN, (wire(path), WRITE_FLAGS, attributes(0o600)), self._opened("copy", path)
        )

    def _opened(self, role: str, path: str) -> Callable[[int, paramiko.Message], None]:
        def handle(kind: int, message: paramiko.Message) -> None:
            if kind == CMD_HANDLE:
                self.handles[role] = message.get_binary()
            else:
                self.handles[role] = None
                self.batch.open_files -= 1
                self.batch.fail("opening", path, _status(kind, message)[1])
            if len(self.handles) == 2:
                self._copy()

        return handle

    def _copy(self) -> None:
        batch, source, copy = self.batch, self.handles["source"], self.handles["copy"]
        if source is not None and copy is not None:
            batch.send(CMD_EXTENDED, (COPY_DATA, source, int64(0), int64(0), copy, int64(0)),
                       batch.expect_ok("copying", self.path))  # fmt: skip
            batch.send(
                CMD_FSETSTAT, (copy, self.attrs), batch.expect_ok("setting the mode of", self.path)
            )
        for handle in (copy, source):
            if handle is not None:
                batch.send(CMD_CLOSE, (handle,), self._closed)

    def _closed(self, kind: int, message: paramiko.Message) -> None:
        self.batch.open_files -= 1
        self.batch.expect_ok("closing", self.path)(kind, message)


class _Listing:
    """OPENDIR, READDIR until EOF, CLOSE; then hand the entries over."""

    def __init__(
        self, batch: SftpBatch, path: str, on_reply: Callable[[list[tuple[str, FileStat]]], object]
    ) -> None:
        self.batch = batch
        self.path = path
        self.on_reply = on_reply
        self.entries: list[tuple[str, FileStat]] = []
        self.handle = b""
        batch.open_files += 1
        batch.send(CMD_OPENDIR, (wire(path),), self._opened)

    def _opened(self, kind: int, message: paramiko.Message) -> None:
        if kind == CMD_HANDLE:
            self.handle = message.get_binary()
            self.batch.send(CMD_READDIR, (self.handle,), self._read)
            return
        self.batch.open_files -= 1
        code, text = _status(kind, message)
        if code == SFTP_NO_SUCH_FILE:
            self.on_reply([])
        else:
            self.batch.fail("listing", self.path, text)

    def _read(self, kind: int, message: paramiko.Message) -> None:
        if kind == CMD_NAME:
            for _ in range(message.get_int()):
                name = message.get_string().decode("utf-8", "surrogateescape")
                message.get_string()  # the long name, ls -l style
                attrs = paramiko.SFTPAttributes._from_msg(message)
                if name not in (".", ".."):
                    self.entries.append((name, to_stat(attrs)))
            self.batch.send(CMD_READDIR, (self.handle,), self._read)
            return
        code, text = _status(kind, message)
        self.batch.send(CMD_CLOSE, (self.handle,), self._closed)
        if code == SFTP_EOF:
            self.on_reply(self.entries)
        else:
            self.batch.fail("listing", self.path, text)

    def _closed(self, kind: int, message: paramiko.Message) -> None:
        self.batch.open_files -= 1
