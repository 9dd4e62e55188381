"""The OpenSSH client against real sshd through jump + tunnel, side by side with paramiko.

Two targets stand behind one jump host here, each reached through its own ``ssh -R`` tunnel.
Both clients must deploy, refuse the same host keys and fail the same routes with the same
line and exit code; the OpenSSH one must log in to the jump host once for a whole fleet, keep
every secret out of files, command lines and environments, stop the command past its limit with
its process group, and leave no process, socket or file behind, even when deployer is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployer.errors import CommandTimeout, ConnectError, ExitCode
from deployer.remote.executor import KILL_AFTER
from deployer.sandbox.servers import (
    SshServer,
    free_port,
    stop_process_group,
    wait_for_banner,
    write_keypair,
)
from deployer.sandbox.topology import Sandbox
from deployer.ssh.access import Access, RouteRequest, build_routes, connect_options
from deployer.ssh.clients import AUTO_OPENSSH_BYTES, Session, open_client
from deployer.ssh.hostkeys import fingerprint
from deployer.ssh.keys import read_private_key_file
from tests.conftest import Run, run_cli
from tests.integration.helpers import (
    gone,
    live,
    make_app,
    one_error_line,
    releases,
    tools_without,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]

CLIENTS = ("openssh", "paramiko")


@dataclass
class Pair:
    """One jump host with two targets behind it (their own sshd, home and tunnel each)."""

    box: Sandbox  # the jump, the first target and its tunnel
    second: SshServer
    second_port: int  # the second target's tunnel port on the jump host
    homes: tuple[Path, Path]  # a relative --path lands here on each target
    tunnel: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        known = self.box.known_hosts() + "".join(
            f"[localhost]:{self.second_port} {key}\n" for key in self.second.host_keys
        )
        return {**self.box.environment(), "SSH_KNOWN_HOSTS": known, "CI": "true"}

    def route(self, *targets: int) -> list[str]:
        ports = (self.box.tunnel_port, self.second_port)
        user = self.box.user
        args = ["--jump", f"{user}@127.0.0.1:{self.box.jump.port}"]
        for n in targets or (0,):
            args += ["--to", f"{user}@localhost:{ports[n]}"]
        return args

    def jump_logins(self) -> int:
        """How often the CI key has logged in to the jump host so far (sshd's VERBOSE log)."""
        key = read_private_key_file(self.box.ci_key)
        seen = f"Accepted publickey for {self.box.user} from 127.0.0.1"
        ci = fingerprint(key.asbytes())
        return sum(
            1 for line in self.box.jump.log.read_text().splitlines() if seen in line and ci in line
        )

    def open_second_tunnel(self) -> None:
        known = self.box.root / "tunnel_known_hosts"  # the box's own tunnel wrote it
        argv = [
            "ssh", "-N", "-F", "/dev/null",
            "-R", f"127.0.0.1:{self.second_port}:127.0.0.1:{self.second.port}",
            "-p", str(self.box.jump.port), "-i", str(self.box.keys_dir / "tunnel_ed25519"),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ExitOnForwardFailure=yes", f"{self.box.user}@127.0.0.1",
        ]  # fmt: skip
        self.tunnel = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        assert wait_for_banner(self.second_port, time.monotonic() + 15), "second tunnel is down"


def forced_home(home: Path) -> str:
    """sshd_config that runs every command in home, so a relative --path differs per target."""
    return f'ForceCommand cd {home} && exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"'


@pytest.fixture(scope="module")
def pair(topology) -> Iterator[Pair]:
    base = Path(tempfile.mkdtemp(prefix="deployer-ssh-clients-"))
    base.chmod(0o755)
    homes = (topology.deploy_path("ssh-client-0"), topology.deploy_path("ssh-client-1"))
    for home in homes:
        home.mkdir()
        topology.give(home)
    box = Sandbox(base / "box", user=topology.user, target_config=forced_home(homes[0]))
    second = SshServer("target2", base / "target2", topology.user)
    pair = Pair(box, second, free_port(), homes)
    try:
        box.start()
        second.prepare(forced_home(homes[1]))
        second.authorize(box.ci_key.with_name("ci_ed25519.pub").read_text().strip())
        second.start()
        # the jump host lets the tunnel key listen on, and the CI key open, both tunnel ports
        ci = box.ci_key.with_name("ci_ed25519.pub").read_text().strip()
        tunnel = (box.keys_dir / "tunnel_ed25519.pub").read_text().strip()
        ports = (box.tunnel_port, pair.second_port)
        listen = ",".join(f'permitlisten="127.0.0.1:{p}"' for p in ports)
        opens = ",".join(f'permitopen="localhost:{p}"' for p in ports)
        box.jump.authorized_keys.write_text(
            f'restrict,port-forwarding,{listen},command="/bin/false" {tunnel}\n'
            f'restrict,port-forwarding,{opens},command="/bin/false" {ci}\n'
        )
        pair.open_second_tunnel()
        yield pair
    finally:
        stop_process_group(pair.tunnel)
        second.stop()
        box.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A short TMPDIR of its own: everything deployer keeps while it runs must land here."""
    folder = Path(tempfile.mkdtemp(prefix="d18-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def push(pair: Pair, app: Path, path: str, *extra: str, env: dict[str, str] | None = None,
         targets: tuple[int, ...] = (0,)) -> Run:  # fmt: skip
    return run_cli(
        ["push", str(app), *pair.route(*targets), "--path", path, "--json", *extra],
        env=env or pair.env,
    )


def document(run: Run) -> dict[str, object]:
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def clients(run: Run) -> list[str]:
    return [t["details"].get("ssh_client") for t in document(run)["targets"]]  # type: ignore[index, union-attr]


def ours(folder: Path) -> list[int]:
    """Processes whose command line names folder (the masters deployer started there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def secret_lines(pair: Pair) -> list[str]:
    """The lines of the private key's text that carry key material."""
    text = pair.box.ci_key.read_text()
    return [line for line in text.splitlines() if line and not line.startswith("-----")]


# ---------------------------------------------------------------------------- it deploys


def test_openssh_deploys_a_fleet_logging_in_to_the_jump_host_once(pair: Pair, tmp_path) -> None:
    before = pair.jump_logins()
    run = push(pair, make_app(tmp_path, "one"), "fleet", "--ssh-client", "openssh", targets=(0, 1))
    assert run.status == 0, run.stderr
    assert clients(run) == ["openssh", "openssh"]
    for home in pair.homes:
        assert (
            live(home / "fleet") and (home / "fleet" / "current" / "VERSION").read_text() == "one\n"
        )
    assert pair.jump_logins() - before == 1  # one jump master serves both targets
    before = pair.jump_logins()
    run = push(pair, make_app(tmp_path, "two"), "fleet", "--ssh-client", "paramiko", targets=(0, 1))
    assert run.status == 0, run.stderr
    assert clients(run) == ["paramiko", "paramiko"]
    assert pair.jump_logins() - before == 2  # paramiko: one connection per target


def big_app(tmp_path: Path, version: str) -> Path:
    """An artifact large enough for auto to weigh OpenSSH for one target (zeros: quick to send)."""
    app = make_app(tmp_path, version)
    with (app / "blob.bin").open("wb") as blob:
        blob.truncate(AUTO_OPENSSH_BYTES)
    return app


def test_auto_takes_openssh_for_a_fleet_and_paramiko_for_one_small_artifact(
    pair: Pair, tmp_path
) -> None:
    fleet = push(pair, make_app(tmp_path, "fleet"), "auto-fleet", targets=(0, 1))
    assert fleet.status == 0, fleet.stderr
    assert clients(fleet) == ["openssh", "openssh"]
    one = push(pair, make_app(tmp_path, "one"), "auto-one")
    assert one.status == 0, one.stderr
    assert clients(one) == ["paramiko"]  # OpenSSH's longer login would not pay back


@contextlib.contextmanager
def relay(pair: Pair, rtt_ms: int) -> Iterator[int]:
    """A port in front of the jump host that delays every byte by half of rtt_ms each way."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "relay.py"), "relay", "--forward",
         f"127.0.0.1:{port}=127.0.0.1:{pair.box.jump.port}", "--rtt-ms", str(rtt_ms)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for_banner(port, time.monotonic() + 15), "the relay did not start"
        yield port
    finally:
        stop_process_group(proc)


@pytest.mark.parametrize(("rtt_ms", "expected"), [(0, "openssh"), (80, "paramiko")])
def test_auto_takes_openssh_for_a_large_artifact_only_over_a_fast_link(
    pair: Pair, tmp_path, rtt_ms: int, expected: str
) -> None:
    app = big_app(tmp_path, f"rtt{rtt_ms}")
    with relay(pair, rtt_ms) as port:
        env = pair.env
        env["SSH_KNOWN_HOSTS"] += "".join(
            f"[127.0.0.1]:{port} {key}\n" for key in pair.box.jump.host_keys
        )
        route = ["--jump", f"{pair.box.user}@127.0.0.1:{port}", "--to",
                 f"{pair.box.user}@localhost:{pair.box.tunnel_port}"]  # fmt: skip
        run = run_cli(["push", str(app), *route, "--path", f"link-{rtt_ms}", "--json"], env=env,
                      timeout=180)  # fmt: skip
    assert run.status == 0, run.stderr
    assert clients(run) == [expected]
    assert (
        pair.homes[0] / f"link-{rtt_ms}" / "current" / "blob.bin"
    ).stat().st_size == AUTO_OPENSSH_BYTES


def test_without_ssh_auto_falls_back_to_paramiko_and_openssh_is_refused(
    pair: Pair, tmp_path
) -> None:
    path = tools_without("ssh", tmp_path / "bin")
    env = {**pair.env, "PATH": str(path)}
    run = push(pair, make_app(tmp_path, "nossh"), "nossh", env=env, targets=(0, 1))
    assert run.status == 0, run.stderr
    assert clients(run) == ["paramiko", "paramiko"]
    assert "the SSH client is paramiko: no ssh on the PATH" in run.stderr
    refused = push(pair, make_app(tmp_path, "forced"), "forced", "--ssh-client", "openssh", env=env)
    assert refused.status == ExitCode.USAGE
    assert one_error_line(refused.stderr) == (
        "deployer: error: --ssh-client openssh: no ssh on the PATH — install OpenSSH's client 8.5"
        " or newer (openssh-client), or use --ssh-client auto"
    )
    assert not (pair.homes[0] / "forced").exists()


# ---------------------------------------------------------------------------- the same refusals


def known_hosts_with(pair: Pair, hop: str, problem: str, tmp_path: Path) -> str:
    """SSH_KNOWN_HOSTS where one hop's key is missing or another key stands for it."""
    prefix = (
        f"[127.0.0.1]:{pair.box.jump.port} "
        if hop == "jump"
        else f"[localhost]:{pair.box.tunnel_port} "
    )
    server = pair.box.jump if hop == "jump" else pair.box.target
    lines = pair.env["SSH_KNOWN_HOSTS"].splitlines()
    if problem == "unknown":
        lines = [line for line in lines if not line.startswith(prefix)]
    else:
        fake = write_keypair(tmp_path / f"fake-{hop}", "ed25519").split()
        lines = [line.replace(server.host_keys[0], f"{fake[0]} {fake[1]}") for line in lines]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("problem", ["unknown", "changed"])
@pytest.mark.parametrize("hop", ["jump", "target"])
def test_host_keys_are_refused_on_every_hop_exactly_as_with_paramiko(
    pair: Pair, tmp_path, hop: str, problem: str
) -> None:
    env = {**pair.env, "SSH_KNOWN_HOSTS": known_hosts_with(pair, hop, problem, tmp_path)}
    app = make_app(tmp_path, "hk")
    lines = {}
    for client in CLIENTS:
        run = push(pair, app, f"hk-{hop}-{problem}", "--ssh-client", client, env=env)
        assert run.status == ExitCode.HOST_KEY, run.stderr
        lines[client] = one_error_line(run.stderr)
    assert lines["openssh"] == lines["paramiko"]
    assert ("CHANGED" if problem == "changed" else "is not in SSH_KNOWN_HOSTS") in lines["openssh"]
    assert not (pair.homes[0] / f"hk-{hop}-{problem}").exists()  # nothing reached the target


def test_accept_new_host_keys_accepts_and_says_the_same_on_both(pair: Pair, tmp_path) -> None:
    env = {**pair.env, "SSH_KNOWN_HOSTS": ""}
    notices = {}
    for client in CLIENTS:
        run = push(pair, make_app(tmp_path, client), f"tofu-{client}", "--ssh-client", client,
                   "--accept-new-host-keys", env=env)  # fmt: skip
        assert run.status == 0, run.stderr
        notices[client] = [
            line.split("Z ", 1)[1]
            for line in run.stderr.splitlines()
            if "accepted a new host key" in line
        ]
    assert len(notices["openssh"]) == 2 and notices["openssh"] == notices["paramiko"]


def failing_routes(pair: Pair) -> dict[str, list[str]]:
    user, jump = pair.box.user, f"{pair.box.user}@127.0.0.1:{pair.box.jump.port}"
    return {
        "wrong user": ["--jump", jump, "--to", f"nobody-here@localhost:{pair.box.tunnel_port}"],
        "forward refused": ["--jump", jump, "--to", f"{user}@localhost:{free_port()}"],
        "jump refuses connections": [
            "--jump",
            f"{user}@127.0.0.1:{free_port()}",
            "--to",
            f"{user}@localhost:{pair.box.tunnel_port}",
        ],
        "jump user": [
            "--jump",
            f"nobody-here@127.0.0.1:{pair.box.jump.port}",
            "--to",
            f"{user}@localhost:{pair.box.tunnel_port}",
        ],
    }


@pytest.mark.parametrize(
    "case", ["wrong user", "forward refused", "jump refuses connections", "jump user"]
)
def test_route_and_login_failures_read_the_same_on_both(pair: Pair, tmp_path, case: str) -> None:
    route = failing_routes(pair)[case]
    results = {}
    for client in CLIENTS:
        run = run_cli(["push", str(make_app(tmp_path, client)), *route, "--path", "failing",
                       "--ssh-client", client], env=pair.env)  # fmt: skip
        results[client] = (run.status, one_error_line(run.stderr))
    assert results["openssh"] == results["paramiko"]
    expected = ExitCode.AUTH if "user" in case else ExitCode.CONNECT
    assert results["openssh"][0] == expected


def test_a_tunnel_that_is_down_reads_the_same_on_both(pair: Pair, tmp_path) -> None:
    stop_process_group(pair.tunnel)
    try:
        results = {}
        for client in CLIENTS:
            run = run_cli(["push", str(make_app(tmp_path, client)), *pair.route(1), "--path", "down",
                           "--ssh-client", client], env=pair.env)  # fmt: skip
            results[client] = (run.status, one_error_line(run.stderr))
    finally:
        pair.open_second_tunnel()
    assert results["openssh"] == results["paramiko"]
    assert (
        results["openssh"][0] == ExitCode.CONNECT and "is the tunnel up?" in results["openssh"][1]
    )


def test_a_silent_jump_host_fails_the_handshake_within_the_timeout_on_both(
    pair: Pair, tmp_path
) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        route = ["--jump", f"{pair.box.user}@127.0.0.1:{port}", "--to", "x@localhost:22022",
                 "--connect-timeout", "2"]  # fmt: skip
        for client in CLIENTS:
            started = time.monotonic()
            run = run_cli(["push", str(make_app(tmp_path, client)), *route, "--path", "silent",
                           "--ssh-client", client], env=pair.env)  # fmt: skip
            assert time.monotonic() - started < 15
            assert run.status == ExitCode.CONNECT
            line = one_error_line(run.stderr)
            assert line.startswith(
                f"deployer: error: jump host {pair.box.user}@127.0.0.1:{port} closed the connection"
                " during the SSH handshake: "
            ) and line.endswith(" — is this port an SSH server?")


# ---------------------------------------------------------------------------- nothing left, nothing leaked


def start_push(
    pair: Pair, app: Path, path: str, tmp: Path, *extra: str, targets: tuple[int, ...] = (0, 1)
) -> subprocess.Popen[str]:
    env = {**os.environ, **pair.env, "TMPDIR": str(tmp)}
    argv = [sys.executable, "-m", "deployer", "push", str(app), *pair.route(*targets), "--path", path,
            "--ssh-client", "openssh", *extra]  # fmt: skip
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until(check, seconds: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def hook_waiting_for(release: Path, started: str) -> str:
    """A before hook that says it runs, then waits (bounded) for release to appear."""
    return f"touch ../../{started}; i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"


def test_no_secret_in_files_command_lines_or_environments_and_nothing_left(
    pair: Pair, tmp_path, private_tmp: Path
) -> None:
    release = tmp_path / "go"
    proc = start_push(pair, make_app(tmp_path, "s"), "secret", private_tmp,
                      "--before", hook_waiting_for(release, "started"))  # fmt: skip
    try:
        wait_until(lambda: all((home / "secret" / "started").exists() for home in pair.homes))
        masters = ours(private_tmp)
        assert len(masters) == 3  # the jump's, and one per target
        material = secret_lines(pair)
        for pid in masters:
            argv = (Path(f"/proc/{pid}") / "cmdline").read_bytes().decode()
            environ = (Path(f"/proc/{pid}") / "environ").read_bytes().decode()
            assert not any(line in argv or line in environ for line in material)
            assert "SSH_PRIVATE_KEY" not in environ and "PRIVATE KEY" not in environ
        files = [p for p in private_tmp.rglob("*") if p.is_file() and not p.is_symlink()]
        assert files  # the masters' logs are there: the check below looks at something
        for file in files:
            if file.is_fifo() or file.is_socket():
                continue
            text = file.read_text(errors="replace")
            assert not any(line in text for line in material), file
        release.touch()
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert list(private_tmp.iterdir()) == []  # agents, sockets, FIFOs, logs: all gone
    for pid in masters:
        assert gone(pid, 5)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_deployer_leaves_no_process_and_no_control_socket(
    pair: Pair, tmp_path, private_tmp: Path, how: signal.Signals
) -> None:
    release = tmp_path / "never"
    path = f"stopped-{how.name.lower()}"
    # SIGTERM: one target, whose hook runs on the main thread and is interrupted there (a
    # fleet's staging threads finish their hooks first, with either client)
    targets = (0,) if how == signal.SIGTERM else (0, 1)
    homes = [pair.homes[n] for n in targets]
    proc = start_push(pair, make_app(tmp_path, "k"), path, private_tmp,
                      "--before", hook_waiting_for(release, "started"), targets=targets)  # fmt: skip
    try:
        wait_until(lambda: all((home / path / "started").exists() for home in homes))
        masters = ours(private_tmp)
        assert len(masters) == 1 + len(targets)  # the jump host's, and one per target
        proc.send_signal(how)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    for pid in masters:  # SIGKILL too: each master has a parent death signal
        assert gone(pid, 10), f"master {pid} outlived deployer"
    left = [p.name for p in private_tmp.rglob("*") if p.is_socket()]
    # ssh removes its control socket when it ends; after SIGKILL only the agent's socket node is
    # left, which held nothing (the key was in the killed process's memory)
    assert left == ([] if how == signal.SIGTERM else ["agent.sock"])
    if how == signal.SIGTERM:
        assert list(private_tmp.iterdir()) == []
        for home in homes:  # the interrupted deploy cleaned up on the target
            assert not (home / path / ".deployer" / "lock").exists()
            assert releases(home / path) == []
    for file in private_tmp.rglob("*"):
        if file.is_file() and not file.is_fifo():
            assert not any(line in file.read_text(errors="replace") for line in secret_lines(pair))


@pytest.fixture
def session(pair: Pair) -> Iterator[Session]:
    """An OpenSSH session with the first target, opened through the library as push opens it."""
    env = {**os.environ, **pair.env}
    access = Access(env=env, local=False)
    route = build_routes(RouteRequest(to=(pair.route(0)[3],), jump=(pair.route(0)[1],)), access)[0]
    client = open_client("openssh", env, lambda line: None)
    try:
        yield client.connect(route, connect_options(route, access, lambda line: None))
    finally:
        client.close()


def test_a_command_past_its_limit_is_stopped_with_its_whole_process_group(
    session: Session, pair: Pair
) -> None:
    pidfile = pair.homes[0] / "child.pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 2 s"):
        session.run(f"sleep 120 & echo $! > {pidfile}; sleep 120", timeout=2)
    assert time.monotonic() - started < 2 + KILL_AFTER + 5
    assert gone(int(pidfile.read_text())), "the command's child outlived its time limit"
    assert session.run("echo still here").stdout == b"still here\n"  # the connection is fine


def test_a_master_that_dies_is_a_lost_connection_and_the_next_connect_starts_anew(
    pair: Pair, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # where the client keeps its files
    env = {**os.environ, **pair.env}
    access = Access(env=env, local=False)
    route = build_routes(RouteRequest(to=(pair.route(0)[3],), jump=(pair.route(0)[1],)), access)[0]
    options = connect_options(route, access, lambda line: None)
    client = open_client("openssh", env, lambda line: None)
    try:
        first = client.connect(route, options)
        assert first.run("echo one").stdout == b"one\n"
        target_master = max(ours(private_tmp))  # started last
        os.kill(target_master, signal.SIGKILL)
        with pytest.raises(ConnectError, match="lost the connection to"):
            first.run("sleep 5")
        again = client.connect(route, options)
        assert again.run("echo two").stdout == b"two\n"
        assert target_master not in ours(private_tmp)
    finally:
        client.close()
    assert list(private_tmp.iterdir()) == []
