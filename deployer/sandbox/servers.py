"""Real OpenSSH servers for the sandbox: unprivileged sshd on a free loopback port, with keys made here."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from deployer.environment import child_environment
from deployer.errors import ConfigError, ConnectError

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


START_TIMEOUT = 15.0


def find_sshd() -> str:
    """Return the path of OpenSSH's sshd, or raise ConfigError saying how to install it."""
    for candidate in (shutil.which("sshd"), *SSHD_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "OpenSSH sshd is not installed — install it (apt-get install -y openssh-server) to run the sandbox"
    )


def free_port() -> int:
    """Ask the kernel for a currently free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_banner(port: int, deadline: float, host: str = "127.0.0.1") -> bool:
    """Poll until something on host:port sends an SSH banner, or the deadline passes."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                if sock.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _openssh_private(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _openssh_public(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def write_keypair(path: Path, kind: str = "ed25519", comment: str = "") -> str:
    """Generate a key pair at path (0600) and path.pub; return the public key line."""
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(kind)
    path.write_bytes(_openssh_private(key))
    path.chmod(0o600)
    public = f"{_openssh_public(key)} {comment}".strip()
    path.with_name(path.name + ".pub").write_text(public + "\n")
    return public


@dataclass
class SshServer:
    """One unprivileged-port OpenSSH sshd with its own host keys and authorized_keys file."""

    name: str
    home: Path
    login_user: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    host_keys: list[str] = field(default_factory=list)  # "type base64" public lines

    @property
    def authorized_keys(self) -> Path:
        """The file sshd reads authorized keys from (for every user)."""
        return self.home / "authorized_keys"

    @property
    def log(self) -> Path:
        """sshd's own log (stderr with -e)."""
        return self.home / "sshd.log"

    def prepare(self, extra_config: str = "") -> None:
        """Write host keys and sshd_config; pick a free port."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        host_key_lines = []
        for kind in ("ed25519", "ecdsa", "rsa"):
            key_path = self.home / f"ssh_host_{kind}_key"
            if not key_path.exists():
                write_keypair(key_path, kind)
            public = key_path.with_name(key_path.name + ".pub").read_text().split()
            self.host_keys.append(f"{public[0]} {public[1]}")
            host_key_lines.append(f"HostKey {key_path}")
        self.authorized_keys.touch(mode=0o644)
        config = "\n".join(
            [
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                *host_key_lines,
                f"PidFile {self.home / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                f"AllowUsers {self.login_user}",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding yes",
                "ClientAliveInterval 5",
                "ClientAliveCountMax 3",
                "MaxStartups 100:30:200",
                "MaxSessions 100",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",
                extra_config,
            ]
        )
        (self.home / "sshd_config").write_text(config + "\n")

    def start(self) -> None:
        """Start sshd in the foreground mode (-D) and wait for its banner."""
        sshd = find_sshd()
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.home / "sshd_config")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=child_environment(os.environ),
            )
        if not wait_for_banner(self.port, time.monotonic() + START_TIMEOUT):
            self.stop()
            raise ConnectError(f"sandbox {self.name} sshd did not start — see {self.log}")

    def stop(self) -> None:
        """Stop this sshd and every session it spawned (its whole process group)."""
        stop_process_group(self.process)
        self.process = None

    def authorize(self, public_line: str, options: str = "") -> None:
        """Append a public key line (with authorized_keys options) for the login user."""
        with self.authorized_keys.open("a") as handle:
            handle.write(f"{options} {public_line}".strip() + "\n")


def stop_process_group(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
