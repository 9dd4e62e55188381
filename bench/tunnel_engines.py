"""The tunnel keepers the tunnel benchmark compares, each started as its own process.

Plain ``ssh -N -R``, autossh (with the usual service settings), ``deployer tunnel`` (optionally
``--reclaim``) and a paramiko reverse forward (the engine deployer did not choose; used for
throughput only). Each runs in its own session and is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.tunnel_lab import Lab
from tests.integration.netns import children


class Tunnel:
    """A running tunnel keeper of some kind."""

    def __init__(self, process: subprocess.Popen[bytes], name: str) -> None:
        self.process = process
        self.name = name

    def ssh_pid(self) -> int | None:
        """The ssh process carrying the tunnel right now."""
        for pid in children(self.process.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "ssh":
                    return pid
            except OSError:
                continue
        return None

    def stop(self) -> None:
        """SIGTERM the keeper (SIGKILL after 10 s), then its ssh child by pid (autossh's may outlive it)."""
        ssh = self.ssh_pid()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if ssh is not None:  # autossh's ssh: stop it by its own id too
            with contextlib.suppress(ProcessLookupError):
                os.kill(ssh, signal.SIGTERM)


def start_plain_ssh(lab: Lab, spec: str) -> Tunnel:
    """`ssh -N -R spec` to the jump host, nothing else: the baseline."""
    argv = ["ssh", "-N", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", f"UserKnownHostsFile={lab.known_hosts_file()}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-i", str(lab.key), "-p", str(lab.jump.port), "-R", spec,
            f"{lab.user}@{lab.host}"]  # fmt: skip
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    return Tunnel(process, "ssh -R")


def start_autossh(lab: Lab, spec: str) -> Tunnel:
    """autossh -M 0 with ServerAlive 30 s x 3, ExitOnForwardFailure and AUTOSSH_GATETIME=0."""
    argv = ["autossh", "-M", "0", "-N", "-F", "/dev/null", "-o", "ServerAliveInterval=30",
            "-o", "ServerAliveCountMax=3", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={lab.known_hosts_file()}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-i", str(lab.key), "-p", str(lab.jump.port), "-R", spec,
            f"{lab.user}@{lab.host}"]  # fmt: skip
    log = (lab.base / "autossh.log").open("ab")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                               env={**os.environ, "AUTOSSH_LOGFILE": str(lab.base / "autossh.log"),
                                    # usual for services; by default autossh gives up when ssh fails
                                    # within 30 s of its first start
                                    "AUTOSSH_GATETIME": "0"})  # fmt: skip
    return Tunnel(process, "autossh")


def start_deployer(lab: Lab, spec: str, *extra: str) -> Tunnel:
    """`deployer tunnel` as in CI (SSH_KNOWN_HOSTS, CI=true); extra: e.g. "--reclaim"."""
    argv = [sys.executable, "-m", "deployer", "tunnel", lab.endpoint, "-R", spec, "--key-file", str(lab.key),
            "--status-file", str(lab.base / f"status-{spec.split(':')[0]}.json"), *extra]  # fmt: skip
    log = (lab.base / "deployer.log").open("ab")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                               env={**os.environ, "SSH_KNOWN_HOSTS": lab.known_hosts(), "CI": "true"})  # fmt: skip
    return Tunnel(process, "deployer" + (" --reclaim" if extra else ""))


PARAMIKO_FORWARDER = """
import select, socket, sys, threading
import paramiko
host, user, key = sys.argv[1], sys.argv[3], sys.argv[4]
port, listen, target = int(sys.argv[2]), int(sys.argv[5]), int(sys.argv[6])

def pump(channel, upstream):
    try:
        while True:
            ready, _, _ = select.select([channel, upstream], [], [], 60)
            if not ready:
                break
            if channel in ready:
                data = channel.recv(1 << 17)
                if not data:
                    upstream.shutdown(socket.SHUT_WR)
                    break
                upstream.sendall(data)
            if upstream in ready:
                data = upstream.recv(1 << 17)
                if not data:
                    break
                channel.sendall(data)
    except OSError:
        pass
    finally:
        upstream.close()
        channel.close()

def handler(channel, origin, server):
    threading.Thread(target=pump, args=(channel, socket.create_connection(("127.0.0.1", target))), daemon=True).start()

sock = socket.create_connection((host, port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
transport = paramiko.Transport(sock)
security = transport.get_security_options()
# paramiko's fastest cipher (it has no chacha20-poly1305)
security.ciphers = ["aes128-gcm@openssh.com"] + [c for c in security.ciphers if c != "aes128-gcm@openssh.com"]
transport.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key))
transport.request_port_forward("localhost", listen, handler)
print(transport.remote_cipher, flush=True)
transport.join()
"""


def start_paramiko(lab: Lab, port: int, target: int) -> Tunnel:
    """A paramiko reverse forward from the jump host's port to target on loopback."""
    argv = [sys.executable, "-c", PARAMIKO_FORWARDER, lab.host, str(lab.jump.port), lab.user, str(lab.key),
            str(port), str(target)]  # fmt: skip
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    return Tunnel(process, "paramiko")


def start_engine(lab: Lab, engine: str, spec: str) -> Tunnel:
    """Start the keeper a fault row names: "autossh", "deployer" or "deployer --reclaim"."""
    if engine == "autossh":
        return start_autossh(lab, spec)
    return start_deployer(lab, spec, *engine.split()[1:])
