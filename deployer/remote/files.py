"""What a deploy needs from a target it reaches by SFTP alone: the FileSession contract.

Accounts with ``ForceCommand internal-sftp`` run no commands, so none of the scripts in this
package can run there; the release is built with file operations instead. ``ssh.sftp`` implements
this contract over an SFTP channel (paramiko stays there); the release logic in
``deploy.sftp`` sees only this, as the shell path sees only ``executor.Executor``.

Single operations wait for their reply. A ``FileBatch`` sends operations without waiting
(pipelined, many files in flight) and collects the replies as they come; `wait` raises the
first failure. Paths are the target's, absolute or relative to the SFTP login directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

FileKind = Literal["file", "dir", "symlink", "other"]

# The OpenSSH extensions the release logic uses (advertised in the SFTP server's hello).
POSIX_RENAME = "posix-rename@openssh.com"  # rename(2): replaces the target atomically
HARDLINK = "hardlink@openssh.com"  # link(2)
COPY_DATA = "copy-data"  # the server copies between two open files: no bytes on the wire
STATVFS = "statvfs@openssh.com"  # free space


@dataclass(frozen=True)
class FileStat:
    """What lstat says about a path (SFTP v3 has no inode and no ctime)."""

    kind: FileKind
    size: int
    mode: int  # permission bits only
    mtime: int  # whole seconds


class FileWriter(Protocol):
    """A new file being written in a batch."""

    def write(self, data: bytes) -> None:
        """Send the next bytes (without waiting for the reply)."""
        ...

    def close(self) -> None:
        """Set the file's mode and mtime, and close it (without waiting)."""
        ...


class FileBatch(Protocol):
    """Pipelined operations: each is sent at once, replies are checked as they arrive."""

    def mkdir(self, path: str, mode: int) -> None:
        """Create a directory (one that exists already is fine)."""
        ...

    def create(self, path: str, mode: int, mtime: int) -> FileWriter:
        """Create (or truncate) a file to write into."""
        ...

    def copy(self, source: str, path: str, mode: int, mtime: int) -> None:
        """Copy a file on the server (copy-data): nothing crosses the wire."""
        ...

    def link(self, source: str, path: str) -> None:
        """Hard-link path to source (hardlink@openssh.com)."""
        ...

    def symlink(self, target: str, path: str) -> None:
        """Create the symlink path -> target."""
        ...

    def chmod(self, path: str, mode: int) -> None:
        """Set a path's permission bits."""
        ...

    def lstat(self, path: str, on_reply: Callable[[FileStat | None], None]) -> None:
        """Ask what path is; on_reply gets None when nothing is there."""
        ...

    def listdir(self, path: str, on_reply: Callable[[list[tuple[str, FileStat]]], None]) -> None:
        """List a directory (without . and ..); a missing one lists as empty."""
        ...

    def remove(self, path: str) -> None:
        """Remove a file or symlink (a missing one is fine)."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove an empty directory (a missing one is fine)."""
        ...

    def wait(self) -> None:
        """Wait for every reply; raise RemoteError naming the first operation that failed."""
        ...


class FileSession(Protocol):
    """A target reached by SFTP: single operations, and batches of pipelined ones."""

    label: str

    def offers(self, extension: str) -> bool:
        """Whether the server advertised this extension in its hello."""
        ...

    def lstat(self, path: str) -> FileStat | None:
        """What path is, or None when nothing is there."""
        ...

    def readlink(self, path: str) -> str | None:
        """A symlink's target, or None when path is no symlink."""
        ...

    def realpath(self, path: str) -> str:
        """The absolute, resolved form of an existing path."""
        ...

    def mkdir(self, path: str, mode: int = 0o755) -> bool:
        """Create a directory; False when something already exists at path (atomic, like mkdir(2))."""
        ...

    def read(self, path: str, limit: int = 1 << 20, *, tail: bool = False) -> bytes | None:
        """Up to limit bytes of a file (its last ones with tail), or None when there is none."""
        ...

    def write(
        self, path: str, data: bytes, *, exclusive: bool = False, append: bool = False
    ) -> None:
        """Write a whole file (exclusive: fail if it exists; append: add to its end)."""
        ...

    def symlink(self, target: str, path: str) -> None:
        """Create the symlink path -> target."""
        ...

    def rename(self, source: str, path: str) -> None:
        """Rename with POSIX semantics (posix-rename@openssh.com): replaces path atomically."""
        ...

    def remove(self, path: str) -> None:
        """Remove a file or symlink (a missing one is fine)."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove an empty directory (a missing one is fine)."""
        ...

    def free_bytes(self, path: str) -> int | None:
        """Bytes available to the login under path (statvfs), or None when the server cannot say."""
        ...

    def batch(self) -> FileBatch:
        """A new batch of pipelined operations."""
        ...


def parents(paths: Sequence[str]) -> list[str]:
    """Every directory the relative paths need, each once, parents before children."""
    needed: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            needed.add("/".join(parts[:depth]))
    return sorted(needed, key=lambda d: (d.count("/"), d))
