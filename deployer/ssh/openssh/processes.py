"""OpenSSH child processes: started so that none outlives deployer, kept in a private directory.

The tunnel's keeper and the OpenSSH client of a push both run ``ssh`` for as long as they
work; these are the pieces they share.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def parent_death_signal() -> Callable[[], None] | None:
    """On Linux, make ssh get SIGTERM if deployer dies without cleaning up (no orphan sessions).

    The signal follows the thread that started the child: start long-lived children from a
    thread that lives as long as they should.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


@contextlib.contextmanager
def private_directory(prefix: str) -> Iterator[Path]:
    """A 0700 directory short enough for Unix socket paths (108 bytes), removed afterwards."""
    base = None if len(tempfile.gettempdir()) < 60 else "/tmp"
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def terminate(process: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM (ssh closes its connection and exits), SIGKILL after grace; close its pipes."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=grace)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
