"""Where the push benchmark runs: the servers and tunnels (Topology) and the emulated WAN (Link).

Topology: a jump sshd, N target sshd's (each in a private mount namespace when root, so every
target has its own deploy directory at the same path) and one plain ``ssh -N -R`` reverse tunnel
per target into the jump host; plus the client side's ssh_config, known_hosts and environment.

Link: the rate cap (the kernel's ``tbf`` qdisc on both ends of the veth, or the relay's own token
bucket), bench/relay.py in front of the jump sshd for the delay, and the self-check that measures
what the link really does (RTT and bulk throughput through the relay).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.login import login_user
from bench.processes import json_object, run_checked, stop_process, wait_ready_file
from bench.push_config import RELAY_SCRIPT, REPO, MiB, Profile
from deployer.sandbox.servers import SshServer, find_sshd, free_port, wait_for_banner, write_keypair


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
        """The CI runner's private key: authorized on every target and (permitopen) the jump host."""
        return self.keys / "ci_ed25519"

    def start(self) -> None:
        """Keys, the jump sshd, every target sshd and its tunnel, then the client's ssh_config."""
        find_sshd()
        # deployer's bytecode (in its __pycache__ dirs), as pip compiles it when it installs the
        # package: without it every command would compile the modules it imports (0.12 s here)
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "deployer")],
            env=self.env(), stdout=subprocess.DEVNULL, check=True,
        )  # fmt: skip
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
        """Stop the tunnels, the targets and the jump sshd."""
        for tunnel in self.tunnels:
            stop_process(tunnel)
        for target in self.targets:
            target.stop()
        self.jump.stop()

    # what clients need ----------------------------------------------------------------

    def client(self, argv: list[str]) -> list[str]:
        """argv run on the CI runner side (in the client namespace when there is one)."""
        return ["ip", "netns", "exec", self.client_ns, *argv] if self.client_ns else argv

    def env(self) -> dict[str, str]:
        """A client command's environment: no SSH_/DEPLOYER_/CI variables, HOME and PYTHONPATH set."""
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SSH_", "DEPLOYER_", "CI_", "GITLAB_", "GITHUB_"))
        }
        return {
            **clean,
            "HOME": str(self.home),
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",  # `start` compiled deployer's modules
        }

    def deployer_env(self) -> dict[str, str]:
        """env() plus what deployer reads in CI: CI=true, SSH_PRIVATE_KEY, SSH_KNOWN_HOSTS."""
        return {
            **self.env(),
            "CI": "true",
            "SSH_PRIVATE_KEY": self.ci_key.read_text(),
            "SSH_KNOWN_HOSTS": self.known_hosts.read_text(),
        }

    def route(self, targets: int) -> list[str]:
        """deployer push's --jump and one --to per target, for the first `targets` targets."""
        args = ["--jump", f"{self.user}@{self.listen_host}:{self.relay_port}"]
        for port in self.tunnel_ports[:targets]:
            args += ["--to", f"{self.user}@localhost:{port}"]
        return args

    def ssh(self, index: int = 0) -> str:
        """The ssh command line (through the jump host) that reaches target `index`."""
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
        """Start relay.py's echo and sink servers (behind the relay) for the link self-check."""
        ready = self.logdir / "servers.ready"
        self.echo_port, self.sink_port = free_port(), free_port()
        self.servers = subprocess.Popen(
            [
                sys.executable,
                str(RELAY_SCRIPT),
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
        wait_ready_file(ready, self.servers)
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
                    run_checked(
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
            str(RELAY_SCRIPT),
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
        wait_ready_file(ready, self.relay)
        return self.probe(profile)

    def probe(self, profile: Profile) -> dict[str, Any]:
        """RTT (ping-pong) and bulk throughput through the relay, from the client side."""
        seconds = 1.5 if self.args.quick else 3.0
        nbytes = int(min(512 * MiB, max(4 * MiB, profile.rate_bytes * seconds)))
        host = self.topo.listen_host
        argv = self.topo.client(
            [
                sys.executable,
                str(RELAY_SCRIPT),
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
        return json_object(proc.stdout)

    def stop_relay(self) -> None:
        """Stop the relay of the current profile, if one runs."""
        stop_process(self.relay)
        self.relay = None

    def stop(self) -> None:
        """Stop the relay and the echo/sink servers."""
        self.stop_relay()
        stop_process(self.servers)
