"""Running the push benchmark's commands: timed runs with their peak RSS, process groups, readiness.

Every command the benchmark starts gets its own process group (``start_new_session=True``), so it
is stopped by that group, never by a name. ``timed`` is what every measured cell goes through.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """One finished command: wall time, exit status, the child's peak RSS and its output's tail."""

    seconds: float
    status: int
    timed_out: bool
    maxrss_kb: int
    stdout: str
    stderr: str

    @property
    def tail(self) -> str:
        """The line that says what went wrong (deployer's 'error:' line when there is one)."""
        errors = [ln for ln in self.stderr.splitlines() if "error" in ln.lower()]
        lines = errors or [ln for ln in (self.stdout + self.stderr).splitlines() if ln.strip()]
        return lines[-1].strip()[:300] if lines else f"exit status {self.status}"


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send sig to the process group led by pid (one we created); gone or foreign groups are skipped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-20000:]


def timed(argv: list[str], *, env: dict[str, str], timeout: float, logdir: Path, name: str) -> Run:
    """Run argv in its own process group; wall time, status and the child's own peak RSS (wait4)."""
    out_path, err_path = logdir / f"{name}.out", logdir / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            kill_group(proc.pid)

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: take the command's whole group down with us
            kill_group(proc.pid)
            proc.wait(timeout=30)
            raise
        finally:
            timer.cancel()
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        kill_group(proc.pid)  # stragglers of the group (ssh -W helpers), by the group we created
    return Run(
        seconds, proc.returncode, fired.is_set(), usage.ru_maxrss, _tail(out_path), _tail(err_path)
    )


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM proc's process group, SIGKILL it after 5 s; nothing when it already exited."""
    if proc is None or proc.poll() is not None:
        return
    kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait(timeout=5)


def json_object(text: str) -> dict[str, Any]:
    """The JSON object in text; ValueError when text is not JSON or not an object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def wait_ready_file(
    path: Path, proc: subprocess.Popen[bytes], timeout: float = 15
) -> dict[str, Any]:
    """Wait until proc writes its ready file (JSON) and return it; RuntimeError if proc exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json_object(path.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not become ready (exit {proc.poll()})")


def run_checked(argv: list[str]) -> None:
    """Run a short set-up command (ip, tc); RuntimeError with its stderr when it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
