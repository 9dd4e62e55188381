"""An sshd in a private mount namespace: a target whose files differ from this machine's.

Some bind mounts are made in the namespace before sshd starts; sessions of that sshd see them,
nothing else does. BusyBox targets get BusyBox as /bin/sh this way; `deployer status` tests get
two targets whose same --path holds different releases. Needs root (unshare --mount);
``stop_process_group`` ends sshd and with it the namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from deployer.sandbox.servers import SshServer, find_sshd, stop_process_group, wait_for_banner


def unavailable() -> str | None:
    """None when such an sshd can be started here, else why not."""
    if os.geteuid() != 0:
        return "a private mount namespace needs root"
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    return None


def start(server: SshServer, binds: Sequence[tuple[str, str]], timeout: float = 15.0) -> None:
    """Start a prepared server's sshd with each (source, target) bind-mounted in its namespace."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    mounts = "".join(f'mount --bind "${2 * i + 1}" "${2 * i + 2}" && ' for i in range(len(binds)))
    last = 2 * len(binds)
    argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            f'{mounts}exec "${last + 1}" -D -e -f "${last + 2}"', f"{server.name}-host",
            *(path for bind in binds for path in bind), find_sshd(),
            str(server.home / "sshd_config")]  # fmt: skip
    with server.log.open("ab") as log:
        server.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    if not wait_for_banner(server.port, time.monotonic() + timeout):
        stop_process_group(server.process)
        raise RuntimeError(f"{server.name} sshd did not start — see {server.log}")


def known_hosts(server: SshServer) -> str:
    """known_hosts lines for the server as reached directly on loopback."""
    return "".join(f"[127.0.0.1]:{server.port} {key}\n" for key in server.host_keys)
