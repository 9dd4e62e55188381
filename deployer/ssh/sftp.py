"""SFTP on a connection: the ``remote.files.FileSession`` contract over paramiko's SFTP client.

For accounts that run no commands (``ForceCommand internal-sftp``). One SFTP channel on the
target's existing transport (no new connection). The server's hello is read for the extensions
it offers (paramiko drops them). Single operations wait for their reply; a batch (``pipeline``) sends
requests without waiting and handles replies as they come, so that many files are in flight at
once (plain ``sftp`` waits two round trips per file). paramiko's errors become deployer's here.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any

import paramiko
from paramiko.sftp import (
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_INIT,
    CMD_SYMLINK,
    CMD_VERSION,
    SFTPError,
)

from deployer.errors import ConnectError, RemoteError, reason
from deployer.interrupts import whole
from deployer.remote.files import STATVFS, FileStat
from deployer.ssh.connection import Connection
from deployer.ssh.pipeline import (
    CONNECTION_ERRORS,
    MAX_OPEN,
    MAX_OPEN_LIMITED,
    SftpBatch,
    to_stat,
)

# A reply that takes longer than this means the connection died silently (paramiko has no
# ServerAliveCountMax); a server-side copy of a very large file is the slowest honest request.
REPLY_TIMEOUT = 300.0

LIMITS = "limits@openssh.com"
SMALL_READ = 32768  # a read this small takes one request

# One WRITE fits one SSH packet (OpenSSH's channels take 32 KiB packets): no request is split.
WRITE_SIZE = 32768 - 256


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

    # An interrupt inside paramiko can leave half a packet on the connection (the server drops it)
    # or a lock of the channel's buffer held (its transport thread then waits forever): every
    # packet is written and read whole, and an interrupt waits for that (a reply takes at most
    # the channel's timeout). The SFTP stream then stays usable for the cleanup that follows.
    def _send_packet(self, kind: int, packet: paramiko.Message) -> None:
        with whole():
            super()._send_packet(kind, packet)

    def _read_packet(self) -> tuple[int, bytes]:
        with whole():
            return super()._read_packet()  # type: ignore[no-any-return]


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

    def apply_limits(self) -> None:
        """Size writes and open files by what the server says it takes (limits@openssh.com)."""
        kind, reply = self._call(
            "asking the limits of", self.label, lambda: self.client._request(CMD_EXTENDED, LIMITS)
        )
        if kind != CMD_EXTENDED_REPLY:
            return
        _packet, _read, write, handles = (reply.get_int64() for _ in range(4))
        if write:
            self.write_size = min(self.write_size, int(write))
        self.max_open = (
            MAX_OPEN_LIMITED if not handles else max(8, min(MAX_OPEN_LIMITED, int(handles) // 2))
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
        except CONNECTION_ERRORS as exc:
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
        return None if attrs is None else to_stat(attrs)

    def readlink(self, path: str) -> str | None:
        """A symlink's target, or None when path is none (one round trip when it is one)."""
        try:
            return str(self.client.readlink(path))
        except CONNECTION_ERRORS as exc:
            raise self.lost(exc) from exc
        except OSError as exc:
            found = self.lstat(path)  # SFTP says only "Failure" for a path that is no link
            if found is None or found.kind != "symlink":
                return None
            raise RemoteError(
                f"reading the link {path} on {self.label} failed: {reason(exc)}"
            ) from exc

    def realpath(self, path: str) -> str:
        """The absolute form of an existing path."""
        return str(self._call("resolving", path, lambda: self.client.normalize(path)))

    def mkdir(self, path: str, mode: int = 0o755) -> bool:
        """Create a directory; False when something exists there already."""
        try:
            self.client.mkdir(path, mode)
        except CONNECTION_ERRORS as exc:
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
                if limit <= SMALL_READ and not tail:  # one READ: no stat, no prefetch
                    return bytes(handle.read(limit))
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


def open_sftp(connection: Connection, timeout: float = REPLY_TIMEOUT) -> SftpSession:
    """Open the SFTP subsystem on the connection's target (one more channel, no new login).

    `timeout`: how long a reply may take before the connection counts as dead.
    """
    label = connection.label
    try:
        with whole():
            channel = connection.transport.open_session(timeout=30)
            channel.settimeout(timeout)
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
    session = SftpSession(label, client)
    if session.offers(LIMITS):
        session.apply_limits()
    return session
