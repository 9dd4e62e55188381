"""A BusyBox target for the push tests: a real sshd whose login has nothing but BusyBox.

Two things make a Debian machine's login look like an Alpine or OpenWrt one:

- PATH: sshd's ``SetEnv PATH=<dir>`` in a ``Match User`` block, where the directory holds one
  symlink per applet of Debian's busybox package (``busybox --list``): every tool the scripts
  call by name is BusyBox's.
- /bin/sh: deployer runs its scripts with ``/bin/sh -c`` (whatever the login shell is) and sshd
  starts that through the login shell, which for the test login is /bin/sh too. Debian's /bin/sh
  is dash, so the sshd runs in a private mount namespace (``unshare --mount``) in which BusyBox is
  bind-mounted over the file /bin/sh resolves to: there, and only there, /bin/sh *is* BusyBox, as
  on the real systems, and deployer's command line stays what it sends to any target.

Needs root (the mount namespace, see namespaced.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from deployer.sandbox.servers import SshServer
from tests.integration import namespaced


def unavailable() -> str | None:
    """None when a BusyBox host can be started here, else why not."""
    why = namespaced.unavailable()
    return f"a BusyBox host needs its own /bin/sh: {why}" if why else None


def start(server: SshServer, user: str, applets: Path, busybox: str, timeout: float = 15.0) -> None:
    """Start sshd for `user` with PATH=applets and /bin/sh = BusyBox (server not yet prepared)."""
    server.prepare(f"Match User {user}\n    SetEnv PATH={applets}\n")
    namespaced.start(server, [(busybox, os.path.realpath("/bin/sh"))], timeout)


known_hosts = namespaced.known_hosts
