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

Needs root (the mount namespace); ``stop_process_group`` ends sshd and with it the namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from deployer.sandbox.servers import SshServer, find_sshd, stop_process_group, wait_for_banner


def unavailable() -> str | None:
    """None when a BusyBox host can be started here, else why not."""
    if os.geteuid() != 0:
        return "a BusyBox host needs root (a private mount namespace for its /bin/sh)"
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    return None


def start(server: SshServer, user: str, applets: Path, busybox: str, timeout: float = 15.0) -> None:
    """Start sshd for `user` with PATH=applets and /bin/sh = BusyBox (server not yet prepared)."""
    server.prepare(f"Match User {user}\n    SetEnv PATH={applets}\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    dash = os.path.realpath("/bin/sh")
    argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            'mount --bind "$1" "$2" && exec "$3" -D -e -f "$4"', "busybox-host",
            busybox, dash, find_sshd(), str(server.home / "sshd_config")]  # fmt: skip
    with server.log.open("ab") as log:
        server.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    if not wait_for_banner(server.port, time.monotonic() + timeout):
        stop_process_group(server.process)
        raise RuntimeError(f"BusyBox host sshd did not start — see {server.log}")


def known_hosts(server: SshServer) -> str:
    """known_hosts lines for the server as reached directly on loopback."""
    return "".join(f"[127.0.0.1]:{server.port} {key}\n" for key in server.host_keys)
