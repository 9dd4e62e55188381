"""Run the release scripts on this machine: the Executor for a target deploying to itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import BinaryIO, cast

from deployer.environment import child_environment
from deployer.errors import CommandTimeout, DeployerError, TransferError
from deployer.remote.executor import KILL_AFTER, Output, OutputSink, RunResult


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the script's whole process group (it leads its own session), then KILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_AFTER)
    # the group outlives its leader: children that ignored TERM are still in it
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class LocalExecutor:
    """Executes scripts with /bin/sh locally, with the same contract as an SSH connection."""

    def __init__(self, label: str = "local") -> None:
        self.label = label

    def run(
        self,
        script: str,
        *,
        upload: Callable[[BinaryIO], object] | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run script with sh; feed stdin from upload(); stream and keep the output tails."""
        proc = subprocess.Popen(
            ["/bin/sh", "-c", script],
            stdin=subprocess.PIPE if upload else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # hooks (and what they run) never see the receiver's webhook secret or token
            env=child_environment(os.environ),
        )
        output = Output(on_output)

        def pump(name: str, stream: BinaryIO) -> None:
            for chunk in iter(lambda: stream.read1(32768), b""):  # type: ignore[attr-defined]
                output.add(name, chunk)

        readers = [
            threading.Thread(target=pump, args=("stdout", proc.stdout), daemon=True),
            threading.Thread(target=pump, args=("stderr", proc.stderr), daemon=True),
        ]
        for reader in readers:
            reader.start()
        upload_error: BaseException | None = None
        if upload is not None:
            stdin = cast(BinaryIO, proc.stdin)
            try:
                upload(stdin)
            except BrokenPipeError:
                pass  # the script stopped reading; its status says why
            except BaseException as exc:  # reported after the script is reaped
                upload_error = exc
            finally:
                with contextlib.suppress(BrokenPipeError):
                    stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            status = proc.wait(
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            stop_group(proc)
            raise CommandTimeout(
                f"command on {self.label} did not finish within {timeout:.0f} s"
            ) from None
        except BaseException:  # interrupted: what the script started must not outlive it
            stop_group(proc)
            raise
        for reader in readers:
            reader.join(timeout=5)
        if isinstance(upload_error, DeployerError):
            raise upload_error
        if upload_error is not None:
            raise TransferError(f"upload on {self.label} failed: {upload_error}") from upload_error
        return output.result(status)
