"""Helpers for integration tests: sample artifacts and reading the target's layout."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def make_app(root: Path, version: str) -> Path:
    """A small artifact directory with a script, a nested dir and a relative symlink."""
    app = root / f"app-{version}"
    (app / "bin").mkdir(parents=True)
    (app / "public" / "css").mkdir(parents=True)
    (app / "public" / "index.html").write_text(f"<h1>{version}</h1>\n")
    (app / "public" / "css" / "site.css").write_text("body{}\n")
    (app / "VERSION").write_text(version + "\n")
    script = app / "bin" / "migrate"
    script.write_text("#!/bin/sh\necho migrated\n")
    script.chmod(0o755)
    os.symlink("public/index.html", app / "index.html")
    return app


def live(path: Path) -> str:
    """The release id current points to, or '' when there is none."""
    link = path / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else ""


def finished(returncode: int, output: str) -> bool:
    """A push that completed before a SIGTERM took effect: it exited 0, or the signal killed it
    on its way out, after it had said the deploy was done."""
    return returncode == 0 or (returncode == -signal.SIGTERM and " deployed " in output)


def releases(path: Path) -> list[str]:
    """Release directories present on the target."""
    folder = path / "releases"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def one_error_line(stderr: str) -> str:
    """The error line, checked to be a single line without a traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("deployer: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def gone(pid: int, seconds: float = 10) -> bool:
    """Whether process pid ends within seconds (polled, bounded)."""
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    return not os.path.exists(f"/proc/{pid}")


def tools_without(name: str, folder: Path) -> Path:
    """A folder of links to every command in the usual places except `name` (a PATH lacking it)."""
    folder.mkdir()
    for place in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for tool in sorted(os.listdir(place)) if os.path.isdir(place) else ():
            if tool != name and not (folder / tool).exists():
                (folder / tool).symlink_to(os.path.join(place, tool))
    return folder
