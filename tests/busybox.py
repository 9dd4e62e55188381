"""BusyBox userlands for the tests: one symlink per applet, and scripts run with nothing else.

Debian's busybox package (1.35, the applet set Alpine ships) provides the binary; ``./dev setup``
installs it. A directory holding one symlink per applet (``busybox --list``) is what such a
system's /bin is; a PATH holding only that directory leaves no GNU tool to fall back on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import pytest

from deployer.remote.executor import OutputSink, RunResult
from deployer.remote.local import LocalExecutor
from deployer.remote.shell import q


def find_busybox() -> str | None:
    """The busybox binary, or None when it is not installed."""
    return shutil.which("busybox") or next(
        (p for p in ("/usr/bin/busybox", "/bin/busybox") if os.access(p, os.X_OK)), None
    )


# read at import, before the tests' hermetic environment hides CI from them
IN_CI = os.environ.get("CI") == "true"


def require(problem: str | None) -> None:
    """Go on when problem is None; else fail under CI=true (./dev setup installs what is needed)
    and skip elsewhere."""
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{problem} — these tests need it", pytrace=False)
        pytest.skip(problem)


def require_busybox() -> str:
    """The busybox binary (see `require`)."""
    found = find_busybox()
    require(
        None
        if found
        else "busybox is not installed (apt-get install -y busybox; ./dev setup does it)"
    )
    assert found is not None
    return found


def applet_dir(root: Path, busybox: str, without: Iterable[str] = ()) -> Path:
    """root, holding one symlink per BusyBox applet except `without` (readable by every login)."""
    names = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    leave_out = set(without)
    root.mkdir(parents=True, exist_ok=True)
    for name in names.stdout.split():
        if name not in leave_out and "/" not in name:
            (root / name).symlink_to(busybox)
    root.chmod(0o755)
    return root


class BusyBoxShell:
    """Runs scripts as a BusyBox target does: with BusyBox sh, and only the applets on PATH."""

    def __init__(self, applets: Path, label: str = "busybox") -> None:
        self.applets = applets
        self.label = label
        self._local = LocalExecutor(label)

    def run(
        self,
        script: str,
        *,
        upload: Callable[[BinaryIO], object] | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run script with the applet directory's sh and PATH (stdin, output and status as sh's)."""
        sh = q(str(self.applets / "sh"))
        wrapped = f"PATH={q(str(self.applets))}; export PATH; exec {sh} -c {q(script)}"
        return self._local.run(wrapped, upload=upload, on_output=on_output, timeout=timeout)
