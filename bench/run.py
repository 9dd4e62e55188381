#!/usr/bin/env python3
"""deployer push vs plain OpenSSH, through one jump host + reverse tunnel, over emulated WAN links.

    python bench/run.py --quick                    # a few minutes: small corpora, two profiles
    python bench/run.py                            # the full run (half an hour or more)
    python bench/run.py --profiles 40ms-100m --corpora small,src --json out.json

Topology (as root, the default ``--net netns``): two network namespaces joined by a veth pair.
The client namespace plays the CI runner (deployer, ssh, rsync, scp, tar run there). The other
holds the "internet side": bench/relay.py (one-way delay RTT/2 per direction), a jump sshd, N
target sshd's (each in a private mount namespace, so every target has its own deploy directory at
the same path) and one plain ``ssh -N -R`` reverse tunnel per target into the jump host. The rate
cap is the kernel's ``tbf`` qdisc on both ends of the veth (``--shaper tbf``) or the relay's own
token bucket (``--shaper relay``). The tunnels' hop stays on loopback; only CI -> jump is the WAN.

``--net loopback`` (no root needed) runs everything on 127.0.0.1 with the relay doing delay and
rate. Every method is verified after each run (file list, sizes and sha256 of every file), so a
broken transfer cannot win. Cleanup: every process started here is stopped by pid/process group,
the namespaces created here are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
sys.path[:0] = [str(BENCH), str(REPO)]

import corpora  # noqa: E402
from corpora import Corpus, CorpusSpec  # noqa: E402

from deployer.sandbox.topology import (  # noqa: E402
    SshServer,
    find_sshd,
    free_port,
    wait_for_banner,
    write_keypair,
)

MiB = 1 << 20
DEPLOYER = "deployer push"
DEPLOYER_LINKED = "deployer push --link-unchanged"
TAR = "tar | ssh"
TARGZ = "tar | gzip -1 | ssh"
RSYNC = "rsync -az"
SCP = "scp -r"
PLAIN = (TAR, TARGZ, RSYNC)  # the goal's "best plain practice"
METHODS = (DEPLOYER, TAR, TARGZ, RSYNC, SCP)


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Profile:
    """A WAN link between the CI runner and the jump host."""

    key: str
    rtt_ms: float
    rate_mbit: float

    @property
    def label(self) -> str:
        rate = (
            f"{self.rate_mbit / 1000:g} Gbit/s"
            if self.rate_mbit >= 1000
            else f"{self.rate_mbit:g} Mbit/s"
        )
        return f"{self.rtt_ms:g} ms RTT / {rate}"

    @property
    def rate_bytes(self) -> float:
        return self.rate_mbit * 1e6 / 8


def parse_profile(text: str) -> Profile:
    """'40ms-100m' (Mbit/s) or '10ms-1g' (Gbit/s)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)ms-(\d+(?:\.\d+)?)([mg])", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"profile {text!r}: use RTTms-RATEm or RTTms-RATEg, like 40ms-100m"
        )
    rate = float(match[2]) * (1000 if match[3] == "g" else 1)
    return Profile(text.strip().lower(), float(match[1]), rate)


FULL_PROFILES = "10ms-1g,40ms-100m,100ms-20m"
QUICK_PROFILES = "10ms-1g,40ms-100m"

FULL_CORPORA = {
    "small": CorpusSpec("small", "random-files", files=3000, total=66 * 10**6),
    "src": CorpusSpec("src", "stdlib"),
    "big": CorpusSpec("big", "one-file", files=1, total=200 * MiB),
    "huge": CorpusSpec("huge", "one-file", files=1, total=1024 * MiB),
}
TINY = CorpusSpec("tiny", "one-file", files=1, total=1000)  # latency only: what round trips cost
QUICK_CORPORA = {
    "small": CorpusSpec("small", "random-files", files=500, total=8 * 10**6),
    "src": CorpusSpec("src", "stdlib", files=400),
    "big": CorpusSpec("big", "one-file", files=1, total=32 * MiB),
}


@dataclass
class Result:
    """One timed, verified run."""

    profile: str
    corpus: str
    method: str
    scenario: str = "full"  # full | redeploy | parallel | memory
    targets: int = 1
    seconds: float | None = None
    ok: bool = False
    error: str = ""
    maxrss_kb: int | None = None
    samples: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- processes


@dataclass
class Run:
    seconds: float
    status: int
    timed_out: bool
    maxrss_kb: int
    stdout: str
    stderr: str

    @property
    def tail(self) -> str:
        """The line that says what went wrong (deployer's 'error:' line when there is one)."""
        errors = [ln for ln in self.stderr.splitlines() if "error" in ln.lower()]
        lines = errors or [ln for ln in (self.stdout + self.stderr).splitlines() if ln.strip()]
        return lines[-1].strip()[:300] if lines else f"exit status {self.status}"


def _killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def timed(argv: list[str], *, env: dict[str, str], timeout: float, logdir: Path, name: str) -> Run:
    """Run argv in its own process group; wall time, status and the child's own peak RSS (wait4)."""
    out_path, err_path = logdir / f"{name}.out", logdir / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            _killpg(proc.pid)

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: take the command's whole group down with us
            _killpg(proc.pid)
            proc.wait(timeout=30)
            raise
        finally:
            timer.cancel()
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        _killpg(proc.pid)  # stragglers of the group (ssh -W helpers), by the group we created
    read = lambda p: p.read_text(errors="replace")[-20000:]  # noqa: E731
    return Run(
        seconds, proc.returncode, fired.is_set(), usage.ru_maxrss, read(out_path), read(err_path)
    )


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid)
        proc.wait(timeout=5)


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not become ready (exit {proc.poll()})")


# ---------------------------------------------------------------------------- topology


LOGIN_USER = "deployer-test"  # the integration tests' unprivileged login (same name, same flags)


def login_user() -> str:
    """Who the benchmark logs in as on the jump host and the targets.

    As root: an unprivileged account with /bin/sh as its shell, like a deploy user. Logging in as
    root here would run root's ~/.bashrc (bash sources it for every command sshd starts) before
    each remote command — on this machine a pyenv init that can even block on a rehash lock — a
    per-command cost that would penalize tools running several remote commands.
    """
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(LOGIN_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/sh", LOGIN_USER], check=True
        )
    # a "!" password locks the account and sshd (without PAM) refuses even key logins
    subprocess.run(["usermod", "-p", "*", LOGIN_USER], check=True)
    return LOGIN_USER


class Topology:
    """Jump sshd, N target sshd's (own mount namespaces), one ssh -R tunnel per target; client config."""

    def __init__(self, work: Path, targets: int, listen_host: str, client_ns: str | None) -> None:
        self.work = work
        self.user = login_user()
        self.listen_host = listen_host
        self.client_ns = client_ns
        self.keys = work / "keys"
        self.jump = SshServer("jump", work / "servers" / "jump", self.user)
        self.targets = [
            SshServer(f"t{i}", work / "servers" / f"t{i}", self.user) for i in range(targets)
        ]
        self.private_mounts = os.geteuid() == 0 and shutil.which("unshare") is not None
        self.mnt = work / "mnt"  # the deploy root as every target sees it
        self.data = [
            work / "data" / f"t{i}" if self.private_mounts else self.mnt for i in range(targets)
        ]
        self.tunnel_ports: list[int] = []
        self.tunnels: list[subprocess.Popen[bytes]] = []
        self.relay_port = 0
        self.ssh_config = work / "ssh_config"
        self.known_hosts = work / "known_hosts"
        self.home = work / "home"

    @property
    def ci_key(self) -> Path:
        return self.keys / "ci_ed25519"

    def start(self) -> None:
        find_sshd()
        self.keys.mkdir(parents=True)
        self.keys.chmod(0o700)
        self.home.mkdir()
        self.mnt.mkdir()
        write_keypair(self.ci_key, "ed25519", "bench-ci")
        write_keypair(self.keys / "tunnel_ed25519", "ed25519", "bench-tunnel")
        ci_public = (self.keys / "ci_ed25519.pub").read_text().strip()
        tunnel_public = (self.keys / "tunnel_ed25519.pub").read_text().strip()
        self.jump.prepare()
        for index, target in enumerate(self.targets):
            if index:  # same host keys everywhere: key generation is slow and irrelevant here
                target.home.mkdir(parents=True, exist_ok=True)
                for key in self.targets[0].home.glob("ssh_host_*"):
                    shutil.copy2(key, target.home / key.name)
            target.prepare()
            target.authorized_keys.write_text("")
            target.authorize(ci_public)
            self.data[index].mkdir(parents=True, exist_ok=True)
            shutil.chown(self.data[index], user=self.user)
        self.tunnel_ports = [free_port() for _ in self.targets]
        self.relay_port = free_port()
        listen = ",".join(f'permitlisten="127.0.0.1:{p}"' for p in self.tunnel_ports)
        opens = ",".join(f'permitopen="localhost:{p}"' for p in self.tunnel_ports)
        self.jump.authorized_keys.write_text(
            f'restrict,port-forwarding,{listen},command="/bin/false" {tunnel_public}\n'
            f'restrict,port-forwarding,{opens},command="/bin/false" {ci_public}\n'
        )
        self.jump.start()
        for index, target in enumerate(self.targets):
            self._start_target(target, self.data[index])
        for index in range(len(self.targets)):
            self._open_tunnel(index)
        self._write_client_config()

    def _start_target(self, server: SshServer, data: Path) -> None:
        argv = [find_sshd(), "-D", "-e", "-f", str(server.home / "sshd_config")]
        if self.private_mounts:
            # this target's own filesystem view: its data dir appears at the shared deploy root
            script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                str(data),
                str(self.mnt),
                *argv,
            ]
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        with server.log.open("ab") as log:
            server.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        if not wait_for_banner(server.port, time.monotonic() + 15):
            raise RuntimeError(f"target sshd {server.name} did not start — see {server.log}")

    def _open_tunnel(self, index: int) -> None:
        known = self.work / "tunnel_known_hosts"
        known.write_text(
            "".join(f"[127.0.0.1]:{self.jump.port} {k}\n" for k in self.jump.host_keys)
        )
        port, target = self.tunnel_ports[index], self.targets[index]
        argv = [
            "ssh",
            "-N",
            "-F",
            "/dev/null",
            "-R",
            f"127.0.0.1:{port}:127.0.0.1:{target.port}",
            "-p",
            str(self.jump.port),
            "-i",
            str(self.keys / "tunnel_ed25519"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ServerAliveInterval=5",
            f"{self.user}@127.0.0.1",
        ]
        with (self.work / f"tunnel{index}.log").open("ab") as log:
            self.tunnels.append(
                subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
            )
        if not wait_for_banner(port, time.monotonic() + 15):
            raise RuntimeError(
                f"tunnel {index} did not come up — see {self.work}/tunnel{index}.log"
            )

    def _write_client_config(self) -> None:
        lines = [f"[{self.listen_host}]:{self.relay_port} {k}" for k in self.jump.host_keys]
        for port, target in zip(self.tunnel_ports, self.targets, strict=True):
            lines += [f"[localhost]:{port} {k}" for k in target.host_keys]
        self.known_hosts.write_text("\n".join(lines) + "\n")
        hosts = [f"Host bench-jump\n  HostName {self.listen_host}\n  Port {self.relay_port}\n"]
        hosts += [
            f"Host bench-t{i}\n  HostName localhost\n  Port {port}\n  ProxyJump bench-jump\n"
            for i, port in enumerate(self.tunnel_ports)
        ]
        common = [
            f"User {self.user}",
            f"IdentityFile {self.ci_key}",
            "IdentitiesOnly yes",
            f"UserKnownHostsFile {self.known_hosts}",
            "GlobalKnownHostsFile /dev/null",
            "StrictHostKeyChecking yes",
            "BatchMode yes",
            "ConnectTimeout 30",
            "ServerAliveInterval 15",
            "ControlMaster no",
            "LogLevel ERROR",
        ]
        self.ssh_config.write_text(
            "".join(hosts) + "Host *\n" + "".join(f"  {c}\n" for c in common)
        )

    def stop(self) -> None:
        for tunnel in self.tunnels:
            _stop(tunnel)
        for target in self.targets:
            target.stop()
        self.jump.stop()

    # what clients need ----------------------------------------------------------------

    def client(self, argv: list[str]) -> list[str]:
        """argv run on the CI runner side (in the client namespace when there is one)."""
        return ["ip", "netns", "exec", self.client_ns, *argv] if self.client_ns else argv

    def env(self) -> dict[str, str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SSH_", "DEPLOYER_", "CI_", "GITLAB_", "GITHUB_"))
        }
        return {
            **clean,
            "HOME": str(self.home),
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def deployer_env(self) -> dict[str, str]:
        return {
            **self.env(),
            "CI": "true",
            "SSH_PRIVATE_KEY": self.ci_key.read_text(),
            "SSH_KNOWN_HOSTS": self.known_hosts.read_text(),
        }

    def route(self, targets: int) -> list[str]:
        args = ["--jump", f"{self.user}@{self.listen_host}:{self.relay_port}"]
        for port in self.tunnel_ports[:targets]:
            args += ["--to", f"{self.user}@localhost:{port}"]
        return args

    def ssh(self, index: int = 0) -> str:
        return f"ssh -F {shlex.quote(str(self.ssh_config))} bench-t{index}"


# ---------------------------------------------------------------------------- the link


class Link:
    """Shaping (tbf on the veth, or the relay's token bucket) plus the relay, and its self-check."""

    def __init__(
        self, topo: Topology, args: argparse.Namespace, net: dict[str, str] | None, logdir: Path
    ):
        self.topo, self.args, self.net, self.logdir = topo, args, net, logdir
        self.relay: subprocess.Popen[bytes] | None = None
        self.servers: subprocess.Popen[bytes] | None = None
        self.echo_port = self.sink_port = 0
        self.relay_echo = self.relay_sink = 0

    def start_servers(self) -> None:
        ready = self.logdir / "servers.ready"
        self.echo_port, self.sink_port = free_port(), free_port()
        self.servers = subprocess.Popen(
            [
                sys.executable,
                str(BENCH / "relay.py"),
                "serve",
                "--echo",
                f"127.0.0.1:{self.echo_port}",
                "--sink",
                f"127.0.0.1:{self.sink_port}",
                "--ready-file",
                str(ready),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_file(ready, self.servers)
        self.relay_echo, self.relay_sink = free_port(), free_port()

    def apply(self, profile: Profile) -> dict[str, Any]:
        """Shape the link for `profile`, (re)start the relay, and measure what it really does."""
        self.stop_relay()
        shaper = self.args.shaper
        if self.net is not None:
            for ns, dev in (
                (self.net["client_ns"], self.net["client_dev"]),
                (self.net["server_ns"], self.net["server_dev"]),
            ):
                if shaper == "tbf":
                    burst = max(128 * 1024, int(profile.rate_bytes * 0.004))
                    _sh(
                        [
                            "tc",
                            "-n",
                            ns,
                            "qdisc",
                            "replace",
                            "dev",
                            dev,
                            "root",
                            "tbf",
                            "rate",
                            f"{profile.rate_mbit:g}mbit",
                            "burst",
                            str(burst),
                            "latency",
                            "25ms",
                        ]
                    )
                else:
                    subprocess.run(
                        ["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True
                    )
        host = self.topo.listen_host
        ready = self.logdir / f"relay-{profile.key}.ready"
        argv = [
            sys.executable,
            str(BENCH / "relay.py"),
            "relay",
            "--rtt-ms",
            f"{profile.rtt_ms:g}",
            "--capacity-mbit",
            f"{profile.rate_mbit:g}",
            "--ready-file",
            str(ready),
            "--max-seconds",
            str(int(self.args.max_minutes * 60 + 600)),
            "--forward",
            f"{host}:{self.topo.relay_port}=127.0.0.1:{self.topo.jump.port}",
            "--forward",
            f"{host}:{self.relay_echo}=127.0.0.1:{self.echo_port}",
            "--forward",
            f"{host}:{self.relay_sink}=127.0.0.1:{self.sink_port}",
        ]
        if shaper == "relay":
            argv += ["--rate-mbit", f"{profile.rate_mbit:g}"]
        with (self.logdir / f"relay-{profile.key}.log").open("ab") as log:
            self.relay = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        _wait_file(ready, self.relay)
        return self.probe(profile)

    def probe(self, profile: Profile) -> dict[str, Any]:
        seconds = 1.5 if self.args.quick else 3.0
        nbytes = int(min(512 * MiB, max(4 * MiB, profile.rate_bytes * seconds)))
        host = self.topo.listen_host
        argv = self.topo.client(
            [
                sys.executable,
                str(BENCH / "relay.py"),
                "probe",
                "--echo",
                f"{host}:{self.relay_echo}",
                "--sink",
                f"{host}:{self.relay_sink}",
                "--pings",
                "20",
                "--bulk-bytes",
                str(nbytes),
                "--timeout",
                "120",
            ]
        )
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()[-300:]}
        return json.loads(proc.stdout)

    def stop_relay(self) -> None:
        _stop(self.relay)
        self.relay = None

    def stop(self) -> None:
        self.stop_relay()
        _stop(self.servers)


def _sh(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


# ---------------------------------------------------------------------------- methods


class Bench:
    """Runs every method through the topology, verifies, and records results."""

    def __init__(self, topo: Topology, args: argparse.Namespace, logdir: Path) -> None:
        self.topo, self.args, self.logdir = topo, args, logdir
        self.results: list[Result] = []
        self.counter = 0
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.push_help = self._push_help()

    def _push_help(self) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "deployer", "push", "--help"],
            capture_output=True,
            text=True,
            env=self.topo.env(),
            cwd=REPO,
            timeout=60,
        )
        return proc.stdout

    @property
    def has_parallel(self) -> bool:
        return "--parallel" in self.push_help

    def _name(self, label: str) -> str:
        self.counter += 1
        return f"{self.counter:03d}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}"

    def _timeout(self, profile: Profile, nbytes: int, files: int, targets: int = 1) -> float:
        wire = nbytes * targets / profile.rate_bytes
        return min(3600.0, 120 + 10 * wire + files * profile.rtt_ms / 1000 * 6)

    # one command -----------------------------------------------------------------------

    def deployer_argv(
        self, tree: Path, remote: str, targets: int = 1, extra: tuple[str, ...] = ()
    ) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "deployer",
            "push",
            str(tree),
            *self.topo.route(targets),
            "--path",
            remote,
            "--json",
            *extra,
        ]
        if targets > 1 and self.has_parallel:
            argv += ["--parallel", str(targets)]
        return self.topo.client(argv)

    def plain_argv(self, method: str, tree: Path, remote: str, index: int = 0) -> list[str]:
        ssh, src, dst = self.topo.ssh(index), shlex.quote(str(tree)), shlex.quote(remote)
        if method == TAR:
            script = f"tar -C {src} -cf - . | {ssh} 'mkdir -p {dst} && tar -xf - -C {dst}'"
        elif method == TARGZ:
            script = (
                f"tar -C {src} -cf - . | gzip -1 | {ssh} 'mkdir -p {dst} && tar -xzf - -C {dst}'"
            )
        elif method == RSYNC:
            script = f"rsync -az -e {shlex.quote(f'ssh -F {self.topo.ssh_config}')} {src}/ bench-t{index}:{dst}/"
        elif method == SCP:
            script = (
                f"scp -r -q -F {shlex.quote(str(self.topo.ssh_config))} {src} bench-t{index}:{dst}"
            )
        else:
            raise ValueError(method)
        return self.topo.client(["bash", "-c", "set -o pipefail; " + script])

    def execute(
        self, argv: list[str], *, env: dict[str, str], timeout: float, name: str
    ) -> Run | str:
        if time.monotonic() > self.deadline:
            return "skipped: --max-minutes time budget used up"
        return timed(argv, env=env, timeout=timeout, logdir=self.logdir, name=name)

    def _result(
        self, profile: Profile, corpus: Corpus, method: str, scenario: str, targets: int = 1
    ) -> Result:
        """The result that collects every sample of one cell (created on first use)."""
        for result in self.results:
            if (result.profile, result.corpus, result.method, result.scenario, result.targets) == (
                profile.key, corpus.name, method, scenario, targets,
            ):  # fmt: skip
                return result
        result = Result(profile.key, corpus.name, method, scenario=scenario, targets=targets)
        self.results.append(result)
        return result

    def record(self, result: Result, run: Run | str, check: str | None = None) -> Result:
        """Add one run to its cell: a sample when it worked and verified, else the cell's error."""
        if isinstance(run, str):
            result.error = run
        elif run.timed_out:
            result.error = f"timed out after {run.seconds:.0f} s"
        elif run.status != 0:
            result.error = run.tail
        elif check:
            result.error = f"verification failed: {check}"
        else:
            result.samples.append(round(run.seconds, 3))
        if not isinstance(run, str) and result.method.startswith("deployer"):
            result.maxrss_kb = max(result.maxrss_kb or 0, run.maxrss_kb)
            result.extra.update(_deployer_details(run.stdout))
            upload = re.findall(r"on the wire \[[^]]*\] in ([\d.]+) s", run.stderr)
            if upload:
                result.extra.setdefault("upload_seconds", []).append(max(float(u) for u in upload))
        result.ok = not result.error and bool(result.samples)
        result.seconds = self.summary(result.samples) if result.ok else None
        self._say(result, run)
        return result

    def summary(self, samples: list[float]) -> float:
        return min(samples) if self.args.stat == "min" else statistics.median(samples)

    def _say(self, result: Result, run: Run | str) -> None:
        what = f"{result.samples[-1]:.2f} s" if result.samples else "-"
        if result.error:
            what = f"FAILED: {result.error}"
        rss = (
            f", peak RSS {run.maxrss_kb / 1024:.0f} MB"
            if isinstance(run, Run) and result.method.startswith("deployer")
            else ""
        )
        print(
            f"  [{result.profile}] {result.scenario:9s} {result.corpus:6s} x{result.targets:<2d} "
            f"{result.method:32s} {what}{rss}",
            file=sys.stderr,
            flush=True,
        )

    def _clean(self, name: str) -> None:
        for data in dict.fromkeys(self.topo.data):
            shutil.rmtree(data / name, ignore_errors=True)

    def _deployed(self, data: Path, name: str) -> Path:
        current = data / name / "current"
        return current.resolve() if current.is_symlink() else current

    def _verified(
        self, run: Run | str, dests: list[Path], manifest: corpora.Manifest
    ) -> str | None:
        if isinstance(run, str) or run.status:
            return None
        return next(
            (f"target {i}: {c}" for i, d in enumerate(dests) if (c := corpora.verify(d, manifest))),
            "",
        )

    # scenarios: each call adds one sample to its cell -------------------------------------

    def full(
        self,
        profile: Profile,
        corpus: Corpus,
        method: str,
        ssh_setup: float,
        scenario: str = "full",
    ) -> Result:
        """One full deploy of `corpus` into a fresh directory."""
        result = self._result(profile, corpus, method, scenario)
        if result.error:
            return result  # a failed cell is not retried
        source = corpus
        if method == SCP:
            source = corpora.subset(corpus, CACHE / "corpora", self.args.scp_files)
        timeout = self._timeout(profile, source.bytes, source.files * 3)
        name = self._name(f"{method}-{corpus.name}-{profile.key}")
        remote = str(self.topo.mnt / name)
        if method == DEPLOYER:
            argv, env = self.deployer_argv(source.tree, remote), self.topo.deployer_env()
            dest = self._deployed
        else:
            argv, env = self.plain_argv(method, source.tree, remote), self.topo.env()
            dest = lambda data, name: data / name  # noqa: E731
        run = self.execute(argv, env=env, timeout=timeout, name=name)
        self.record(
            result, run, self._verified(run, [dest(self.topo.data[0], name)], source.manifest)
        )
        self._clean(name)
        if result.ok and source is not corpus:
            # linear in the file count, after the connection set-up that every run pays once
            measured = result.seconds or 0.0
            result.seconds = ssh_setup + (measured - ssh_setup) * corpus.files / source.files
            result.note = f"est. from {source.files}/{corpus.files} files"
            result.extra.update(
                measured_seconds=round(measured, 3),
                subset_files=source.files,
                ssh_setup_seconds=round(ssh_setup, 3),
            )
        return result

    def redeploy(self, profile: Profile, corpus: Corpus, v2: Corpus, method: str) -> Result:
        """Deploy v1 (untimed), then time deploying v2 (1 % changed) onto it."""
        result = self._result(profile, corpus, method, "redeploy")
        if result.error:
            return result
        name = self._name(f"redeploy-{method}-{corpus.name}-{profile.key}")
        remote = str(self.topo.mnt / name)
        timeout = self._timeout(profile, corpus.bytes, corpus.files)
        if method.startswith("deployer"):
            extra: tuple[str, ...] = ("--link-unchanged",) if method == DEPLOYER_LINKED else ()
            env = self.topo.deployer_env()
            first_argv = self.deployer_argv(corpus.tree, remote, extra=extra)
            argv = self.deployer_argv(v2.tree, remote, extra=extra)
            dest = self._deployed(self.topo.data[0], name)
        else:
            env = self.topo.env()
            first_argv = self.plain_argv(RSYNC, corpus.tree, remote)
            argv = self.plain_argv(RSYNC, v2.tree, remote)
            dest = self.topo.data[0] / name
        first = self.execute(first_argv, env=env, timeout=timeout, name=name + "-v1")
        if isinstance(first, str) or first.status:
            self.record(result, first)
            result.error = "first deploy: " + result.error
        else:
            run = self.execute(argv, env=env, timeout=timeout, name=name)
            if not isinstance(run, str) and not run.status:
                dest = (
                    self._deployed(self.topo.data[0], name)
                    if method.startswith("deployer")
                    else dest
                )
            self.record(result, run, self._verified(run, [dest], v2.manifest))
        self._clean(name)
        return result

    def parallel(self, profile: Profile, corpus: Corpus, count: int, method: str) -> Result:
        """Deploy `corpus` to `count` targets at once (each its own sshd and tunnel)."""
        result = self._result(profile, corpus, method, "parallel", count)
        if result.error:
            return result
        if count > len(self.topo.targets):
            result.error = f"only {len(self.topo.targets)} targets started"
        elif count > 1 and not self.topo.private_mounts:
            result.error = "n/a: needs root (per-target mount namespaces)"
        elif method == DEPLOYER and count > 1 and not self.has_parallel:
            result.error = "n/a: deployer push has no --parallel yet"
        if result.error:
            self._say(result, "")
            return result
        timeout = self._timeout(profile, corpus.bytes, corpus.files, count)
        name = self._name(f"parallel{count}-{method}-{corpus.name}-{profile.key}")
        remote = str(self.topo.mnt / name)
        if method == DEPLOYER:
            run = self.execute(
                self.deployer_argv(corpus.tree, remote, targets=count),
                env=self.topo.deployer_env(),
                timeout=timeout,
                name=name,
            )
            dests = [self._deployed(self.topo.data[i], name) for i in range(count)]
        else:
            # best plain fan-out: compress once, then one ssh per target, all at once
            archive = self.logdir / f"{name}.tgz"
            ssh_all = " ".join(
                f"{self.topo.ssh(i)} 'mkdir -p {remote} && tar -xzf - -C {remote}' < {archive} &"
                for i in range(count)
            )
            script = (
                f"set -o pipefail; tar -C {shlex.quote(str(corpus.tree))} -cf - . | gzip -1 > {archive}; "
                f"{ssh_all} fails=0; for job in $(jobs -p); do wait $job || fails=1; done; exit $fails"
            )
            run = self.execute(
                self.topo.client(["bash", "-c", script]),
                env=self.topo.env(),
                timeout=timeout,
                name=name,
            )
            with contextlib.suppress(OSError):
                archive.unlink()
            dests = [self.topo.data[i] / name for i in range(count)]
        self.record(result, run, self._verified(run, dests, corpus.manifest))
        self._clean(name)
        return result

    def ssh_setup(self) -> float:
        """Seconds for `ssh target true` through the jump (what every plain run pays once)."""
        samples = []
        for i in range(3):
            run = self.execute(
                self.topo.client(["bash", "-c", f"{self.topo.ssh()} true"]),
                env=self.topo.env(),
                timeout=60,
                name=self._name(f"ssh-true-{i}"),
            )
            if isinstance(run, Run) and run.status == 0:
                samples.append(run.seconds)
        return min(samples) if samples else 0.0


def _deployer_details(stdout: str) -> dict[str, Any]:
    """Compression, wire bytes and files sent, from deployer's --json document (when it has them)."""
    try:
        start = stdout.index("{")
        doc = json.loads(stdout[start:])
    except ValueError:
        return {}
    details: dict[str, Any] = {}
    for target in doc.get("targets", [])[:1]:
        transfer = (target.get("details") or {}).get("transfer") or {}
        for key in ("compression", "wire_bytes", "files_sent", "files_reused", "bytes_sent"):
            if key in transfer:
                details[key] = transfer[key]
        if target.get("seconds"):
            details["deployer_seconds"] = round(target["seconds"], 3)
    return details


# ---------------------------------------------------------------------------- report


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}" if seconds >= 100 else f"{seconds:.2f}"


def cell(result: Result | None, corpus: Corpus | None = None, mbps: bool = False) -> str:
    if result is None:
        return "-"
    if not result.ok:
        return (
            "n/a"
            if result.error.startswith("n/a")
            else ("skipped" if result.error.startswith("skipped") else "FAILED")
        )
    text = ("~" if result.note.startswith("est.") else "") + fmt_s(result.seconds)
    if mbps and corpus is not None and result.seconds:
        text += f" ({corpus.bytes / 1e6 / result.seconds:.1f} MB/s"
        upload = result.extra.get("upload_seconds")
        if upload:
            text += f"; upload phase {corpus.bytes / 1e6 / statistics.median(upload):.1f}"
        text += ")"
    return text


def table(rows: list[list[str]]) -> str:
    rows = [
        [c.replace("|", "\\|") for c in row] for row in rows
    ]  # Markdown: "tar | ssh" is one cell
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(row)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def find(results: list[Result], **kw: Any) -> Result | None:
    for r in results:
        if all(getattr(r, k) == v for k, v in kw.items()):
            return r
    return None


def best_plain(results: list[Result], profile: str, corpus: str) -> Result | None:
    candidates = [
        r
        for m in PLAIN
        if (r := find(results, profile=profile, corpus=corpus, method=m, scenario="full")) and r.ok
    ]
    return min(candidates, key=lambda r: r.seconds or 0) if candidates else None


def latency_model(
    results: list[Result], profiles: list[dict[str, Any]]
) -> dict[str, tuple[float, float]]:
    """Fit seconds = a + b * RTT for the 1 kB deploys: a = local work, b = round trips spent."""
    model = {}
    rtts = {p["key"]: p["rtt_ms"] / 1000 for p in profiles}
    for method in (DEPLOYER, TAR):
        points = [
            (rtts[r.profile], min(r.samples))
            for r in results
            if r.corpus == "tiny" and r.method == method and r.ok and r.profile in rtts
        ]
        if len({x for x, _ in points}) < 2:
            continue
        mx = statistics.fmean(x for x, _ in points)
        my = statistics.fmean(y for _, y in points)
        b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
        model[method] = (my - b * mx, b)
    return model


def report(
    state: dict[str, Any],
    results: list[Result],
    corpus_map: dict[str, Corpus],
    args: argparse.Namespace,
) -> tuple[str, list[dict[str, Any]]]:
    out: list[str] = []
    goals: list[dict[str, Any]] = []

    def goal(
        name: str, profile: str, measured: str, ok: bool | None, ratio: float | None = None
    ) -> None:
        goals.append(
            {
                "goal": name,
                "profile": profile,
                "measured": measured,
                "verdict": "n/a" if ok is None else ("PASS" if ok else "FAIL"),
                "ratio": ratio,
            }
        )

    full_corpora = [c for c in args.corpora if c in corpus_map and c not in ("huge", "tiny")]
    for prof in state["profiles"]:
        key: str = prof["key"]
        link = prof.get("link", {})
        out.append(f"### {prof['label']}  (`{key}`)\n")
        if "error" in link:
            out.append(f"link check failed: {link['error']}\n")
        elif link:
            nominal = prof["rate_mbit"]
            out.append(
                f"Link check (same run): RTT {link['rtt_ms_median']:.1f} ms median of {link['pings']} pings "
                f"(nominal {prof['rtt_ms']:g}); bulk {link['mbit_per_s']:.0f} Mbit/s = "
                f"{100 * link['mbit_per_s'] / nominal:.0f} % of nominal over {link['bytes'] / 1e6:.0f} MB "
                f"({'intact' if link['intact'] else 'CORRUPTED'}); `ssh target true` through the jump: "
                f"{prof.get('ssh_setup', 0):.2f} s.\n"
            )
        mine_t = find(results, profile=key, corpus="tiny", method=DEPLOYER)
        tar_t = find(results, profile=key, corpus="tiny", method=TAR)
        if mine_t and tar_t and mine_t.ok and tar_t.ok:
            out.append(
                f"Fixed cost (a 1 kB artifact, fastest of {len(mine_t.samples)}): deployer push "
                f"{min(mine_t.samples):.2f} s, tar | ssh {min(tar_t.samples):.2f} s.\n"
            )
        header = ["method"] + [corpus_map[c].label for c in full_corpora]
        rows = [header]
        for method in METHODS:
            row = [method + (" (est.)" if method == SCP else "")]
            for c in full_corpora:
                r = find(results, profile=key, corpus=c, method=method, scenario="full")
                row.append(cell(r, corpus_map[c], mbps=corpus_map[c].files == 1))
            rows.append(row)
        best_row, ratio_row, rss_row = (
            ["best plain (tar/tar+gzip/rsync)"],
            ["deployer / best plain"],
            ["deployer peak RSS"],
        )
        for c in full_corpora:
            best = best_plain(results, key, c)
            mine = find(results, profile=key, corpus=c, method=DEPLOYER, scenario="full")
            best_row.append(f"{fmt_s(best.seconds)} {best.method}" if best else "-")
            if best and mine and mine.ok and mine.seconds and best.seconds:
                ratio = mine.seconds / best.seconds
                ratio_row.append(f"{ratio:.2f}x")
                goal(
                    f"full deploy <= best plain ({c})",
                    key,
                    f"{mine.seconds:.2f} s vs {best.seconds:.2f} s ({best.method})",
                    ratio <= 1.0,
                    round(ratio, 3),
                )
            else:
                ratio_row.append("-")
                goal(
                    f"full deploy <= best plain ({c})",
                    key,
                    "deployer failed" if mine and not mine.ok else "not measured",
                    False if mine and not mine.ok else None,
                )
            rss_row.append(f"{mine.maxrss_kb / 1024:.0f} MB" if mine and mine.maxrss_kb else "-")
        rows += [best_row, ratio_row, rss_row]
        out.append(table(rows) + "\n")
        scp_any = [r for r in results if r.profile == key and r.method == SCP and r.note]
        if scp_any:
            out.append(
                "scp -r: "
                + "; ".join(
                    f"{r.corpus} {r.note} (measured {r.extra['measured_seconds']:.2f} s, "
                    f"extrapolated linearly in the file count after the ssh set-up)"
                    for r in scp_any
                )
                + ".\n"
            )
        for c in full_corpora:
            mine = find(results, profile=key, corpus=c, method=DEPLOYER, scenario="full")
            if corpus_map[c].files == 1:
                if mine and mine.ok and mine.seconds:
                    rate = corpus_map[c].bytes / mine.seconds
                    share = rate / prof["rate_bytes"]
                    measured_link = link.get("mbit_per_s")
                    extra = (
                        f"; {100 * rate * 8 / 1e6 / measured_link:.0f} % of the measured link"
                        if measured_link
                        else ""
                    )
                    goal(
                        f"one large file >= 90 % of link rate ({c})",
                        key,
                        f"{rate / 1e6:.1f} MB/s = {100 * share:.0f} % of {prof['rate_bytes'] / 1e6:.1f} MB/s{extra}",
                        share >= 0.9,
                        round(share, 3),
                    )
                else:
                    goal(
                        f"one large file >= 90 % of link rate ({c})",
                        key,
                        "deployer failed" if mine else "not measured",
                        False if mine else None,
                    )
        # redeploy
        red = [r for r in results if r.profile == key and r.scenario == "redeploy"]
        if red:
            cs = list(dict.fromkeys(r.corpus for r in red))
            rows = [["redeploy, 1 % of files changed"] + [corpus_map[c].label for c in cs]]
            for method in (DEPLOYER, DEPLOYER_LINKED, RSYNC + " (delta)"):
                m = RSYNC if method.startswith("rsync") else method
                if not any(r.method == m for r in red):
                    continue
                rows.append([method] + [cell(find(red, corpus=c, method=m)) for c in cs])
            ratio_row = ["deployer / rsync delta"]
            for c in cs:
                mine, theirs = (
                    find(red, corpus=c, method=DEPLOYER),
                    find(red, corpus=c, method=RSYNC),
                )
                if mine and theirs and mine.ok and theirs.ok and theirs.seconds and mine.seconds:
                    ratio = mine.seconds / theirs.seconds
                    ratio_row.append(f"{ratio:.2f}x")
                    goal(
                        f"redeploy 1 % <= rsync delta ({c})",
                        key,
                        f"{mine.seconds:.2f} s vs {theirs.seconds:.2f} s",
                        ratio <= 1.0,
                        round(ratio, 3),
                    )
                else:
                    ratio_row.append("-")
                    goal(
                        f"redeploy 1 % <= rsync delta ({c})",
                        key,
                        "a run failed",
                        False if mine and not mine.ok else None,
                    )
            rows.append(ratio_row)
            out.append(table(rows) + "\n")
        # parallel
        par = [r for r in results if r.profile == key and r.scenario == "parallel"]
        if par:
            counts = sorted({r.targets for r in par})
            corpus = corpus_map[par[0].corpus]
            rows = [[f"targets in parallel ({corpus.label})"] + [str(n) for n in counts]]
            for method in (DEPLOYER, TARGZ):
                label = method if method == DEPLOYER else "tar | gzip -1 once, N x ssh in parallel"
                rows.append([label] + [cell(find(par, method=method, targets=n)) for n in counts])
            ratio_row = ["deployer: time / time for 1 target"]
            one = find(par, method=DEPLOYER, targets=1)
            for n in counts:
                r = find(par, method=DEPLOYER, targets=n)
                ratio_row.append(
                    f"{r.seconds / one.seconds:.2f}x"
                    if r and one and r.ok and one.ok and r.seconds and one.seconds
                    else "-"
                )
            rows.append(ratio_row)
            plain_one = find(par, method=TARGZ, targets=1)
            plain_row = ["plain fan-out: time / time for 1 target"]
            for n in counts:
                r = find(par, method=TARGZ, targets=n)
                plain_row.append(
                    f"{r.seconds / plain_one.seconds:.2f}x"
                    if r and plain_one and r.ok and plain_one.ok and r.seconds and plain_one.seconds
                    else "-"
                )
            rows.append(plain_row)
            wire = (one.extra.get("wire_bytes") if one else None) or None
            if wire:
                rows.append(
                    ["link floor: N x wire bytes / rate"]
                    + [f"{n * wire / prof['rate_bytes']:.2f}" for n in counts]
                )
            rss = ["deployer peak RSS"] + [
                f"{r.maxrss_kb / 1024:.0f} MB"
                if (r := find(par, method=DEPLOYER, targets=n)) and r.maxrss_kb
                else "-"
                for n in counts
            ]
            rows.append(rss)
            out.append(table(rows) + "\n")
            top = max(counts)
            r = find(par, method=DEPLOYER, targets=top)
            if top > 1 and r and one and r.ok and one.ok and r.seconds and one.seconds:
                ratio = r.seconds / one.seconds
                floor = (
                    f"; the link alone needs {top * wire / prof['rate_bytes']:.1f} s for {top} copies"
                    if wire
                    else ""
                )
                goal(
                    f"{top} targets < 1.5x one target",
                    key,
                    f"{r.seconds:.2f} s vs {one.seconds:.2f} s{floor}",
                    ratio < 1.5,
                    round(ratio, 3),
                )
            elif top > 1:
                goal(
                    f"{top} targets < 1.5x one target",
                    key,
                    r.error if r and not r.ok else "not measured",
                    None if (r is None or r.error.startswith("n/a")) else False,
                )
        mem = [r for r in results if r.profile == key and r.scenario == "memory"]
        if mem:
            corpus = corpus_map["huge"]
            rows = [["1 GiB artifact (" + corpus.label + ")", "seconds", "MB/s", "peak RSS"]]
            for r in mem:
                rows.append(
                    [
                        r.method,
                        cell(r),
                        f"{corpus.bytes / 1e6 / r.seconds:.1f}" if r.ok and r.seconds else "-",
                        f"{r.maxrss_kb / 1024:.0f} MB" if r.maxrss_kb else "-",
                    ]
                )
            out.append(table(rows) + "\n")
    model = latency_model(results, state["profiles"])
    if model:
        out.append(
            "### Fixed cost per deploy (1 kB artifact, least squares over the profiles' RTTs)\n"
        )
        rows = [["method", "seconds = local + round trips x RTT", "local (s)", "round trips"]]
        rows += [
            [m, f"{a:.2f} + {b:.0f} x RTT", f"{a:.2f}", f"{b:.0f}"] for m, (a, b) in model.items()
        ]
        out.append(table(rows) + "\n")
    # memory goal over everything measured
    huge = [r for r in results if r.scenario == "memory" and r.method == DEPLOYER]
    if huge and huge[0].maxrss_kb:
        mb = huge[0].maxrss_kb / 1024
        goal(
            "peak memory < 100 MB for a 1 GiB artifact",
            huge[0].profile,
            f"{mb:.0f} MB max RSS" + ("" if huge[0].ok else " (run failed)"),
            mb < 100 and huge[0].ok,
            round(mb / 100, 3),
        )
    else:
        biggest = max(
            (r for r in results if r.method == DEPLOYER and r.maxrss_kb),
            key=lambda r: corpus_map[r.corpus].bytes,
            default=None,
        )
        seen = (
            "not measured (needs the full run); largest seen: "
            f"{biggest.maxrss_kb / 1024:.0f} MB for {corpus_map[biggest.corpus].label}"
            if biggest
            else "not measured"
        )
        goal("peak memory < 100 MB for a 1 GiB artifact", "-", seen, None)
    rows = [["goal", "profile", "measured", "verdict"]]
    rows += [[g["goal"], g["profile"], g["measured"], g["verdict"]] for g in goals]
    out.append("### Goals\n")
    out.append(table(rows) + "\n")
    return "\n".join(out), goals


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small corpora, two profiles, fewer targets: a few minutes",
    )
    parser.add_argument(
        "--profiles",
        help=f"comma-separated RTTms-RATE{{m,g}} (default {FULL_PROFILES}; quick {QUICK_PROFILES})",
    )
    parser.add_argument(
        "--corpora", help="comma-separated of small,src,big (default all; full mode adds huge)"
    )
    parser.add_argument("--targets", help="parallel target counts (default 1,10,20; quick 1,5)")
    parser.add_argument(
        "--parallel-corpus", default="src", help="what the parallel-targets runs deploy (src)"
    )
    parser.add_argument("--no-redeploy", action="store_true", help="skip the 1 %% redeploy runs")
    parser.add_argument("--no-parallel", action="store_true", help="skip the parallel-targets runs")
    parser.add_argument("--no-memory", action="store_true", help="skip the 1 GiB peak-memory run")
    parser.add_argument("--methods", help=f"comma-separated subset of: {', '.join(METHODS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (scp: always one)")
    parser.add_argument(
        "--stat", choices=("median", "min"), default="median", help="how repeats are summarized"
    )
    parser.add_argument(
        "--scp-files", type=int, default=0, help="scp subset size (default 100; quick 30)"
    )
    parser.add_argument(
        "--net",
        choices=("netns", "loopback"),
        default="netns" if os.geteuid() == 0 else "loopback",
        help="netns: client and servers in two namespaces joined by a shaped veth (root; default "
        "as root); loopback: everything on 127.0.0.1, the relay does delay and rate",
    )
    parser.add_argument(
        "--shaper", choices=("tbf", "relay"), default=None, help="rate cap (default tbf with netns)"
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=0,
        help="time budget; later runs are skipped (default 30 quick, 240 full)",
    )
    parser.add_argument(
        "--json", dest="json_out", type=Path, help="write every result as JSON here"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument(
        "--keep-work", action="store_true", help="keep bench/.cache/run-* (logs) afterwards"
    )
    args = parser.parse_args(argv)
    args.profiles = [
        parse_profile(p)
        for p in (args.profiles or (QUICK_PROFILES if args.quick else FULL_PROFILES)).split(",")
    ]
    specs = QUICK_CORPORA if args.quick else FULL_CORPORA
    wanted = (args.corpora or ("small,src,big" if args.quick else "small,src,big,huge")).split(",")
    args.corpora = [c.strip() for c in wanted if c.strip()]
    unknown = [c for c in args.corpora if c not in specs]
    if unknown:
        parser.error(f"unknown corpus {unknown[0]!r} (choose from {', '.join(specs)})")
    args.specs = specs
    args.targets = sorted(
        {int(n) for n in (args.targets or ("1,5" if args.quick else "1,10,20")).split(",")}
    )
    args.methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    args.scp_files = args.scp_files or (30 if args.quick else 100)
    args.shaper = args.shaper or ("tbf" if args.net == "netns" else "relay")
    if args.net == "loopback" and args.shaper == "tbf":
        parser.error("--shaper tbf needs --net netns")
    args.max_minutes = args.max_minutes or (30 if args.quick else 240)
    return args


def source_fingerprint() -> str:
    """sha256 over deployer/*.py: says whether the code under test changed during the run."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "deployer").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def git_head() -> str:
    """The checked-out commit, read from .git directly (no git command runs here)."""
    try:
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            loose = REPO / ".git" / ref
            if loose.exists():
                return loose.read_text().strip()[:12]
            for line in (REPO / ".git" / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:12]
            return "?"
        return head[:12]
    except OSError:
        return "?"


def environment() -> dict[str, Any]:
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    rsync = subprocess.run(
        ["rsync", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    try:
        import paramiko

        pm = str(paramiko.__version__)
    except ImportError:
        pm = "?"
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssh": ssh,
        "rsync": rsync,
        "paramiko": pm,
        "loadavg_start": os.getloadavg(),
        "git_head": git_head(),
        "deployer_source_start": source_fingerprint(),
    }


def inner(args: argparse.Namespace, net: dict[str, str] | None) -> int:
    """Everything on the "internet side" (inside the server namespace when there is one)."""
    started = time.monotonic()
    CACHE.mkdir(exist_ok=True)
    work = CACHE / f"run-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logdir = work / "logs"
    logdir.mkdir()
    print(f"bench: building corpora in {CACHE / 'corpora'}", file=sys.stderr, flush=True)
    corpus_map = {c: corpora.build(args.specs[c], CACHE / "corpora") for c in args.corpora}
    parallel_name = args.parallel_corpus if args.parallel_corpus in args.specs else "src"
    if not args.no_parallel and parallel_name not in corpus_map:
        corpus_map[parallel_name] = corpora.build(args.specs[parallel_name], CACHE / "corpora")
    changed = {}
    if not args.no_redeploy:
        for c in ("small", "src"):
            if c in args.corpora:
                changed[c] = corpora.changed_copy(corpus_map[c], CACHE / "corpora")
    corpus_map["tiny"] = corpora.build(TINY, CACHE / "corpora")
    for c in corpus_map.values():
        print(f"bench: corpus {c.label}", file=sys.stderr)
    n_targets = max(args.targets) if not args.no_parallel else 1
    topo = Topology(
        work, n_targets, net["server_ip"] if net else "127.0.0.1", net["client_ns"] if net else None
    )
    link = Link(topo, args, net, logdir)
    state: dict[str, Any] = {
        "command": shlex.join(
            ["python", "bench/run.py", *(a for a in sys.argv[1:] if a != "--_inner")]
        ),
        "environment": environment(),
        "net": args.net,
        "shaper": args.shaper,
        "profiles": [],
    }
    bench: Bench | None = None
    try:
        print(
            f"bench: starting jump + {n_targets} target sshd(s) and tunnels ({args.net}, rate cap: {args.shaper})",
            file=sys.stderr,
            flush=True,
        )
        topo.start()
        link.start_servers()
        bench = Bench(topo, args, logdir)
        state["deployer_has_parallel"] = bench.has_parallel
        for profile in args.profiles:
            prof: dict[str, Any] = {
                "key": profile.key,
                "label": profile.label,
                "rtt_ms": profile.rtt_ms,
                "rate_mbit": profile.rate_mbit,
                "rate_bytes": profile.rate_bytes,
            }
            state["profiles"].append(prof)
            print(f"bench: profile {profile.label}", file=sys.stderr, flush=True)
            prof["link"] = link.apply(profile)
            print(f"  link check: {json.dumps(prof['link'])}", file=sys.stderr, flush=True)
            prof["ssh_setup"] = bench.ssh_setup()
            # every repetition runs each method once, round-robin, so load bursts hit all alike
            for _ in range(5):
                for method in (DEPLOYER, TAR):
                    bench.full(profile, corpus_map["tiny"], method, prof["ssh_setup"], "latency")
            for c in args.corpora:
                if c == "huge":
                    continue
                for rep in range(args.repeat):
                    for method in args.methods:
                        if method != SCP or rep == 0:  # scp: one (slow) run, extrapolated
                            bench.full(profile, corpus_map[c], method, prof["ssh_setup"])
            for c, v2 in changed.items():
                for _ in range(args.repeat):
                    for method in (DEPLOYER, DEPLOYER_LINKED, RSYNC):
                        if method != DEPLOYER_LINKED or "--link-unchanged" in bench.push_help:
                            bench.redeploy(profile, corpus_map[c], v2, method)
            if not args.no_parallel:
                for count in args.targets:
                    for _ in range(args.repeat):
                        for method in (DEPLOYER, TARGZ):
                            bench.parallel(profile, corpus_map[parallel_name], count, method)
            fastest = max(args.profiles, key=lambda p: p.rate_mbit)
            if "huge" in corpus_map and not args.no_memory and profile == fastest:
                for method in (DEPLOYER, TAR):
                    bench.full(profile, corpus_map["huge"], method, prof["ssh_setup"], "memory")
    except KeyboardInterrupt:
        print("bench: interrupted — reporting what was measured", file=sys.stderr)
    except Exception:
        traceback.print_exc()
        print("bench: error — reporting what was measured", file=sys.stderr)
    finally:
        link.stop()
        topo.stop()
    results = bench.results if bench else []
    state["environment"]["loadavg_end"] = os.getloadavg()
    state["environment"]["deployer_source_end"] = source_fingerprint()
    state["elapsed_minutes"] = round((time.monotonic() - started) / 60, 1)
    text, goals = report(state, results, corpus_map, args)
    env = state["environment"]
    notes = (
        f"Command: `{state['command']}` (as root). "
        f"Environment: {env['cpus']} CPUs, kernel {env['kernel']}, {env['openssh']}, {env['rsync']}, "
        f"paramiko {env['paramiko']}, Python {env['python']}; load average at start "
        f"{env['loadavg_start'][0]:.2f}, at end {env['loadavg_end'][0]:.2f}; {state['elapsed_minutes']} min. "
        f"Cells are wall-clock seconds of the whole command (connection, transfer, remote work), "
        f"{args.stat} of {args.repeat} run(s), each verified (file list, sizes, sha256). "
        f"deployer at commit {env['git_head']}, source fingerprint {env['deployer_source_start']}"
        + (
            ""
            if env["deployer_source_end"] == env["deployer_source_start"]
            else f" at the start and {env['deployer_source_end']} at the end (the code changed during the run)"
        )
        + "."
    )
    print("\n" + text + "\n" + notes)
    if args.json_out:
        payload = {
            **state,
            "goals": goals,
            "results": [asdict(r) for r in results],
            "corpora": {
                k: {"label": c.label, "files": c.files, "bytes": c.bytes}
                for k, c in corpus_map.items()
            },
        }
        args.json_out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n" + notes + "\n")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"bench: logs kept in {work}", file=sys.stderr)
    return 0


def outer(args: argparse.Namespace, argv: list[str]) -> int:
    """Create the two namespaces and the shaped veth, run the benchmark inside, always clean up."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        print("bench: --net netns needs root, ip and tc; use --net loopback", file=sys.stderr)
        return 2
    tag = f"dbench{os.getpid()}"
    net = {
        "client_ns": f"{tag}c",
        "server_ns": f"{tag}s",
        "client_dev": f"dbc{os.getpid()}",
        "server_dev": f"dbs{os.getpid()}",
        "client_ip": "10.231.0.1",
        "server_ip": "10.231.0.2",
    }
    created: list[str] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        for ns in (net["client_ns"], net["server_ns"]):
            _sh(["ip", "netns", "add", ns])
            created.append(ns)
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        # create the pair directly inside the namespaces: nothing appears in the host's namespace
        _sh(
            [
                "ip",
                "-n",
                net["client_ns"],
                "link",
                "add",
                net["client_dev"],
                "type",
                "veth",
                "peer",
                "name",
                net["server_dev"],
                "netns",
                net["server_ns"],
            ]
        )
        for side in ("client", "server"):
            ns, dev = net[f"{side}_ns"], net[f"{side}_dev"]
            _sh(["ip", "-n", ns, "addr", "add", f"{net[f'{side}_ip']}/30", "dev", dev])
            _sh(["ip", "-n", ns, "link", "set", dev, "up"])
        env = {**os.environ, "DEPLOYER_BENCH_NET": json.dumps(net)}
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                net["server_ns"],
                sys.executable,
                str(Path(__file__).resolve()),
                *argv,
            ],
            env=env,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=args.max_minutes * 60 + 900)
        except KeyboardInterrupt:
            # SIGTERM, not SIGINT: a background job may have inherited SIGINT as ignored
            _killpg(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=120)
    finally:
        if proc is not None and proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            _killpg(proc.pid)
        for ns in created:
            # anything still running in a namespace we created is ours: stop it by pid, then delete
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up and report like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    net_env = os.environ.get("DEPLOYER_BENCH_NET")
    if args.net == "netns" and not net_env:
        return outer(args, argv)
    return inner(args, json.loads(net_env) if net_env else None)


if __name__ == "__main__":
    sys.exit(main())
