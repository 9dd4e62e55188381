"""The keeper's child processes: started so that none outlives it, stopped in order."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable

from deployer.ssh.openssh.processes import terminate

GUARD_BANNER_WAIT = 2.0  # after logging in: a live holder's target answers well within this


class Helpers:
    """Short helper ssh processes (reclaim, the guard's ssh -W), tracked so none outlives the keeper."""

    def __init__(
        self, env: Callable[[], dict[str, str]], preexec: Callable[[], None] | None, timeout: float
    ) -> None:
        self._env = env
        self._preexec = preexec
        self._timeout = timeout  # the connect timeout: helpers get it and a margin
        self._running: set[subprocess.Popen[bytes]] = set()

    def _spawn(self, argv: list[str], stdin: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env(),
            start_new_session=True,
            preexec_fn=self._preexec,
        )
        self._running.add(process)
        return process

    def first_line(self, argv: list[str]) -> bytes | None:
        """Run ssh -W; the first line that comes back, or None (nothing soon after logging in)."""
        process = self._spawn(argv, subprocess.PIPE)
        try:
            assert process.stdout is not None and process.stderr is not None
            deadline = time.monotonic() + self._timeout + GUARD_BANNER_WAIT
            streams = {process.stdout.fileno(): b"", process.stderr.fileno(): b""}
            out = process.stdout.fileno()
            while b"\n" not in streams[out]:
                remaining = deadline - time.monotonic()
                ready, _, _ = select.select(list(streams), [], [], max(0.0, remaining))
                if not ready:
                    return None
                for fd in ready:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        return None
                    streams[fd] += chunk
                    if fd != out and b"Authenticated to " in streams[fd]:
                        deadline = min(deadline, time.monotonic() + GUARD_BANNER_WAIT)
                        streams[fd] = b""
            return streams[out].split(b"\n")[0].rstrip(b"\r")
        finally:
            terminate(process)
            self._running.discard(process)

    def output(self, argv: list[str]) -> tuple[int | None, str]:
        """Run a helper ssh to its end; (exit status or None on timeout, stdout and stderr)."""
        process = self._spawn(argv, subprocess.DEVNULL)
        try:
            out, err = process.communicate(timeout=self._timeout + 10)
            code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            out, err, code = b"", b"timed out", None
        finally:
            terminate(process)
            self._running.discard(process)
        return code, (out + b"\n" + err).decode("utf-8", "replace")

    def stop_all(self) -> None:
        """Stop every helper still running."""
        for process in list(self._running):
            terminate(process)
