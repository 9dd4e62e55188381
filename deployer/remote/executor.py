"""What runs the release scripts on a target: the Executor contract and its result type.

Two implementations: ``ssh.Connection`` (over SSH, from CI) and ``local.LocalExecutor``
(on the target itself, for the webhook receiver). The deploy service only sees this contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from deployer.errors import DeployerError, TransferError, reason

OutputSink = Callable[[str, bytes], None]  # (stream name "stdout"/"stderr", raw bytes)

# A command past its time limit gets TERM, and KILL this many seconds later (as `timeout -k 5`
# does to a hook on the target), with every process it started: its whole process group.
KILL_AFTER = 5.0


@dataclass(frozen=True)
class RunResult:
    """What a remote command did: its exit status and (the tail of) what it printed."""

    status: int
    stdout: bytes
    stderr: bytes

    @property
    def stderr_line(self) -> str:
        """The last non-empty stderr line, for one-line error messages."""
        lines = [ln for ln in self.stderr.decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""


class Executor(Protocol):
    """Runs shell scripts on a target (over SSH, or locally on the target itself)."""

    label: str

    def run(
        self,
        script: str,
        *,
        upload: Callable[[BinaryIO], object] | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run script with sh; stream stdin from upload(); return status and output.

        Captured output is kept whole; when on_output streams it, only the last 64 KiB are kept.
        Past `timeout` the command's process group is stopped and CommandTimeout raised; a
        connection lost meanwhile is a ConnectError.
        """
        ...


def upload_failure(error: BaseException | None, status: int, label: str) -> DeployerError | None:
    """What to raise after a command whose stdin an upload fed: the upload's own DeployerError
    (e.g. the artifact changed while it was sent: its own exit code), a TransferError for any
    other failure of a command that then claimed success, or None."""
    if isinstance(error, DeployerError):
        return error
    if error is not None and status == 0:
        failure = TransferError(f"upload to {label} failed: {reason(error)} — run the push again")
        failure.__cause__ = error
        return failure
    return None
