#!/usr/bin/env python3
"""Benchmark `deployer tunnel`: throughput against plain `ssh -R`, and recovery from faults against autossh.

    sudo python bench/tunnel.py                 # everything, 3 runs per fault (about 35 minutes)
    sudo python bench/tunnel.py throughput      # only the throughput table
    sudo python bench/tunnel.py faults --quick  # 20 s instead of 60 s cut, 60 s timeout, 1 run (~9 min)
    sudo python bench/tunnel.py faults --only "drop the live flow" --engines "deployer --reclaim"
    ... --json bench/results/tunnel.json --markdown bench/results/tunnel.md

Throughput: bytes sent by a client on the jump host into the tunnel port, through the tunnel, into a
sink on the intranet side (the forward's target), for plain `ssh -N -R`, `deployer tunnel` and a
paramiko reverse forward (the engine deployer did not choose), alternating, median of the runs;
and the CPU time the intranet side spends per GiB (ssh, or deployer + its ssh, or the paramiko
process). The ssh engines use OpenSSH's default cipher; paramiko its fastest (aes128-gcm).

Faults: the jump host's sshd runs in a network namespace (ClientAliveInterval 5, CountMax 3); each
engine keeps `-R PORT:127.0.0.1:<target sshd>`; after each fault a client on the jump host
connects to the tunnel port twice a second until it gets the target's SSH banner. The time is
counted from the end of the fault (the flow drops are permanent: from the drop). In "idle" rows
nobody connects to the port until its holder changed, since connections to a stale listener keep
sshd from ever reaping it. SIGTERM rows: seconds until the keeper exited / until the jump host
stopped listening. Each row is checked against the issue's goals: back within 10 s of the port
being free (at the fault's end, or when the jump host reaped the stale session), within 10 s
with --reclaim, and exit plus port released within 5 s after SIGTERM. autossh runs with the
usual settings: -M 0 -o ServerAliveInterval=30 -o ServerAliveCountMax=3 -o ExitOnForwardFailure=yes,
and AUTOSSH_GATETIME=0 (without it autossh exits for good when ssh fails within 30 s of starting).

Needs root (namespaces, nft), OpenSSH's sshd, and autossh (apt-get install -y autossh).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from netns import Netns, available, children, kill_sessions, stop_sshd, tcp_client_ports  # noqa: E402

from deployer.sandbox.topology import SshServer, free_port, write_keypair  # noqa: E402
from deployer.ssh.authorized_keys import render_authorized_keys  # noqa: E402
from deployer.ssh.forwards import parse_forwards  # noqa: E402

LOGIN = "deployer-test"


def login_user() -> str:
    """Root runs sshd and logs in as an unprivileged user, like the test suite."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(LOGIN)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/sh", LOGIN], check=True
        )
    subprocess.run(["usermod", "-p", "*", LOGIN], check=True)
    return LOGIN


# ---------------------------------------------------------------------------- common set-up


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
        return self.base / "tunnel"

    @property
    def endpoint(self) -> str:
        return f"{self.user}@{self.host}:{self.jump.port}"

    def known_hosts(self) -> str:
        return "".join(f"[{self.host}]:{self.jump.port} {k}\n" for k in self.jump.host_keys)

    def known_hosts_file(self) -> Path:
        path = self.base / "known_hosts"
        path.write_text(self.known_hosts())
        return path

    def banner(self, port: int, timeout: float = 2.0) -> bytes:
        if self.ns is not None:
            return self.ns.banner(port, timeout)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(256).split(b"\n")[0].rstrip(b"\r")
        except OSError:
            return b""

    def stop(self) -> None:
        stop_sshd(self.jump)
        self.target.stop()
        if self.ns is not None:
            self.ns.delete()


def make_lab(in_namespace: bool) -> Lab:
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
        raise
    return Lab(base, user, jump, target, host, ns)


# ---------------------------------------------------------------------------- engines


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
    argv = ["ssh", "-N", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", f"UserKnownHostsFile={lab.known_hosts_file()}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-i", str(lab.key), "-p", str(lab.jump.port), "-R", spec,
            f"{lab.user}@{lab.host}"]  # fmt: skip
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    return Tunnel(process, "ssh -R")


def start_autossh(lab: Lab, spec: str) -> Tunnel:
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
    argv = [sys.executable, "-c", PARAMIKO_FORWARDER, lab.host, str(lab.jump.port), lab.user, str(lab.key),
            str(port), str(target)]  # fmt: skip
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    return Tunnel(process, "paramiko")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- throughput

SENDER = """
import socket, sys, time
port, size = int(sys.argv[1]), int(sys.argv[2])
buf = b"x" * (1 << 20)
s = socket.create_connection(("127.0.0.1", port))
start = time.monotonic()
sent = 0
while sent < size:
    s.sendall(buf)
    sent += len(buf)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(start)
"""


class Sink:
    """The forward's target: counts bytes per connection and notes when each one ended."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.done: list[tuple[int, float]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        total = 0
        with conn:
            while data := conn.recv(1 << 20):
                total += len(data)
            if total:  # the keeper's end-to-end checks connect too, and send nothing
                self.done.append((total, time.monotonic()))


def send_through(lab: Lab, sink: Sink, port: int, size: int) -> float:
    """MB/s for size bytes sent from the jump host's side into the tunnel port."""
    count = len(sink.done)
    argv = [sys.executable, "-c", SENDER, str(port), str(size)]
    if lab.ns is not None:
        argv = lab.ns.argv(*argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    start = float(done.stdout.strip())
    deadline = time.monotonic() + 60
    while len(sink.done) == count and time.monotonic() < deadline:
        time.sleep(0.01)
    received, end = sink.done[-1]
    if received != size:
        raise RuntimeError(f"sent {size} bytes, the sink got {received}")
    return size / (end - start) / 1e6


def wait_banner(lab: Lab, port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.banner(port, 1.0):
            return True
        time.sleep(0.2)
    return False


def wait_listening(lab: Lab, port: int, timeout: float = 20.0) -> None:
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


def throughput(
    size_mb: int, runs: int, in_namespace: bool, rate: str | None = None
) -> list[tuple[str, list[float], list[float]]]:
    """Per engine: MB/s of each run, and intranet-side CPU seconds per GiB of each run."""
    lab = make_lab(in_namespace)
    if rate is not None and lab.ns is not None:  # the jump host's uplink towards the intranet side
        lab.ns.run("tc", "qdisc", "add", "dev", lab.ns.ns_if, "root", "tbf", "rate", rate, "burst", "256kb",
                   "latency", "50ms")  # fmt: skip
    sink = Sink()
    names = ("ssh -R", "deployer tunnel", "paramiko forward")
    speed: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    try:
        size = size_mb * 1024 * 1024
        spec_port = {name: free_port() for name in names}
        specs = [f"{port}:127.0.0.1:{sink.port}" for port in spec_port.values()]
        text = render_authorized_keys(parse_forwards(specs), tunnel_key=(lab.base / "tunnel.pub").read_text().strip(),
                                      ci_key="x", reclaim=False)  # one key line allowing every port  # fmt: skip
        lab.jump.authorized_keys.write_text(
            next(x for x in text.splitlines() if x.startswith("restrict,port")) + "\n"
        )
        for run in range(runs):
            order = names if run % 2 == 0 else tuple(reversed(names))  # no engine always goes first
            for name in order:
                port = spec_port[name]
                spec = f"{port}:127.0.0.1:{sink.port}"
                if name == "paramiko forward":
                    engine = start_paramiko(lab, port, sink.port)
                elif name == "ssh -R":
                    engine = start_plain_ssh(lab, spec)
                else:
                    engine = start_deployer(lab, spec)
                try:
                    wait_listening(lab, port)
                    time.sleep(
                        3 if name == "deployer tunnel" else 0.5
                    )  # let its end-to-end check finish
                    pids = [engine.process.pid, *children(engine.process.pid)]
                    before = cpu_seconds(pids)
                    speed[name].append(send_through(lab, sink, port, size))
                    cpu[name].append((cpu_seconds(pids) - before) / (size / 2**30))
                finally:
                    engine.stop()
                time.sleep(0.5)
    finally:
        sink.sock.close()
        lab.stop()
    return [(name, speed[name], cpu[name]) for name in names]


# ---------------------------------------------------------------------------- faults

CLIENT_ALIVE = (5, 3)  # the jump host's ClientAliveInterval, ClientAliveCountMax (sandbox defaults)
BACK_GOAL = 10.0  # back within this many seconds once the port is free (or with --reclaim)
SIGTERM_GOAL = 5.0  # "exit within a few seconds and release the port"


@dataclass
class Fault:
    name: str
    inject: Callable[[Lab, Tunnel, int], float]  # returns the time the fault ended
    idle: bool = False  # nobody connects to the port until its holder changed


@dataclass
class Result:
    """One measurement. For SIGTERM: back = seconds to exit, freed = seconds until the port was released."""

    fault: str
    engine: str
    run: int
    back: (
        float | None
    )  # seconds from the end of the fault to a working tunnel; None: not within the timeout
    freed: float | None  # seconds from the end of the fault until the old holder left the port
    goal: (
        float | None
    )  # the limit this row must meet; None: no keeper can (the port is never freed)
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        if self.fault == SIGTERM:
            return self.back is not None and self.back <= self.goal and self.freed is not None \
                and self.freed <= self.goal  # fmt: skip
        return self.back is not None and self.back <= self.goal


def _kill_session(lab: Lab, tunnel: Tunnel, port: int) -> float:
    kill_sessions(lab.jump)
    return time.monotonic()


def _restart(lab: Lab, tunnel: Tunnel, port: int) -> float:
    stop_sshd(lab.jump)
    time.sleep(2)
    assert lab.ns is not None
    lab.ns.start_sshd(lab.jump)
    return time.monotonic()


def _cut(seconds: float) -> Callable[[Lab, Tunnel, int], float]:
    def inject(lab: Lab, tunnel: Tunnel, port: int) -> float:
        assert lab.ns is not None
        lab.ns.cut()
        time.sleep(seconds)
        lab.ns.heal()
        return time.monotonic()

    return inject


def _drop_flow(lab: Lab, tunnel: Tunnel, port: int) -> float:
    assert lab.ns is not None
    ssh = tunnel.ssh_pid()
    if ssh is None:
        raise RuntimeError("no ssh process to drop the flow of")
    client = tcp_client_ports(ssh, lab.host, lab.jump.port)
    if len(client) != 1:
        raise RuntimeError(f"expected one connection of ssh {ssh} to the jump host, found {client}")
    lab.ns.drop_flow(lab.jump.port, client[0])
    return time.monotonic()


SIGTERM = "SIGTERM: exit / port released"


def goal_for(fault: str, engine: str, freed: float | None, back: float | None) -> float | None:
    """The issue's goal for this row (in seconds from the end of the fault)."""
    if fault == SIGTERM:
        return SIGTERM_GOAL
    if engine.endswith("--reclaim"):
        return BACK_GOAL
    if freed is None:
        # the old holder never left: fine if the tunnel survived, hopeless for any keeper otherwise
        return BACK_GOAL if back is not None else None
    return freed + BACK_GOAL  # the stale-port case: ClientAlive reaping (as measured) + 10 s


def authorize(lab: Lab, spec: str) -> None:
    text = render_authorized_keys(parse_forwards([spec]), tunnel_key=(lab.base / "tunnel.pub").read_text().strip(),
                                  ci_key="x", reclaim=True)  # fmt: skip
    lab.jump.authorized_keys.write_text(
        next(x for x in text.splitlines() if x.startswith("restrict,port")) + "\n"
    )


def start_engine(lab: Lab, engine: str, spec: str) -> Tunnel:
    if engine == "autossh":
        return start_autossh(lab, spec)
    return start_deployer(lab, spec, *engine.split()[1:])


def measure(lab: Lab, fault: Fault, engine: str, timeout: float, run: int) -> Result:
    """Start engine, let it come up, inject the fault, time the recovery."""
    port = free_port()
    spec = f"{port}:127.0.0.1:{lab.target.port}"
    authorize(lab, spec)
    tunnel = start_engine(lab, engine, spec)
    assert lab.ns is not None
    try:
        if not wait_banner(lab, port, 30):
            raise RuntimeError(f"{engine} did not come up")
        time.sleep(1)
        holder = lab.ns.listener_pids(port)
        ended = fault.inject(lab, tunnel, port)
        freed: float | None = None
        back: float | None = None
        while time.monotonic() - ended < timeout:
            now_holder = lab.ns.listener_pids(port)
            if freed is None and now_holder != holder:
                freed = time.monotonic() - ended
            if (not fault.idle or now_holder != holder) and lab.banner(port, 1.0).startswith(
                b"SSH-2.0-"
            ):
                back = time.monotonic() - ended
                break
            time.sleep(0.2)
        return Result(
            fault.name, engine, run, back, freed, goal_for(fault.name, engine, freed, back)
        )
    finally:
        tunnel.stop()
        lab.ns.heal()
        kill_sessions(lab.jump)  # no stale session of this row outlives it
        time.sleep(1)


def measure_sigterm(lab: Lab, engine: str, run: int) -> Result:
    """SIGTERM to the keeper: seconds until it exited, and until the jump host stopped listening."""
    port = free_port()
    spec = f"{port}:127.0.0.1:{lab.target.port}"
    authorize(lab, spec)
    tunnel = start_engine(lab, engine, spec)
    assert lab.ns is not None
    try:
        if not wait_banner(lab, port, 30):
            raise RuntimeError(f"{engine} did not come up")
        time.sleep(1)
        ssh = tunnel.ssh_pid()
        if not lab.ns.listener_pids(port):
            raise RuntimeError(f"{engine} is up but nothing listens on the jump host's port {port}")
        sent = time.monotonic()
        tunnel.process.send_signal(signal.SIGTERM)
        exited: float | None = None
        released: float | None = None
        while time.monotonic() - sent < 20 and (exited is None or released is None):
            if exited is None and tunnel.process.poll() is not None:
                exited = time.monotonic() - sent
            if released is None and not lab.ns.listener_pids(port):
                released = time.monotonic() - sent
            time.sleep(0.02)
        orphan = ssh is not None and Path(f"/proc/{ssh}").exists() and \
            "zombie" not in Path(f"/proc/{ssh}/status").read_text()  # fmt: skip
        note = f"exit code {tunnel.process.returncode}" + (
            "; its ssh kept running" if orphan else ""
        )
        return Result(SIGTERM, engine, run, exited, released, SIGTERM_GOAL, note)
    finally:
        tunnel.stop()
        kill_sessions(lab.jump)
        time.sleep(1)


def fault_plan(quick: bool) -> list[Fault]:
    long_cut = 20 if quick else 60
    return [
        Fault("kill the jump-side session", _kill_session),
        Fault("restart the jump's sshd (2 s down)", _restart),
        Fault("cut the link 5 s", _cut(5)),
        Fault(f"cut the link {long_cut} s", _cut(long_cut)),
        Fault("drop the live flow, clients knocking", _drop_flow),
        Fault("stale port: drop the live flow, idle", _drop_flow, idle=True),
    ]


def faults(
    quick: bool, engines: list[str], repeat: int, timeout: float, only: str | None = None
) -> list[Result]:
    """Every fault against every engine, repeat times (a row that did not come back is not repeated)."""
    lab = make_lab(True)
    results: list[Result] = []
    try:
        plan: list[Fault | None] = [*fault_plan(quick), None]  # None: SIGTERM
        for fault in plan:
            if only and only not in (SIGTERM if fault is None else fault.name):
                continue
            for engine in engines:
                for run in range(1, repeat + 1):
                    if fault is None:
                        result = measure_sigterm(lab, engine, run)
                    else:
                        result = measure(lab, fault, engine, timeout, run)
                    results.append(result)
                    print(
                        f"  {result.fault:42} {engine:20} #{run} {cell(result)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if result.back is None:
                        break  # not back within the timeout: once is enough
    finally:
        lab.stop()
    return results


def cell(result: Result) -> str:
    if result.fault == SIGTERM:
        exited = "not exited" if result.back is None else f"{result.back:.2f}"
        released = "held" if result.freed is None else f"{result.freed:.2f}"
        return f"{exited} / {released}"
    return "not back" if result.back is None else f"{result.back:.1f}"


def fault_table(results: list[Result], engines: list[str], timeout: float) -> list[str]:
    """Markdown table: per fault and engine, every run's seconds; then whether the goal was met every time."""
    head = ["fault", *engines]
    rows = []
    for fault in dict.fromkeys(r.fault for r in results):
        row = [fault]
        for engine in engines:
            runs = [r for r in results if r.fault == fault and r.engine == engine]
            text = ", ".join(
                cell(r) if r.back is not None or r.fault == SIGTERM else f">{timeout:g}"
                for r in runs
            )
            freed = [r.freed for r in runs if r.freed is not None and r.fault != SIGTERM]
            if fault.startswith("stale port") and freed:
                text += f" (port freed after {', '.join(f'{f:.0f}' for f in freed)})"
            row.append(text)
        rows.append(row)
    widths = [max(len(x) for x in column) for column in zip(head, *rows, strict=True)]
    lines = ["| " + " | ".join(x.ljust(w) for x, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]  # fmt: skip
    lines += [
        "| " + " | ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return lines


def goal_lines(results: list[Result]) -> list[str]:
    """One line per deployer fault and engine: the goal, and in how many runs it was met."""
    lines = []
    for fault in dict.fromkeys(r.fault for r in results):
        for engine in dict.fromkeys(r.engine for r in results):
            runs = [r for r in results if r.fault == fault and r.engine == engine]
            if not runs or not engine.startswith("deployer"):
                continue
            verdicts = [r.met for r in runs]
            if all(v is None for v in verdicts):
                lines.append(
                    f"- {fault}, {engine}: no goal applies — the jump host never frees the port"
                    " (only --reclaim can)"
                )
                continue
            if fault == SIGTERM:
                wanted = f"exit and port released within {SIGTERM_GOAL:g} s"
            elif engine.endswith("--reclaim"):
                wanted = f"back within {BACK_GOAL:g} s"
            else:
                wanted = f"back within {BACK_GOAL:g} s of the port being free"
            met = sum(v is True for v in verdicts)
            verdict = "PASS" if met == len(runs) else "FAIL"
            lines.append(f"- {fault}, {engine}: {wanted} — {verdict} ({met} of {len(runs)} runs)")
    return lines


# ---------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    """The software the figures depend on."""
    found = {"ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()}
    if shutil.which("autossh"):
        found["autossh"] = subprocess.run(
            ["autossh", "-V"], capture_output=True, text=True
        ).stdout.strip()
    found["cpus"] = str(os.cpu_count())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("all", "throughput", "faults"), default="all")
    parser.add_argument(
        "--quick", action="store_true", help="20 s instead of 60 s cut; 60 s timeout; one run"
    )
    parser.add_argument("--size-mb", type=int, default=512, help="bytes per throughput run (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="throughput runs per engine")
    parser.add_argument(
        "--repeat", type=int, help="runs of every fault per engine (default 3; --quick 1)"
    )
    parser.add_argument("--only", metavar="TEXT", help="only the faults whose name contains TEXT")
    parser.add_argument(
        "--engines", help="comma-separated (default: deployer,deployer --reclaim,autossh)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the tables and the goals here")
    args = parser.parse_args()
    # stopped with SIGTERM: still run the clean-ups (servers, namespace) on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = available()
    if problem:
        sys.exit(f"bench/tunnel.py: {problem}")
    command = "python bench/tunnel.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])  # as root
    report: dict[str, object] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions(),
    }
    software = "; ".join(f"{k}: {v}" for k, v in versions().items())
    markdown = [
        f"# deployer tunnel benchmark\n\nCommand: `{command}` ({report['date']}; {software})\n"
    ]
    if args.what in ("all", "throughput"):
        title = f"Throughput through the tunnel ({args.size_mb} MiB per run, median of {args.runs}, same run)"
        print(f"\n{title}:")
        markdown.append(f"## {title}\n")
        paths = [("loopback", False, None, args.size_mb), ("veth between namespaces", True, None, args.size_mb),
                 ("veth capped at 200 Mbit/s (tbf)", True, "200mbit", max(16, args.size_mb // 8))]  # fmt: skip
        table = [
            "| path | engine | MB/s (median) | vs ssh -R | CPU s/GiB | runs (MB/s) |",
            "|---|---|---|---|---|---|",
        ]
        measured = []
        for label, in_ns, rate, size in paths:
            rows = throughput(size, args.runs, in_ns, rate)
            plain = rows[0][1]
            print(f"\n  path: {label}, {size} MiB per run")
            print(
                f"  {'engine':18} {'MB/s median':>11} {'vs ssh -R':>9} {'CPU s/GiB':>9}   runs (MB/s)"
            )
            for name, values, cpu in rows:
                median = statistics.median(values)
                # each run's ratio against ssh -R measured in the same round, then the median
                ratio = statistics.median(v / p for v, p in zip(values, plain, strict=True))
                runs = ", ".join(f"{v:.0f}" for v in values)
                print(
                    f"  {name:18} {median:11.0f} {ratio:8.2f}x {statistics.median(cpu):9.2f}   {runs}"
                )
                table.append(f"| {label} ({size} MiB) | {name} | {median:.0f} | {ratio:.2f}x |"
                             f" {statistics.median(cpu):.2f} | {runs} |")  # fmt: skip
                measured.append({"path": label, "size_mib": size, "engine": name, "mb_per_s": values,
                                 "cpu_s_per_gib": cpu, "ratio_vs_ssh_r": ratio})  # fmt: skip
        report["throughput"] = measured
        markdown += [*table, ""]
    if args.what in ("all", "faults"):
        engines = ["deployer", "deployer --reclaim"]
        if args.engines:
            engines = [e.strip() for e in args.engines.split(",")]
        elif shutil.which("autossh"):
            engines.append("autossh")
        else:
            print(
                "(autossh is not installed: apt-get install -y autossh — comparing deployer only)"
            )
        timeout = 60.0 if args.quick else 150.0
        repeat = args.repeat or (1 if args.quick else 3)
        title = "Recovery: seconds from the end of the fault to a working tunnel"
        print(f"\n{title} (timeout {timeout:g} s); jump host sshd ClientAliveInterval"
              f" {CLIENT_ALIVE[0]}, ClientAliveCountMax {CLIENT_ALIVE[1]}.")  # fmt: skip
        results = faults(args.quick, engines, repeat, timeout, args.only)
        table = fault_table(results, engines, timeout)
        goals = goal_lines(results)
        print("", *table, "", *goals, sep="\n")
        report["faults"] = [vars(r) | {"met": r.met} for r in results]
        report["client_alive"] = CLIENT_ALIVE
        markdown += [
            f"## {title}\n",
            f"Jump host sshd: ClientAliveInterval {CLIENT_ALIVE[0]}, ClientAliveCountMax {CLIENT_ALIVE[1]};"
            f" timeout {timeout:g} s; {repeat} run(s) per cell, comma-separated (a cell that did not come"
            " back is not repeated). SIGTERM: seconds to exit / seconds until the jump host stopped listening.\n",
            *table,
            "",
            "Goals (deployer):\n",
            *goals,
            "",
        ]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text("\n".join(markdown))


if __name__ == "__main__":
    main()
