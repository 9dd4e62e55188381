"""A local sandbox of the real topology: a jump sshd, a target sshd and a reverse tunnel.

Everything runs on loopback with real OpenSSH: the target's sshd is reached only through
``ssh -N -R <tunnel>:127.0.0.1:<target>`` opened by plain ``ssh`` towards the jump host, exactly
like an intranet server behind NAT. The demo (``deployer sandbox``) and the integration tests
build on this one implementation.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from deployer.environment import child_environment
from deployer.errors import ConnectError
from deployer.sandbox.servers import (
    START_TIMEOUT,
    SshServer,
    free_port,
    stop_process_group,
    wait_for_banner,
    write_keypair,
)


@dataclass
class Sandbox:
    """Jump sshd + target sshd + an ``ssh -R`` reverse tunnel from the target side to the jump."""

    root: Path
    user: str = field(default_factory=lambda: pwd.getpwuid(os.geteuid()).pw_name)
    jump: SshServer = field(init=False)
    target: SshServer = field(init=False)
    tunnel_port: int = 0
    tunnel: subprocess.Popen[bytes] | None = None
    target_config: str = ""  # extra sshd_config lines for the target (SetEnv, ForceCommand, ...)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.jump = SshServer("jump", self.root / "jump", self.user)
        self.target = SshServer("target", self.root / "target", self.user)

    @property
    def keys_dir(self) -> Path:
        """Where the sandbox's client keys live (sandbox material only, never real secrets)."""
        return self.root / "keys"

    @property
    def ci_key(self) -> Path:
        """The private key the CI side uses (its text goes into SSH_PRIVATE_KEY)."""
        return self.keys_dir / "ci_ed25519"

    @property
    def tunnel_log(self) -> Path:
        """Output of the ssh -R process."""
        return self.root / "tunnel.log"

    def known_hosts(self) -> str:
        """SSH_KNOWN_HOSTS text pinning the jump and the target as seen through the tunnel."""
        lines = [f"[127.0.0.1]:{self.jump.port} {key}" for key in self.jump.host_keys]
        lines += [f"[localhost]:{self.tunnel_port} {key}" for key in self.target.host_keys]
        return "\n".join(lines) + "\n"

    def start(self) -> Sandbox:
        """Generate keys, start both sshd servers and open the reverse tunnel."""
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.keys_dir.chmod(0o700)
        if not self.ci_key.exists():
            write_keypair(self.ci_key, "ed25519", "deployer-sandbox-ci")
            write_keypair(self.keys_dir / "tunnel_ed25519", "ed25519", "deployer-sandbox-tunnel")
        ci_public = self.ci_key.with_name("ci_ed25519.pub").read_text().strip()
        tunnel_public = (self.keys_dir / "tunnel_ed25519.pub").read_text().strip()
        for server in (self.jump, self.target):
            server.prepare(self.target_config if server is self.target else "")
            server.authorized_keys.write_text("")
        self.tunnel_port = self.tunnel_port or free_port()
        self.jump.authorize(
            tunnel_public,
            f'restrict,port-forwarding,permitlisten="127.0.0.1:{self.tunnel_port}",command="/bin/false"',
        )
        self.jump.authorize(
            ci_public,
            f'restrict,port-forwarding,permitopen="localhost:{self.tunnel_port}",command="/bin/false"',
        )
        self.target.authorize(ci_public)
        try:
            self.jump.start()
            self.target.start()
            self.open_tunnel()
        except BaseException:
            self.stop()
            raise
        return self

    def open_tunnel(self) -> None:
        """Run plain ``ssh -N -R`` from the "intranet" side and wait until the port answers."""
        known = self.root / "tunnel_known_hosts"
        known.write_text(
            "".join(f"[127.0.0.1]:{self.jump.port} {k}\n" for k in self.jump.host_keys)
        )
        argv = [
            "ssh", "-N", "-F", "/dev/null",
            "-R", f"127.0.0.1:{self.tunnel_port}:127.0.0.1:{self.target.port}",
            "-p", str(self.jump.port),
            "-i", str(self.keys_dir / "tunnel_ed25519"),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=5",
            f"{self.user}@127.0.0.1",
        ]  # fmt: skip
        with self.tunnel_log.open("ab") as log:
            self.tunnel = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env=child_environment(os.environ),
            )  # fmt: skip
        if not wait_for_banner(self.tunnel_port, time.monotonic() + START_TIMEOUT):
            self.close_tunnel()
            raise ConnectError(f"sandbox tunnel did not come up — see {self.tunnel_log}")

    def close_tunnel(self) -> None:
        """Stop the ssh -R process (the tunnel port stops answering)."""
        stop_process_group(self.tunnel)
        self.tunnel = None

    def stop(self) -> None:
        """Stop the tunnel and both servers."""
        self.close_tunnel()
        self.target.stop()
        self.jump.stop()

    def environment(self) -> dict[str, str]:
        """The CI variables a pipeline would have for this sandbox."""
        return {
            "SSH_PRIVATE_KEY": self.ci_key.read_text(),
            "SSH_KNOWN_HOSTS": self.known_hosts(),
        }

    def route_args(self) -> list[str]:
        """The --to/--jump flags that reach the target through the tunnel."""
        return [
            "--to", f"{self.user}@localhost:{self.tunnel_port}",
            "--jump", f"{self.user}@127.0.0.1:{self.jump.port}",
        ]  # fmt: skip

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
