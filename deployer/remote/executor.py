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

OUTPUT_TAIL = 65536  # streamed output: the bytes of each stream kept for messages


class Output:
    """A command's stdout and stderr as they arrive, kept as the Executor contract says: whole,
    or, when on_output streams them, only their last OUTPUT_TAIL bytes."""

    def __init__(self, on_output: OutputSink | None) -> None:
        self._sink = on_output
        self._kept = {"stdout": bytearray(), "stderr": bytearray()}

    def add(self, name: str, chunk: bytes) -> None:
        """Take a chunk of stream name ("stdout"/"stderr"): stream it if asked, keep it."""
        if self._sink is not None:
            self._sink(name, chunk)
        kept = self._kept[name]
        kept += chunk
        if self._sink is not None:
            del kept[:-OUTPUT_TAIL]

    def result(self, status: int) -> RunResult:
        """The command's RunResult with what was kept."""
        return RunResult(status, bytes(self._kept["stdout"]), bytes(self._kept["stderr"]))


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

    @property
    def detail(self) -> str:
        """What a failure message says of the command: its last stderr line, or its exit status."""
        return self.stderr_line or f"exit status {self.status}"


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

        Captured output is kept whole; when on_output streams it, only the last 64 KiB are kept
        (``Output`` does this for every implementation).
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
