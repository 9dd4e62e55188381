"""SFTP on a connection: the ``remote.files.FileSession`` contract over paramiko's SFTP client.

For accounts that run no commands (``ForceCommand internal-sftp``). One SFTP channel on the
target's existing transport (no new connection). The server's hello is read for the extensions
it offers (paramiko drops them). Single operations wait for their reply; a ``SftpBatch`` sends
requests without waiting and handles replies as they come, so that many files are in flight at
once (plain ``sftp`` waits two round trips per file). paramiko's errors become deployer's here.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_INIT,
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
    CMD_VERSION,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTPError,
    int64,
)

from deployer.errors import ConnectError, RemoteError, reason
from deployer.remote.files import COPY_DATA, HARDLINK, STATVFS, FileKind, FileStat
from deployer.ssh.connection import Connection

# A reply that takes longer than this means the connection died silently (paramiko has no
# ServerAliveCountMax); a server-side copy of a very large file is the slowest honest request.
REPLY_TIMEOUT = 300.0

# One WRITE fits one SSH packet (OpenSSH's channels take 32 KiB packets): no request is split.
WRITE_SIZE = 32768 - 256

MAX_REQUESTS = 256  # requests sent and not yet answered
MAX_OPEN = 64  # files open at once (OpenSSH's sftp-server allows about as many as its fd limit)
MAX_BUFFERED = 8 << 20  # bytes held for files whose handle has not arrived yet

_WRITE_FLAGS = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC

# An S_IFMT value (from lstat's mode) -> what it is.
_KINDS: dict[int, FileKind] = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}

_CONNECTION_ERRORS = (paramiko.SSHException, EOFError, socket.timeout, ConnectionError)


def _wire(path: str) -> bytes:
    """A path as sent: UTF-8, with undecodable names (from a listing) given back byte for byte."""
    return path.encode("utf-8", "surrogateescape")


def _stat(attrs: paramiko.SFTPAttributes) -> FileStat:
    mode = attrs.st_mode or 0
    return FileStat(
        _KINDS.get(mode & 0o170000, "other"), attrs.st_size or 0, mode & 0o7777, attrs.st_mtime or 0
    )


def _attrs(mode: int | None = None, mtime: int | None = None) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = mode
    if mtime is not None:
        attrs.st_atime = attrs.st_mtime = int(mtime)
    return attrs


class _Client(paramiko.SFTPClient):  # type: ignore[misc]  # paramiko has no types
    """paramiko's client, keeping what the server's hello says it offers."""

    extensions: dict[str, bytes]

    def _send_version(self) -> int:
        message = paramiko.Message()
        message.add_int(3)
        self._send_packet(CMD_INIT, message)
        kind, data = self._read_packet()
        if kind != CMD_VERSION:
            raise SFTPError("Incompatible sftp protocol")
        version = int(struct.unpack(">I", data[:4])[0])
        reply = paramiko.Message(data[4:])
        self.extensions = {}
        while reply.get_remainder():
            name = reply.get_string().decode(errors="replace")
            self.extensions[name] = reply.get_string()
        return version


class SftpSession:
    """The SFTP side of a connection: a ``remote.files.FileSession``."""

    def __init__(self, label: str, client: _Client) -> None:
        self.label = label
        self.client = client
        self.write_size = WRITE_SIZE
        self.max_open = MAX_OPEN
        self.symlink_reversed = (
            client.extensions.get("symlink-order@rjk.greenend.org.uk") == b"linkpath-targetpath"
        )

    def offers(self, extension: str) -> bool:
        """Whether the server advertised the extension."""
        return extension in self.client.extensions

    def close(self) -> None:
        """Close the SFTP channel (the connection stays)."""
        self.client.close()

    # ------------------------------------------------------------------ single operations

    def _call(self, what: str, path: str, action: Callable[[], Any], *, missing: Any = ...) -> Any:
        """Run one paramiko call; return `missing` for a path that is not there (if given)."""
        try:
            return action()
        except _CONNECTION_ERRORS as exc:
            raise self.lost(exc) from exc
        except OSError as exc:
            if exc.errno == errno.ENOENT and missing is not ...:
                return missing
            if not self.client.sock.get_transport().is_active():
                raise self.lost(exc) from exc
            raise RemoteError(f"{what} {path} on {self.label} failed: {reason(exc)}") from exc

    def lost(self, exc: BaseException) -> ConnectError:
        """The error for a connection that died under an SFTP request."""
        return ConnectError(f"lost the connection to {self.label} (SFTP): {reason(exc)}")

    def lstat(self, path: str) -> FileStat | None:
        """What path is, or None."""
        attrs = self._call("inspecting", path, lambda: self.client.lstat(path), missing=None)
        return None if attrs is None else _stat(attrs)

    def readlink(self, path: str) -> str | None:
        """A symlink's target, or None when path is none."""
        found = self.lstat(path)
        if found is None or found.kind != "symlink":
            return None
        target = self._call(
            "reading the link", path, lambda: self.client.readlink(path), missing=None
        )
        return None if target is None else str(target)

    def realpath(self, path: str) -> str:
        """The absolute form of an existing path."""
        return str(self._call("resolving", path, lambda: self.client.normalize(path)))

    def mkdir(self, path: str, mode: int = 0o755) -> bool:
        """Create a directory; False when something exists there already."""
        try:
            self.client.mkdir(path, mode)
        except _CONNECTION_ERRORS as exc:
            raise self.lost(exc) from exc
        except OSError as exc:
            if self.lstat(path) is not None:
                return False
            raise RemoteError(f"creating {path} on {self.label} failed: {reason(exc)}") from exc
        return True

    def read(self, path: str, limit: int = 1 << 20, *, tail: bool = False) -> bytes | None:
        """Up to limit bytes of a file (the last ones with tail), or None."""

        def read() -> bytes:
            with self.client.open(path, "rb") as handle:
                size = handle.stat().st_size or 0
                start = max(0, size - limit) if tail else 0
                handle.seek(start)
                if size > start:
                    handle.prefetch(min(size - start, limit))
                return bytes(handle.read(limit))

        data = self._call("reading", path, read, missing=None)
        return None if data is None else bytes(data)

    def write(
        self, path: str, data: bytes, *, exclusive: bool = False, append: bool = False
    ) -> None:
        """Write a whole file."""
        mode = "wxb" if exclusive else "ab" if append else "wb"  # paramiko: x adds CREATE|EXCL

        def write() -> None:
            with self.client.open(path, mode) as handle:
                handle.set_pipelined(True)
                handle.write(data)

        self._call("writing", path, write)

    def symlink(self, target: str, path: str) -> None:
        """Create the symlink path -> target."""
        if self.symlink_reversed:
            self._call("linking", path, lambda: self.client._request(CMD_SYMLINK, path, target))
        else:
            self._call("linking", path, lambda: self.client.symlink(target, path))

    def rename(self, source: str, path: str) -> None:
        """Rename with POSIX semantics: path is replaced atomically."""
        self._call(f"renaming {source} to", path, lambda: self.client.posix_rename(source, path))

    def remove(self, path: str) -> None:
        """Remove a file or symlink (a missing one is fine)."""
        self._call("removing", path, lambda: self.client.remove(path), missing=None)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory (a missing one is fine)."""
        self._call("removing", path, lambda: self.client.rmdir(path), missing=None)

    def free_bytes(self, path: str) -> int | None:
        """Bytes free for the login under path, from statvfs@openssh.com (None if not offered)."""
        if not self.offers(STATVFS):
            return None
        kind, reply = self._call(
            "measuring", path, lambda: self.client._request(CMD_EXTENDED, STATVFS, path)
        )
        if kind != CMD_EXTENDED_REPLY:
            return None
        _bsize, frsize, _blocks, _bfree, bavail = (reply.get_int64() for _ in range(5))
        return int(bavail * frsize)

    def batch(self) -> SftpBatch:
        """A new batch of pipelined requests."""
        return SftpBatch(self)


def open_sftp(connection: Connection) -> SftpSession:
    """Open the SFTP subsystem on the connection's target (one more channel, no new login)."""
    label = connection.label
    try:
        channel = connection.transport.open_session(timeout=30)
        channel.settimeout(REPLY_TIMEOUT)
        channel.invoke_subsystem("sftp")
        client = _Client(channel)
    except (SFTPError, EOFError) as exc:
        raise RemoteError(
            f"{label} did not speak SFTP on its sftp subsystem ({reason(exc)}) — check the server's"
            " Subsystem or ForceCommand line"
        ) from exc
    except paramiko.SSHException as exc:
        if connection.transport.is_active():
            raise RemoteError(
                f"{label} refused the SFTP subsystem ({reason(exc)}) — enable it in sshd_config"
                " (Subsystem sftp internal-sftp)"
            ) from exc
        raise ConnectError(f"lost the connection to {label}: {reason(exc)}") from exc
    except OSError as exc:
        raise ConnectError(f"lost the connection to {label}: {reason(exc)}") from exc
    return SftpSession(label, client)


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
        except (*_CONNECTION_ERRORS, OSError) as exc:
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
        except (*_CONNECTION_ERRORS, OSError) as exc:
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

        self.send(CMD_MKDIR, (_wire(path), _attrs(mode)), created)

    def create(self, path: str, mode: int, mtime: int) -> _NewFile:
        """Create a file to write into."""
        return _NewFile(self, path, mode, mtime)

    def copy(self, source: str, path: str, mode: int, mtime: int) -> None:
        """Copy a file on the server with copy-data."""
        _Copy(self, source, path, mode, mtime)

    def link(self, source: str, path: str) -> None:
        """Hard-link path to source."""
        self.send(
            CMD_EXTENDED, (HARDLINK, _wire(source), _wire(path)), self.expect_ok("linking", path)
        )

    def symlink(self, target: str, path: str) -> None:
        """Create the symlink path -> target (OpenSSH's argument order unless the server says)."""
        args = (path, target) if self.session.symlink_reversed else (target, path)
        self.send(
            CMD_SYMLINK, tuple(_wire(a) for a in args), self.expect_ok("creating the symlink", path)
        )

    def chmod(self, path: str, mode: int) -> None:
        """Set a path's permission bits."""
        self.send(
            CMD_SETSTAT, (_wire(path), _attrs(mode)), self.expect_ok("setting the mode of", path)
        )

    def lstat(self, path: str, on_reply: Callable[[FileStat | None], object]) -> None:
        """on_reply(what path is, or None)."""

        def handle(kind: int, message: paramiko.Message) -> None:
            if kind == CMD_ATTRS:
                on_reply(_stat(paramiko.SFTPAttributes._from_msg(message)))
                return
            code, text = _status(kind, message)
            if code == SFTP_NO_SUCH_FILE:
                on_reply(None)
            else:
                self.fail("inspecting", path, text)

        self.send(CMD_LSTAT, (_wire(path),), handle)

    def listdir(self, path: str, on_reply: Callable[[list[tuple[str, FileStat]]], object]) -> None:
        """on_reply(the entries of a directory, without . and ..); a missing one lists as empty."""
        _Listing(self, path, on_reply)

    def remove(self, path: str) -> None:
        """Remove a file or symlink; a missing one is fine."""
        self.send(CMD_REMOVE, (_wire(path),), self.expect_ok("removing", path, missing_ok=True))

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; a missing one is fine."""
        self.send(CMD_RMDIR, (_wire(path),), self.expect_ok("removing", path, missing_ok=True))


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
        batch.send(CMD_OPEN, (_wire(path), _WRITE_FLAGS, _attrs(0o600)), self._opened)

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
        batch.send(CMD_FSETSTAT, (self.handle, _attrs(self.mode, self.mtime)),
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
        self.attrs = _attrs(mode, mtime)
        self.handles: dict[str, bytes | None] = {}
        batch.open_files += 2
        batch.send(
            CMD_OPEN, (_wire(source), SFTP_FLAG_READ, _attrs()), self._opened("source", source)
        )
        batch.send(CMD_OPEN, (_wire(path), _WRITE_FLAGS, _attrs(0o600)), self._opened("copy", path))

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
        batch.send(CMD_OPENDIR, (_wire(path),), self._opened)

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
                    self.entries.append((name, _stat(attrs)))
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
