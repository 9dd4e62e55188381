"""Real proxies on loopback for route tests: tinyproxy (HTTP CONNECT) and Dante's sockd (SOCKS5).

Each is configured by the test, started in the foreground on a free port and stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployer.sandbox.servers import free_port

PROXY_USER = "deployer-proxy"  # SOCKS username auth checks system passwords (Dante)
PROXY_PASSWORD = "pr0xy-pass"


def need(tool: str, package: str) -> str:
    """The tool's path; a missing tool fails loudly (./dev setup installs it)."""
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.fail(
            f"{tool} is missing — apt-get install -y {package} (./dev setup)", pytrace=False
        )
    return path


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"proxy exited with {process.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"proxy did not listen on {port}: {log.read_text()}")


@dataclass
class Proxy:
    """A running proxy process and its log."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        """What the proxy logged so far."""
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop it and the children it forked: its own process group, by id."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers the mother process left


def start_tinyproxy(work: Path, *, user: str, password: str, ports: list[int],
                    allowed_hosts: list[str]) -> Proxy:  # fmt: skip
    """tinyproxy with BasicAuth, CONNECT only to ports, and a host allow-list (deny by default)."""
    binary = need("tinyproxy", "tinyproxy")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    port = free_port()
    allow = work / "allow-list"
    allow.write_text("".join(f"^{host.replace('.', '[.]')}$\n" for host in allowed_hosts))
    allow.chmod(0o644)
    lines = [
        f"Port {port}", "Listen 127.0.0.1", "Timeout 600", "MaxClients 50", "LogLevel Connect",
        *(["User nobody", "Group nogroup"] if os.geteuid() == 0 else []),
        *(f"ConnectPort {p}" for p in ports),
        f"BasicAuth {user} {password}", f'Filter "{allow}"', "FilterDefaultDeny Yes",
        "Allow 127.0.0.1",
    ]  # fmt: skip
    config = work / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n")
    log = work / "tinyproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-d", "-c", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=out, start_new_session=True)  # fmt: skip
    proxy = Proxy(port, process, log)
    try:
        _wait_listening(port, process, log)
    except BaseException:
        proxy.stop()
        raise
    return proxy


def proxy_account() -> None:
    """A system account with a password for Dante's username method (root only)."""
    try:
        pwd.getpwnam(PROXY_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PROXY_USER], check=True)  # fmt: skip
    subprocess.run(["chpasswd"], input=f"{PROXY_USER}:{PROXY_PASSWORD}".encode(), check=True)


def start_dante(work: Path, *, allowed: list[tuple[str, int]]) -> Proxy:
    """Dante's sockd with username/password auth, allowing only these destinations."""
    binary = need("danted", "dante-server")
    if os.geteuid() != 0:
        pytest.skip("Dante's username method checks system passwords: run the tests as root")
    proxy_account()
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = work / "sockd.log"
    rules = "".join(
        f"socks pass {{ from: 127.0.0.0/8 to: {host}/32 port = {p} log: connect }}\n"
        for host, p in allowed
    )
    config = work / "sockd.conf"
    config.write_text(
        f"logoutput: {log}\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n"
        "socksmethod: username\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
        "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
        f"{rules}socks block {{ from: 0.0.0.0/0 to: 0.0.0.0/0 log: connect error }}\n"
    )
    log.touch()
    with (work / "sockd.err").open("wb") as err:
        process = subprocess.Popen([binary, "-f", str(config), "-p", str(work / "sockd.pid")],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)  # fmt: skip
    proxy = Proxy(port, process, log)
    try:
        _wait_listening(port, process, log)
    except BaseException:
        proxy.stop()
        raise
    return proxy
