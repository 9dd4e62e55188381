"""Network namespaces for fault tests: a "jump host" namespace joined to this one by a veth pair.

Needs root (``ip netns``, ``nft``). Everything is named after this process's pid so concurrent
runs do not collide, and ``delete()`` removes exactly what ``create()`` made. Faults are nft
rules inside the namespace: a whole-link cut (every packet on the veth dropped silently, like
a cable pulled or a NAT reboot) and a dropped flow (one established TCP connection silently
black-holed while new connections still pass, like a NAT or firewall losing its state).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deployer.sandbox.servers import SshServer, find_sshd, wait_for_banner

NFT_TABLE = "deployer_fault"


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


def available() -> str | None:
    """None when namespaces can be built here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if _run(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
            return f"{tool} is not installed (./dev setup installs it)"
    return None


@dataclass
class Netns:
    """A namespace with one veth link to the root namespace: host_ip here, ns_ip inside."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, tag: str) -> Netns:
        """Build the namespace, the veth pair and the addresses; loopback up inside."""
        pid = os.getpid()
        subnet = pid % 250 + 1
        index = {"a": 0, "b": 4, "c": 8, "d": 12}.get(tag[:1], 16)
        base = f"10.{200 + (pid // 250) % 50}.{subnet}"
        ns = cls(
            name=f"dpl{pid}{tag}",
            host_if=f"dh{pid % 100000}{tag[:2]}",
            ns_if=f"dn{pid % 100000}{tag[:2]}",
            host_ip=f"{base}.{index + 1}",
            ns_ip=f"{base}.{index + 2}",
        )
        try:
            _run(["ip", "netns", "add", ns.name])
            _run(["ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if])
            _run(["ip", "link", "set", ns.ns_if, "netns", ns.name])
            _run(["ip", "addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if])
            _run(["ip", "link", "set", ns.host_if, "up"])
            _run(["ip", "-n", ns.name, "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if])
            _run(["ip", "-n", ns.name, "link", "set", ns.ns_if, "up"])
            _run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        except BaseException:
            ns.delete()
            raise
        return ns

    def argv(self, *command: str) -> list[str]:
        """A command line that runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return _run(self.argv(*command), check=check)

    # -- servers

    def start_sshd(self, server: SshServer, timeout: float = 15.0) -> None:
        """Start a prepared SshServer inside the namespace, listening on ns_ip too."""
        config = server.home / "sshd_config"
        text = config.read_text()
        if f"ListenAddress {self.ns_ip}" not in text:
            config.write_text(text + f"ListenAddress {self.ns_ip}\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with server.log.open("ab") as log:
            server.process = subprocess.Popen(
                self.argv(find_sshd(), "-D", "-e", "-f", str(config)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if not wait_for_banner(server.port, time.monotonic() + timeout, host=self.ns_ip):
            stop_sshd(server)
            raise RuntimeError(f"sshd in {self.name} did not start — see {server.log}")

    def banner(self, port: int, timeout: float = 3.0) -> bytes:
        """Connect to 127.0.0.1:port inside the namespace; the first line it sends (b'' if none)."""
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(('127.0.0.1',{port}),timeout={timeout})\n"
            "d=b''\n"
            "while b'\\n' not in d:\n"
            "    c=s.recv(256)\n"
            "    if not c: break\n"
            "    d+=c\n"
            "sys.stdout.write(d.split(b'\\n')[0].decode('ascii','replace'))\n"
        )
        done = _run(self.argv("python3", "-c", code), check=False)
        return done.stdout.strip().encode() if done.returncode == 0 else b""

    def listener_pids(self, port: int) -> list[int]:
        """Processes that hold a listening socket on port inside the namespace (ss -p)."""
        done = self.run("ss", "-Htlnp", f"sport = :{port}", check=False)
        return sorted({int(p) for p in re.findall(r"pid=(\d+)", done.stdout)})

    # -- faults

    def _nft(self, script: str) -> None:
        done = subprocess.run(
            self.argv("nft", "-f", "-"), input=script, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft failed: {done.stderr.strip()}")

    def _table(self) -> None:
        self._nft(
            f"table inet {NFT_TABLE} {{\n"
            "  chain input { type filter hook input priority -10; policy accept; }\n"
            "  chain output { type filter hook output priority -10; policy accept; }\n"
            "}\n"
        )

    def cut(self) -> None:
        """Silently drop every packet on the link (both directions)."""
        self._table()
        self._nft(
            f'add rule inet {NFT_TABLE} input iifname "{self.ns_if}" drop comment "cut"\n'
            f'add rule inet {NFT_TABLE} output oifname "{self.ns_if}" drop comment "cut"\n'
        )

    def drop_flow(self, server_port: int, client_port: int) -> None:
        """Silently drop one TCP connection (both directions); new connections still pass."""
        self._table()
        self._nft(
            f"add rule inet {NFT_TABLE} input tcp sport {client_port} tcp dport {server_port} drop\n"
            f"add rule inet {NFT_TABLE} output tcp sport {server_port} tcp dport {client_port} drop\n"
        )

    def heal(self) -> None:
        """Remove every fault rule."""
        self.run("nft", "delete", "table", "inet", NFT_TABLE, check=False)

    def delete(self) -> None:
        """Stop what we started inside, then remove the namespace and the veth pair."""
        for process in self.processes:
            _stop(process)
        self.heal()
        _run(["ip", "netns", "delete", self.name], check=False)
        _run(["ip", "link", "delete", self.host_if], check=False)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def session_pids(server: SshServer) -> list[int]:
    """The per-connection sshd processes of a server: [priv] monitors and their session children."""
    if server.process is None:
        return []
    monitors = children(server.process.pid)
    return monitors + [child for monitor in monitors for child in children(monitor)]


def kill_sessions(server: SshServer) -> list[int]:
    """SIGKILL every session of a server (the connections drop; the listener stays)."""
    pids = session_pids(server)
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def stop_sshd(server: SshServer) -> None:
    """Stop the listener and every session it spawned (sessions have their own process groups)."""
    pids = session_pids(server)
    server.stop()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tcp_client_ports(pid: int, remote_ip: str, remote_port: int) -> list[int]:
    """Local ports of a process's TCP connections to remote_ip:remote_port (root namespace)."""
    done = _run(
        ["ss", "-Htnp", "state", "established", f"dst {remote_ip}:{remote_port}"], check=False
    )
    ports = []
    for line in done.stdout.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[2]
        ports.append(int(local.rsplit(":", 1)[1]))
    return ports
