"""Where the tunnel benchmark (bench/tunnel.py) runs: a jump sshd and a target sshd, and its probes.

The jump host's sshd runs in a network namespace (tests/integration/netns.py: its link can be
cut, a flow dropped) or on loopback; the target sshd, the intranet side, is always on loopback.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.login import login_user
from deployer.sandbox.servers import SshServer, write_keypair
from deployer.ssh.authorized_keys import render_authorized_keys
from deployer.ssh.forwards import parse_forwards
from tests.integration.netns import Netns, stop_sshd


@dataclass
class Lab:
    """A jump sshd (maybe in a namespace), keys, and a target sshd on the intranet side."""

    base: Path
    user: str
    jump: SshServer
    target: SshServer
    host: str
    ns: Netns | None

    @property
    def key(self) -> Path:
        """The tunnel's private key (the public half is in tunnel.pub next to it)."""
        return self.base / "tunnel"

    @property
    def endpoint(self) -> str:
        """user@host:port of the jump host, as `deployer tunnel` takes it."""
        return f"{self.user}@{self.host}:{self.jump.port}"

    def known_hosts(self) -> str:
        """known_hosts lines for the jump host's host keys."""
        return "".join(f"[{self.host}]:{self.jump.port} {k}\n" for k in self.jump.host_keys)

    def known_hosts_file(self) -> Path:
        """known_hosts() written to a file (for ssh's UserKnownHostsFile)."""
        path = self.base / "known_hosts"
        path.write_text(self.known_hosts())
        return path

    def allow_forwards(self, specs: list[str], *, reclaim: bool) -> None:
        """Let the tunnel key forward exactly these -R specs on the jump host (one key line)."""
        text = render_authorized_keys(
            parse_forwards(specs),
            tunnel_key=(self.base / "tunnel.pub").read_text().strip(),
            ci_key="x",
            reclaim=reclaim,
        )
        self.jump.authorized_keys.write_text(
            next(x for x in text.splitlines() if x.startswith("restrict,port")) + "\n"
        )

    def banner(self, port: int, timeout: float = 2.0) -> bytes:
        """The first line a connection to port on the jump host's side gets, b"" when none."""
        if self.ns is not None:
            return self.ns.banner(port, timeout)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(256).split(b"\n")[0].rstrip(b"\r")
        except OSError:
            return b""

    def stop(self) -> None:
        """Stop both sshd's (and the jump's sessions), delete the namespace and the lab's files."""
        stop_sshd(self.jump)
        self.target.stop()
        if self.ns is not None:
            self.ns.delete()
        shutil.rmtree(self.base, ignore_errors=True)


def make_lab(in_namespace: bool) -> Lab:
    """Keys, a started target sshd and a started jump sshd (in a new namespace if in_namespace)."""
    user = login_user()
    base = Path(tempfile.mkdtemp(prefix="deployer-bench-"))
    base.chmod(0o755)
    write_keypair(base / "tunnel", "ed25519", "bench-tunnel")
    target = SshServer("target", base / "target", user)
    target.prepare()
    target.start()
    jump = SshServer("jump", base / "jump", user)
    jump.prepare()
    ns = None
    try:
        if in_namespace:
            ns = Netns.create("a")
            ns.start_sshd(jump)
            host = ns.ns_ip
        else:
            jump.start()
            host = "127.0.0.1"
    except BaseException:
        target.stop()
        if ns is not None:
            ns.delete()
        shutil.rmtree(base, ignore_errors=True)
        raise
    return Lab(base, user, jump, target, host, ns)


def wait_banner(lab: Lab, port: int, timeout: float = 20.0) -> bool:
    """Whether port on the jump host's side answers with a banner within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.banner(port, 1.0):
            return True
        time.sleep(0.2)
    return False


def wait_listening(lab: Lab, port: int, timeout: float = 20.0) -> None:
    """Wait until something listens on port on the jump host; RuntimeError after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if lab.ns is None and probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if lab.ns is not None and lab.ns.listener_pids(port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on the tunnel port {port}")
