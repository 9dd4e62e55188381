"""The deploy lock over SFTP: the same DIR/.deployer/lock directory (mkdir is atomic) and the same
lock/info line as the shell path, so that either can see, refuse and release the other's lock."""

from __future__ import annotations

import contextlib
import secrets

from deployer.deploy.lock import holder_info
from deployer.deploy.outcome import Provenance
from deployer.deploy.sftp.tree import remove_trees
from deployer.errors import DeployerError, LockError, RemoteError
from deployer.remote.files import FileSession, FileStat
from deployer.remote.state import lock_error

LAYOUT = ("releases", "shared", ".deployer", ".deployer/manifests")


def make_layout(files: FileSession, path: str) -> None:
    """mkdir -p of the deploy directory and its layout (one batch)."""
    batch = files.batch()
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        ancestor = "/".join(parts[:depth])
        if ancestor:
            batch.mkdir(ancestor, 0o755)
    for sub in LAYOUT:
        batch.mkdir(f"{path}/{sub}", 0o755)
    batch.wait()


class FileLock:
    """DIR/.deployer/lock over SFTP, with a token in lock/info that says it is ours."""

    def __init__(self, files: FileSession, path: str, provenance: Provenance, action: str) -> None:
        self.files = files
        self.path = path
        self.token = secrets.token_hex(8)
        self.info = holder_info(action, provenance, self.token)

    @property
    def directory(self) -> str:
        """DIR/.deployer/lock."""
        return f"{self.path}/.deployer/lock"

    def acquire(self) -> FileLock:
        """Create the layout, take the lock, and clear partial uploads of dead deploys."""
        try:
            make_layout(self.files, self.path)
        except RemoteError as exc:
            raise RemoteError(
                f"{exc} — check that the SFTP login may write there, or choose another --path"
            ) from exc
        if not self.files.mkdir(self.directory, 0o700):
            raise lock_error(self.holder() or "taken a moment ago", self.path, self.files.label)
        try:
            self.files.write(f"{self.directory}/info", (self.info + "\n").encode(), exclusive=True)
        except BaseException:
            with contextlib.suppress(DeployerError):
                remove_lock(self.files, self.path)
            raise
        partial: list[tuple[str, FileStat]] = []
        batch = self.files.batch()
        batch.listdir(f"{self.path}/releases", partial.extend)
        batch.wait()
        remove_trees(
            self.files,
            [
                f"{self.path}/releases/{n}"
                for n, s in partial
                if n.startswith(".") and n.endswith(".partial")
            ],
        )
        return self

    def holder(self) -> str:
        """The first line of lock/info ('' when there is no lock or no info)."""
        data = self.files.read(f"{self.directory}/info", 4096) or b""
        return data.decode(errors="replace").partition("\n")[0]

    def check(self) -> None:
        """Raise LockError unless the lock is still ours."""
        held = self.holder()
        if f"token {self.token}" not in held:
            if held:
                raise lock_error(held, self.path, self.files.label)
            raise LockError(
                f"the deploy lock on {self.path} on {self.files.label} was removed while this deploy"
                " ran (by `deployer unlock`?) — nothing more was changed; run the push again"
            )

    def rewrite(self, info: str) -> None:
        """Replace lock/info while the lock is ours (a new file renamed over it: atomic)."""
        self.files.write(f"{self.directory}/info.new", (info + "\n").encode())
        self.files.rename(f"{self.directory}/info.new", f"{self.directory}/info")

    def release(self) -> None:
        """Drop the lock if it is still ours (best effort: a dead connection leaves it for unlock)."""
        with contextlib.suppress(DeployerError):
            if f"token {self.token}" in self.holder():
                remove_lock(self.files, self.path)


def remove_lock(files: FileSession, path: str) -> None:
    """Remove DIR/.deployer/lock whoever holds it (deployer unlock): one round trip, as it only
    ever holds info (and info.new while it is rewritten); anything else there is removed too."""
    lock = f"{path}/.deployer/lock"
    batch = files.batch()
    for name in ("info.new", "info"):
        batch.remove(f"{lock}/{name}")
    batch.rmdir(lock)
    try:
        batch.wait()
    except RemoteError:
        remove_trees(files, [lock])
