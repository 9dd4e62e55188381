"""Is there an OpenSSH client deployer can use: ``ssh`` on the PATH, 8.5 or newer (KnownHostsCommand)?"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass

MINIMUM = (8, 5)  # KnownHostsCommand, which lets deployer judge every host key itself
_VERSION = re.compile(r"OpenSSH_(\d+)\.(\d+)")


@dataclass(frozen=True)
class OpenSSH:
    """An OpenSSH client found on this machine."""

    path: str
    version: tuple[int, int]


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `ssh -V`'s line, e.g. "OpenSSH_9.2p1 Debian-2, OpenSSL 3.0.11"."""
    match = _VERSION.search(text)
    return (int(match[1]), int(match[2])) if match else None


@functools.lru_cache(maxsize=8)
def find_openssh(search_path: str | None) -> OpenSSH | str:
    """The usable OpenSSH client on search_path (a PATH value), or why there is none."""
    path = shutil.which("ssh", path=search_path)
    if path is None:
        return "no ssh on the PATH"
    try:
        said = subprocess.run(
            [path, "-V"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} -V failed ({exc})"
    version = parse_version(said.stderr + said.stdout)
    if version is None:
        return f"{path} is not OpenSSH ({(said.stderr or said.stdout).strip()[:60]!r})"
    if version < MINIMUM:
        return f"{path} is OpenSSH {version[0]}.{version[1]}, older than {MINIMUM[0]}.{MINIMUM[1]}"
    return OpenSSH(path, version)
