"""The deploy lock held across a deploy's phases (or a rollback), and released by token."""

from __future__ import annotations

import contextlib
import secrets
from datetime import datetime, timezone

from deployer.deploy.outcome import Provenance
from deployer.errors import DeployerError, RemoteError
from deployer.remote.executor import Executor
from deployer.remote.lock import prepare_script, unlock_script
from deployer.remote.state import lock_error
from deployer.remote.status import RemoteStatus


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def holder_info(action: str, provenance: Provenance, token: str) -> str:
    """The first line of lock/info: who holds the lock, since when, for what, and its token."""
    return (
        f"{action} by {provenance.by} since {utc_now()}"
        + (f" commit {provenance.commit[:12]}" if provenance.commit else "")
        + (f" {provenance.pipeline}" if provenance.pipeline else "")
        + f" token {token}"
    )


class DeployLock:
    """The deploy lock on a target path (a with-block, or acquire/release across phases)."""

    def __init__(
        self,
        executor: Executor,
        path: str,
        provenance: Provenance,
        action: str,
        adopt: str | None = None,
    ) -> None:
        self.executor = executor
        self.path = path
        self.adopt = adopt  # the token of a lock left behind that this one may take over
        self.token = secrets.token_hex(8)
        self.info = holder_info(action, provenance, self.token)

    def acquire(self) -> DeployLock:
        """Create the layout and take the lock (or the one `adopt` names), or raise LockError."""
        result = self.executor.run(prepare_script(self.path, self.info, self.adopt))
        if result.status == RemoteStatus.LOCK_HELD:
            held = result.stdout.decode(errors="replace").partition("lock=")[2].strip()
            raise lock_error(held, self.path, self.executor.label)
        if result.status != 0:
            raise RemoteError(
                f"preparing {self.path} on {self.executor.label} failed: {result.stderr_line}"
                " — check the path and its permissions"
            )
        return self

    def release(self) -> None:
        """Drop the lock if it is still ours (best effort: a dead connection leaves it for unlock)."""
        with contextlib.suppress(DeployerError):
            self.executor.run(unlock_script(self.path, self.token), timeout=30)

    def __enter__(self) -> DeployLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
