"""deployer tunnel against real OpenSSH: up end to end, every fault recovered, never falsely "up".

The keeper runs as a real ``python -m deployer tunnel`` process towards a jump sshd of this module
(on loopback, or inside a network namespace for the network faults) and forwards to the session
sandbox's target sshd. Every process and namespace started here is stopped by its id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import ExitCode
from deployer.sandbox.servers import SshServer, free_port, write_keypair
from deployer.ssh.authorized_keys import render_authorized_keys
from deployer.ssh.forwards import parse_forwards
from tests.integration.netns import (
    Netns,
    available,
    children,
    kill_sessions,
    stop_sshd,
    tcp_client_ports,
)

pytestmark = pytest.mark.integration

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ tunnel: ")


# ---------------------------------------------------------------------------- the jump host


@dataclass
class Jump:
    """A jump sshd of our own: on loopback, or inside a namespace (host = its address there)."""

    server: SshServer
    host: str
    user: str
    keys: Path  # directory with tunnel and ci key pairs
    ns: Netns | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.user}@{self.host}:{self.server.port}"

    def known_hosts(self) -> str:
        return "".join(f"[{self.host}]:{self.server.port} {key}\n" for key in self.server.host_keys)

    def authorize(
        self, specs: list[str], *, reclaim: bool = False, tunnel_options: str | None = None
    ) -> None:
        """Install the lines `deployer authorized-keys` prints for these forwards."""
        text = render_authorized_keys(
            parse_forwards(specs),
            tunnel_key=(self.keys / "tunnel.pub").read_text().strip(),
            ci_key=(self.keys / "ci.pub").read_text().strip(),
            reclaim=reclaim,
        )
        lines = [line for line in text.splitlines() if line.startswith("restrict,port-forwarding")]
        if tunnel_options is not None:
            lines[0] = f"{tunnel_options} {(self.keys / 'tunnel.pub').read_text().strip()}"
        self.server.authorized_keys.write_text("\n".join(lines[:2]) + "\n")

    def banner(self, port: int, timeout: float = 3.0) -> bytes:
        """What a client on the jump host gets first from the tunnel port (b'' when nothing)."""
        if self.ns is not None:
            return self.ns.banner(port, timeout)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(256).split(b"\n")[0].rstrip(b"\r")
        except OSError:
            return b""

    def listening(self, port: int) -> bool:
        if self.ns is not None:
            return bool(self.ns.listener_pids(port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False


def _keys(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tunnel", "ci", "stranger"):
        if not (directory / name).exists():
            write_keypair(directory / name, "ed25519", f"{name}@test")
    return directory


@pytest.fixture(scope="module")
def jump(topology: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jump]:
    """A loopback jump sshd for this module (sessions get killed, it gets restarted)."""
    base = Path(tempfile.mkdtemp(prefix="deployer-tunnel-it-"))
    base.chmod(0o755)
    server = SshServer("tunnel-jump", base / "jump", topology.user)
    server.prepare()
    server.start()
    keys = _keys(base / "keys")
    topology.box.target.authorize(
        (keys / "ci.pub").read_text().strip()
    )  # as CI's key on the target
    try:
        yield Jump(server, "127.0.0.1", topology.user, keys)
    finally:
        stop_sshd(server)


# ---------------------------------------------------------------------------- the keeper process


@dataclass
class Keeper:
    process: subprocess.Popen[bytes]
    status_file: Path
    log_file: Path
    started: float = field(default_factory=time.monotonic)

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and check(status):
                return status
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"keeper did not reach the state in {timeout} s: {self.status()}\n{self.log()}"
        )

    def wait_up(self, timeout: float = 15.0, connects: int = 1) -> dict[str, Any]:
        return self.wait_for(lambda s: s["state"] == "up" and s["connects"] >= connects, timeout)

    def ssh_pids(self) -> list[int]:
        pids = []
        for pid in children(self.process.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "ssh":
                    pids.append(pid)
            except OSError:
                continue
        return pids

    def terminate(self, timeout: float = 10.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.fixture
def keepers(tmp_path: Path) -> Iterator[Callable[..., Keeper]]:
    """Start `deployer tunnel` processes; every one is stopped (by pid) afterwards."""
    started: list[Keeper] = []

    def start(jump: Jump, specs: list[str], *args: str, env: dict[str, str] | None = None,
              key: str = "tunnel", positional: bool = True, container: bool = False) -> Keeper:  # fmt: skip
        n = len(started)
        status_file, log_file = tmp_path / f"status-{n}.json", tmp_path / f"keeper-{n}.log"
        argv = [sys.executable, "-m", "deployer", "tunnel"]
        if positional:
            argv += [
                jump.endpoint,
                *[a for spec in specs for a in ("-R", spec)],
                "--key-file",
                str(jump.keys / key),
            ]
        argv += ["--status-file", str(status_file), *args]
        if container:  # exactly the image's ENTRYPOINT, with its status file moved here
            argv = container_command("ENTRYPOINT", status_file)
        full_env = {
            **os.environ,
            "CI": "true",
            "SSH_KNOWN_HOSTS": jump.known_hosts(),
            **(env or {}),
        }
        with log_file.open("wb") as log:
            process = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)  # fmt: skip
        keeper = Keeper(process, status_file, log_file)
        started.append(keeper)
        return keeper

    yield start
    for keeper in started:
        ssh = keeper.ssh_pids()
        keeper.stop()
        for pid in ssh:  # the keeper stops its ssh; nothing may be left behind
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text()
            )


@pytest.fixture
def target_port(topology: Any) -> int:
    return int(topology.box.target.port)


def ssh_through(
    jump: Jump, port: int, target_keys: list[str], work: Path, command: str
) -> subprocess.CompletedProcess[str]:
    """Plain OpenSSH, as CI would: through the jump host to the tunnel port, then the target."""
    known = work / "ci_known_hosts"
    known.write_text(jump.known_hosts() + "".join(f"[localhost]:{port} {k}\n" for k in target_keys))
    common = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(jump.keys / "ci"),
              "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]  # fmt: skip
    proxy = " ".join(
        ["ssh", *common, "-p", str(jump.server.port), "-W", "%h:%p", f"{jump.user}@{jump.host}"]
    )
    argv = [
        "ssh",
        *common,
        "-o",
        f"ProxyCommand={proxy}",
        "-p",
        str(port),
        f"{jump.user}@localhost",
        command,
    ]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def _timestamped(log: str) -> None:
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and all(STAMPED.match(line) for line in lines), log


# ---------------------------------------------------------------------------- loopback


def test_comes_up_and_real_ssh_reaches_the_target(jump: Jump, keepers: Callable[..., Keeper], target_port: int,
                                                  topology: Any, tmp_path: Path) -> None:  # fmt: skip
    port, health = free_port(), free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    keeper = keepers(jump, [spec], "--healthz", f"127.0.0.1:{health}")
    status = keeper.wait_up()
    assert status["healthy"] is True and status["forwards"] == [spec]
    assert (
        "SSH-2.0-OpenSSH" in status["reason"]
    )  # checked end to end: the target's banner came back
    done = ssh_through(
        jump, port, topology.box.target.host_keys, tmp_path, "echo through-the-tunnel"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "through-the-tunnel"
    with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as response:
        assert response.status == 200 and json.loads(response.read())["state"] == "up"
    log = keeper.log()
    _timestamped(log)
    assert "jump host key verified" in log and "BEGIN" not in log
    assert keeper.process.poll() is None


def test_sigterm_exits_fast_and_releases_the_port(jump: Jump, keepers: Callable[..., Keeper],
                                                  target_port: int) -> None:  # fmt: skip
    port = free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    keeper = keepers(jump, [spec])
    keeper.wait_up()
    ssh = keeper.ssh_pids()
    assert ssh and jump.listening(port)
    started = time.monotonic()
    assert keeper.terminate(timeout=10) == 0
    assert time.monotonic() - started < 3.0
    deadline = time.monotonic() + 3
    while jump.listening(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not jump.listening(port), "the jump host still listens on the tunnel port"
    assert keeper.status()["state"] == "stopped"
    for pid in ssh:
        assert not Path(f"/proc/{pid}").exists()
    assert "stopping — SIGTERM received" in keeper.log()


def test_killed_jump_session_is_back_within_10s(
    jump: Jump, keepers: Callable[..., Keeper], target_port: int
) -> None:
    port = free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    keeper = keepers(jump, [spec])
    keeper.wait_up()
    assert kill_sessions(jump.server)
    killed = time.monotonic()
    keeper.wait_up(timeout=10, connects=2)
    assert jump.banner(port).startswith(b"SSH-2.0-")
    assert time.monotonic() - killed < 10
    assert "the connection to" in keeper.log()


def test_jump_sshd_restart_is_back(
    jump: Jump, keepers: Callable[..., Keeper], target_port: int
) -> None:
    port = free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    keeper = keepers(jump, [spec])
    keeper.wait_up()
    stop_sshd(jump.server)  # the listener and every session, like a restart that drops connections
    keeper.wait_for(lambda s: s["state"] in ("backoff", "connecting"), timeout=10)
    time.sleep(2)
    jump.server.start()
    restarted = time.monotonic()
    keeper.wait_up(timeout=10, connects=2)
    assert time.monotonic() - restarted < 10
    assert jump.banner(port).startswith(b"SSH-2.0-")


class _Impostor:
    """Another program on the tunnel port of the jump host, answering like an SSH server."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-Impostor_1.0\r\n")

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.mark.parametrize("bind", ["127.0.0.1:", ""], ids=["refused", "other-family-only"])
def test_port_held_by_another_listener_is_never_up(jump: Jump, keepers: Callable[..., Keeper], target_port: int,
                                                   bind: str) -> None:  # fmt: skip
    """With a bind address sshd refuses the forward; without one it may listen on ::1 only and
    grant it while 127.0.0.1 belongs to someone else. Either way: a failure, retried, never up."""
    port = free_port()
    spec = f"{bind}{port}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    impostor = _Impostor(port)
    try:
        keeper = keepers(jump, [spec], "--max-backoff", "2")
        keeper.wait_for(lambda s: s["attempt"] >= 2, timeout=40)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert keeper.status()["state"] != "up", keeper.log()
            time.sleep(0.1)
        status = keeper.status()
        assert status["connects"] == 0 and status["healthy"] is False
        expected = "refused to listen" if bind else "not working end to end"
        if not bind and "refused to listen" in status["last_error"]:
            expected = "refused to listen"  # no IPv6 loopback here: sshd refused outright
        assert expected in status["last_error"], keeper.log()
    finally:
        impostor.close()
    keeper.wait_up(timeout=15)
    assert jump.banner(port).startswith(b"SSH-2.0-OpenSSH")


def test_unknown_jump_host_key_exits_5(
    jump: Jump, keepers: Callable[..., Keeper], target_port: int
) -> None:
    spec = f"{free_port()}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    keeper = keepers(jump, [spec], env={"SSH_KNOWN_HOSTS": ""})
    assert keeper.process.wait(timeout=30) == 5
    assert f"deployer keyscan --to {jump.endpoint}" in keeper.log()
    key_type, blob = (jump.keys / "stranger.pub").read_text().split()[:2]
    other = f"[{jump.host}]:{jump.server.port} {key_type} {blob}\n"  # same type, another key
    changed = keepers(jump, [spec], env={"SSH_KNOWN_HOSTS": other})
    assert changed.process.wait(timeout=30) == 5
    assert "CHANGED" in changed.log()


RELAY = """
import os, socket, sys, threading
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := sock.recv(65536):
    os.write(1, data)
"""


def test_proxy_command_and_ssh_get_no_secrets(jump: Jump, keepers: Callable[..., Keeper], target_port: int,
                                              tmp_path: Path) -> None:  # fmt: skip
    """Both ProxyCommand runs (deployer's check of the jump host, then OpenSSH's) see no secret."""
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    spec = f"{free_port()}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    secrets = {"DEPLOYER_WEBHOOK_SECRET": "webhook-secret-value-0123456789", "DEPLOYER_GITLAB_TOKEN": "glpat-x",
               "SSH_PRIVATE_KEY_PASSPHRASE": "passphrase-x", "DEPLOYER_PROXY_PASSWORD": "proxy-x",
               "CREDENTIALS_DIRECTORY": "/run/credentials/x"}  # fmt: skip
    command = f"sh -c 'env > {dumps}/env.$$; exec {sys.executable} {relay} %h %p'"
    keeper = keepers(jump, [spec], "--proxy-command", command, env=secrets)
    keeper.wait_up(timeout=20)
    files = sorted(dumps.iterdir())
    assert len(files) >= 2, keeper.log()  # the preflight's and ssh's
    seen = [{line.partition("=")[0] for line in dump.read_text().splitlines()} for dump in files]
    for names in seen:
        assert names.isdisjoint(secrets), names & set(secrets)
    # ssh's dump names the keeper's agent: the key is there, in memory
    assert any("SSH_AUTH_SOCK" in names for names in seen)


def test_refused_key_exits_6(jump: Jump, keepers: Callable[..., Keeper], target_port: int) -> None:
    spec = f"{free_port()}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    keeper = keepers(jump, [spec], key="stranger")
    assert keeper.process.wait(timeout=30) == 6
    assert "refused the key" in keeper.log() and "authorized-keys" in keeper.log()


def test_reclaim_without_the_forced_command_falls_back(jump: Jump, keepers: Callable[..., Keeper],
                                                       target_port: int) -> None:  # fmt: skip
    port = free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec], reclaim=False)  # command="/bin/false": nothing to hold a session with
    keeper = keepers(jump, [spec], "--reclaim")
    keeper.wait_up(timeout=20)
    assert "needs the tunnel key's command=" in keeper.log()


def test_reclaim_spares_a_working_holder_and_frees_a_silent_one(jump: Jump, keepers: Callable[..., Keeper],
                                                                target_port: int) -> None:  # fmt: skip
    port = free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec], reclaim=True)
    first = keepers(jump, [spec], "--reclaim")
    first.wait_up()
    second = keepers(jump, [spec], "--reclaim")
    second.wait_for(lambda s: s["attempt"] >= 2, timeout=20)
    assert "held by a tunnel that works" in second.log()
    assert first.status()["state"] == "up" and first.status()["connects"] == 1
    frozen = first.ssh_pids()
    for pid in frozen:  # the first keeper's connection goes silent: its session is now stale
        os.kill(pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        second.wait_up(timeout=30)
        assert time.monotonic() - stopped < 30
        assert "reclaimed the port from a stale session" in second.log()
        assert jump.banner(port).startswith(b"SSH-2.0-OpenSSH")
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    # the first keeper finds its session gone and leaves the working tunnel alone
    first.wait_for(lambda s: s["state"] != "up", timeout=15)
    time.sleep(2)
    assert second.status()["state"] == "up" and second.status()["connects"] == 1


def test_autossh_environment(
    jump: Jump, keepers: Callable[..., Keeper], target_port: int, tmp_path: Path
) -> None:
    port = free_port()
    jump.authorize([f"127.0.0.1:{port}:127.0.0.1:{target_port}"])
    known = tmp_path / "known_hosts"
    known.write_text(jump.known_hosts())
    env = {
        "SSH_KNOWN_HOSTS": "", "SSH_REMOTE_USER": jump.user, "SSH_REMOTE_HOST": jump.host,
        "SSH_REMOTE_PORT": str(jump.server.port), "SSH_TUNNEL_PORT": str(port), "SSH_TARGET_HOST": "127.0.0.1",
        "SSH_TARGET_PORT": str(target_port), "SSH_BIND_IP": "127.0.0.1", "SSH_SERVER_ALIVE_INTERVAL": "3",
        "SSH_SERVER_ALIVE_COUNT_MAX": "1", "SSH_KEY_FILE": str(jump.keys / "tunnel"),
        "SSH_KNOWN_HOSTS_FILE": str(known),
    }  # fmt: skip
    keeper = keepers(
        jump, [], env=env, positional=False
    )  # no USER@JUMP, no -R: the variables decide
    keeper.wait_up()
    assert keeper.status()["forwards"] == [f"127.0.0.1:{port}:127.0.0.1:{target_port}"]
    assert "dead flow found within 6 s" in keeper.log()  # 3 s x (1 + 1)
    assert jump.banner(port).startswith(b"SSH-2.0-OpenSSH")


DOCKERFILE = Path(__file__).resolve().parents[3] / "Dockerfile.tunnel"
CONTAINER_STATUS = "/tmp/deployer-tunnel.json"  # the image's status file (its /tmp is its own)


def container_command(instruction: str, status_file: Path) -> list[str]:
    """The Dockerfile's ENTRYPOINT (or HEALTHCHECK CMD) as run here: this checkout's deployer."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith(instruction))
    argv = json.loads(line[line.index("[") :])
    if instruction == "ENTRYPOINT":
        assert argv[:2] == ["/usr/bin/tini", "--"], (
            argv
        )  # PID 1 passes SIGTERM on and reaps orphans
        argv = argv[2:]
    assert argv[0] == "deployer" and argv[argv.index("--status-file") + 1] == CONTAINER_STATUS, argv
    local = [str(status_file) if a == CONTAINER_STATUS else a for a in argv[1:]]
    return [sys.executable, "-m", "deployer", *local]


def test_container_entrypoint_takes_autossh_variables_and_health_check_follows(
    jump: Jump, keepers: Callable[..., Keeper], target_port: int, tmp_path: Path
) -> None:
    """Dockerfile.tunnel's own ENTRYPOINT and HEALTHCHECK, with jnovack/autossh's variables."""
    port = free_port()
    jump.authorize([f"127.0.0.1:{port}:127.0.0.1:{target_port}"])
    known = tmp_path / "known_hosts"
    known.write_text(jump.known_hosts())
    env = {
        "SSH_KNOWN_HOSTS": "", "SSH_REMOTE_USER": jump.user, "SSH_REMOTE_HOST": jump.host,
        "SSH_REMOTE_PORT": str(jump.server.port), "SSH_TUNNEL_PORT": str(port), "SSH_TARGET_HOST": "127.0.0.1",
        "SSH_TARGET_PORT": str(target_port), "SSH_KEY_FILE": str(jump.keys / "tunnel"),
        "SSH_KNOWN_HOSTS_FILE": str(known),
    }  # fmt: skip
    keeper = keepers(jump, [], env=env, container=True)
    health = container_command("HEALTHCHECK", keeper.status_file)

    def healthy() -> int:
        return subprocess.run(health, capture_output=True, timeout=30).returncode

    keeper.wait_up()
    assert healthy() == 0
    assert jump.banner(port).startswith(b"SSH-2.0-OpenSSH")
    assert keeper.terminate(timeout=5) == 0  # docker stop: SIGTERM
    deadline = time.monotonic() + 3
    while jump.listening(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not jump.listening(port)
    assert healthy() == int(ExitCode.CONNECT)


def test_forward_specs_mean_the_same_to_openssh() -> None:
    """Our -R spec text is what OpenSSH's own parser reads from it."""
    for text in ("22022:localhost:22", "127.0.0.1:22022:localhost:22", "*:8080:10.0.0.5:80",
                 "[::1]:22022:[::1]:22", "localhost:22022:127.0.0.1:2222"):  # fmt: skip
        forward = parse_forwards([text])[0]
        done = subprocess.run(["ssh", "-F", "/dev/null", "-G", "-R", forward.spec, "h"], capture_output=True,
                              text=True, check=True)  # fmt: skip
        line = next(x for x in done.stdout.splitlines() if x.startswith("remoteforward "))
        listen, connect = line.split()[1:]
        assert listen.rsplit(":", 1)[-1] == str(forward.port)
        assert connect == f"[{forward.host}]:{forward.host_port}"
        if forward.bind is not None:
            assert listen == f"[{forward.bind}]:{forward.port}"


def require(problem: str | None) -> None:
    """Skip for a missing tool or right here; under CI=true fail instead (./dev setup installs it)."""
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} — ./dev setup installs what these tests need", pytrace=False)
        pytest.skip(problem)


def test_install_service_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    require(None if shutil.which("systemd-analyze") else "systemd-analyze is not installed")
    unit = tmp_path / "deployer-tunnel.service"
    done = subprocess.run([sys.executable, "-m", "deployer", "tunnel", "install-service", "tunnel@jump.example.com",
                           "-R", "22022:localhost:22", "--host-key-fingerprint", "SHA256:" + "A" * 43,
                           "--deployer", shutil.which("true") or "/bin/true", "--unit-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr
    assert "deployer-tunnel.service" not in verify.stderr  # no warning about our unit


# ---------------------------------------------------------------------------- network faults (namespaces)


@pytest.fixture(scope="module")
def ns_jump(topology: Any) -> Iterator[Jump]:
    """A jump sshd inside its own network namespace; ClientAlive 2x2 (reaps a dead session in ~11 s)."""
    require(available())
    ns = Netns.create("t")
    base = Path(tempfile.mkdtemp(prefix="deployer-tunnel-ns-"))
    base.chmod(0o755)
    server = SshServer("ns-jump", base / "jump", topology.user)
    try:
        server.prepare()
        config = server.home / "sshd_config"
        config.write_text(config.read_text().replace("ClientAliveInterval 5", "ClientAliveInterval 2")
                          .replace("ClientAliveCountMax 3", "ClientAliveCountMax 2"))  # fmt: skip
        ns.start_sshd(server)
        keys = _keys(base / "keys")
        topology.box.target.authorize((keys / "ci.pub").read_text().strip())
        yield Jump(server, ns.ns_ip, topology.user, keys, ns)
    finally:
        stop_sshd(server)
        ns.delete()


@pytest.fixture
def healed(ns_jump: Jump) -> Iterator[Jump]:
    """Whatever a test cuts is restored afterwards."""
    yield ns_jump
    assert ns_jump.ns is not None
    ns_jump.ns.heal()


def _back(
    jump: Jump, keeper: Keeper, port: int, since: float, timeout: float, connects: int = 1
) -> float:
    """Seconds from `since` until the tunnel works again (keeper up and a banner through the port)."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        status = keeper.status()
        if status.get("state") == "up" and status.get("connects", 0) >= connects and \
                jump.banner(port, timeout=2).startswith(b"SSH-2.0-OpenSSH"):  # fmt: skip
            return time.monotonic() - since
        time.sleep(0.2)
    raise AssertionError(f"not back within {timeout} s: {keeper.status()}\n{keeper.log()}")


def test_brief_link_cut(healed: Jump, keepers: Callable[..., Keeper], target_port: int) -> None:
    jump, port = healed, free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    keeper = keepers(jump, [spec])
    keeper.wait_up()
    assert jump.ns is not None
    jump.ns.cut()
    time.sleep(3)
    jump.ns.heal()
    assert _back(jump, keeper, port, time.monotonic(), 10) < 10


def test_link_cut_longer_than_dead_detection(
    healed: Jump, keepers: Callable[..., Keeper], target_port: int
) -> None:
    """The dead flow is noticed during the cut; --reclaim then cannot reach the jump host to free
    the old session's port: that must not switch reclaim off, and the tunnel is back after the cut."""
    jump, port = healed, free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec], reclaim=True)
    keeper = keepers(jump, [spec], "--reclaim")
    keeper.wait_up()
    assert jump.ns is not None
    jump.ns.cut()
    keeper.wait_for(lambda s: s["state"] != "up", timeout=10)
    time.sleep(12)  # longer than ssh's ConnectTimeout (10 s): the reclaim attempt fails meanwhile
    jump.ns.heal()
    assert _back(jump, keeper, port, time.monotonic(), 10, connects=2) < 10
    log = keeper.log()
    assert "could not ask the jump host to reclaim the port" in log, log
    assert "reclaim is not set up" not in log, log


def test_dropped_flow_with_clients_knocking_is_reclaimed(healed: Jump, keepers: Callable[..., Keeper],
                                                         target_port: int) -> None:  # fmt: skip
    """NAT lost the flow; CI keeps connecting to the stale port, so sshd never reaps the stale
    session by itself — --reclaim must free it: back within 10 s."""
    jump, port = healed, free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec], reclaim=True)
    keeper = keepers(jump, [spec], "--reclaim")
    keeper.wait_up()
    assert jump.ns is not None
    ssh = keeper.ssh_pids()[0]
    client = tcp_client_ports(ssh, jump.host, jump.server.port)
    assert len(client) == 1
    jump.ns.drop_flow(jump.server.port, client[0])
    dropped = time.monotonic()
    knocks = threading.Event()

    def knock() -> None:
        while not knocks.is_set():
            jump.banner(port, timeout=1)
            time.sleep(1)

    knocker = threading.Thread(target=knock, daemon=True)
    knocker.start()
    try:
        assert _back(jump, keeper, port, dropped, 10, connects=2) < 10
    finally:
        knocks.set()
        knocker.join(timeout=5)
    log = keeper.log()
    assert "reclaimed the port from our stale session" in log
    assert (
        "refused to listen" not in log
    )  # reclaimed right after the dead flow, not after a refusal


def test_dropped_flow_without_reclaim_is_back_after_the_jump_reaps(healed: Jump, keepers: Callable[..., Keeper],
                                                                    target_port: int) -> None:  # fmt: skip
    """Without --reclaim the port is back when sshd reaps the dead session (ClientAlive), + < 10 s."""
    jump, port = healed, free_port()
    spec = f"{port}:127.0.0.1:{target_port}"
    jump.authorize([spec])
    keeper = keepers(jump, [spec])
    keeper.wait_up()
    assert jump.ns is not None
    holder = jump.ns.listener_pids(port)
    client = tcp_client_ports(keeper.ssh_pids()[0], jump.host, jump.server.port)
    jump.ns.drop_flow(jump.server.port, client[0])
    dropped = time.monotonic()
    keeper.wait_for(lambda s: "refused to listen" in (s.get("last_error") or ""), timeout=15)
    while jump.ns.listener_pids(port) == holder and time.monotonic() - dropped < 40:  # no knocking
        time.sleep(0.2)
    freed = time.monotonic()
    assert freed - dropped < 40, "sshd did not reap the dead session"
    back = keeper.wait_up(timeout=10, connects=2)
    assert back and time.monotonic() - freed < 10
    assert jump.banner(port).startswith(b"SSH-2.0-OpenSSH")
