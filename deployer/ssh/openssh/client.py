"""OpenSSH as the SSH client of a push: one ControlMaster per hop, shared by every target behind it.

``connect`` reaches a target hop by hop as ``ssh.connect`` does, with the same dial (or proxy) to
the first hop and the same checks and errors, but each hop's session is an OpenSSH master: the
first one runs over the socket deployer dialled, every further one over a stdio forward of the
master before it. A jump host serves every target behind it through its one master, so a fleet
logs in to it once. Keys stay in memory (an in-memory agent per key set answers the masters);
host keys are judged by deployer (``verdicts``); nothing is left behind: the masters, the
agents, their sockets and the logs go when the client is closed.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import subprocess
import threading
import time
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO

import paramiko

from deployer.environment import child_environment
from deployer.ssh.agent import MemoryAgent
from deployer.ssh.connect import ConnectOptions
from deployer.ssh.contact import FirstContact, first_hop_socket, taken
from deployer.ssh.failures import channel_failed, no_key
from deployer.ssh.hostkeys import fingerprint
from deployer.ssh.openssh.argv import MasterSpec, host_key_algorithms
from deployer.ssh.openssh.classify import forward_failure, login_failure
from deployer.ssh.openssh.connection import OpenSSHConnection
from deployer.ssh.openssh.master import ForwardRefused, Master
from deployer.ssh.openssh.mux import ControlConnection, MuxError
from deployer.ssh.openssh.processes import parent_death_signal, private_directory
from deployer.ssh.openssh.verdicts import HostKeyBroker
from deployer.ssh.route import Route

# Seconds a hop gets to log in, in units of the connect timeout: ssh bounds the banner exchange
# by ConnectTimeout itself; this bounds a key exchange or a login that stalls after it.
LOGIN_TIMEOUTS = 3


class OpenSSHClient:
    """The masters of one push, and everything they need while they run."""

    name = "openssh"

    def __init__(self, ssh: str, env: Mapping[str, str]) -> None:
        self._ssh = ssh
        self._env = child_environment(env)
        for name in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):  # the masters use our agent, named
            self._env.pop(name, None)
        self._stack = contextlib.ExitStack()
        self._dir = self._stack.enter_context(private_directory("deployer-ssh-"))
        self._broker = HostKeyBroker(self._dir)
        self._stack.callback(self._broker.close)
        # Masters are started from one thread that lives as long as they may (their parent
        # death signal follows the thread that started them, and fleet threads come and go).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deployer-ssh")
        self._preexec = parent_death_signal()
        self._agents: dict[Hashable, MemoryAgent] = {}
        self._masters: dict[Hashable, Master] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the three dicts
        self._ids = itertools.count(1)
        self._closed = False

    def connect(
        self, route: Route, options: ConnectOptions, first: FirstContact | None = None
    ) -> OpenSSHConnection:
        """Log in hop by hop (reusing the masters already up) and return the target's session.

        first: the first hop when dialled already (closed if a master for it is up anyway).
        """
        sock = taken(first)
        master: Master | None = None
        for index in range(len(route.hops)):
            master = self._master(route, index, options, master, sock)
        assert master is not None
        key = self._broker.verdict(master.hop_id).key
        assert key is not None, "a master is up only once its host key was accepted"
        return OpenSSHConnection(route, master, key)

    def _master(
        self,
        route: Route,
        index: int,
        options: ConnectOptions,
        previous: Master | None,
        first: socket.socket | None,
    ) -> Master:
        """Hop index's master: the one up already for the same hops and keys, or a new one."""
        credentials = options.credentials_for(index)
        chain = (
            route.proxy,
            tuple((h.user, h.host, h.port, h.host_key_alias) for h in route.hops[: index + 1]),
            tuple(k.asbytes() for k in credentials.keys),
            credentials.use_agent,
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("the OpenSSH client is closed")
            lock = self._locks.setdefault(chain, threading.Lock())
        with lock:  # targets behind one jump host wait for its one master
            master = self._masters.get(chain)
            if master is not None and master.usable():
                if first is not None and index == 0:
                    first.close()
                return master
            if master is not None:
                master.stop()  # its connection died: the hops behind it are started anew
            master = self._start(route, index, options, previous, first)
            with self._lock:
                self._masters[chain] = master
            return master

    def _start(
        self,
        route: Route,
        index: int,
        options: ConnectOptions,
        previous: Master | None,
        first: socket.socket | None,
    ) -> Master:
        hop = route.hops[index]
        candidates = options.credentials_for(index).candidates()
        if not candidates:
            if first is not None:
                first.close()
            raise no_key(route, index)
        hop_id = str(next(self._ids))
        what = route.describe(index)

        def check(key_type: str, blob: bytes) -> None:
            notice = options.host_keys.check(
                what, *hop.known_as, key_type, blob, options.keyscan_hint
            )
            if notice:
                options.on_notice(notice)

        known_hosts = self._broker.expect(hop_id, check)
        spec = MasterSpec(
            ssh=self._ssh,
            hop=hop,
            control=str(self._dir / f"c{hop_id}"),
            agent=self._agent(candidates).socket_path,
            known_hosts_command=known_hosts,
            host_key_algorithms=host_key_algorithms(
                options.host_keys.algorithms_for(*hop.known_as)
            ),
            timeout=options.timeout,
        )
        carrier: ControlConnection | None = None
        if previous is None:
            connection = first if first is not None else first_hop_socket(route, options.timeout)
        else:
            connection, carrier = self._forward(previous, route, index, options.timeout)
        master = Master(spec, hop_id, connection, self._dir / f"log{hop_id}", self._spawn, carrier)
        ready = master.wait_ready(time.monotonic() + LOGIN_TIMEOUTS * options.timeout)
        if ready:
            return master
        master.stop()
        verdict = self._broker.verdict(hop_id)
        if verdict.error is not None:
            raise verdict.error
        lines = master.log_lines()
        if ready is None:
            lines.append(
                f"no SSH handshake and login within {LOGIN_TIMEOUTS * options.timeout:g} s"
            )
        offered = [fingerprint(key.asbytes()) for key in candidates]
        raise login_failure(
            route, index, lines, key_checked=verdict.checked, offered=offered,
            auth_hint=options.auth_hint,
        )  # fmt: skip

    def _forward(
        self, previous: Master, route: Route, index: int, timeout: float
    ) -> tuple[socket.socket, ControlConnection]:
        hop = route.hops[index]
        try:
            return previous.forward(hop.host, hop.port, timeout)
        except ForwardRefused as exc:
            raise forward_failure(route, index, exc.log, exc.said) from None
        except MuxError as exc:
            previous.stop()  # it stopped answering: the next connect starts a new one
            raise channel_failed(route.hops[index - 1], hop, str(exc)) from exc

    def _agent(self, keys: list[paramiko.PKey]) -> MemoryAgent:
        """The in-memory agent holding exactly these keys (one per key set, started once)."""
        blobs = tuple(key.asbytes() for key in keys)
        with self._lock:
            agent = self._agents.get(blobs)
            if agent is None:
                agent = self._agents[blobs] = MemoryAgent(keys).__enter__()
                self._stack.callback(agent.__exit__, None, None, None)
            return agent

    def _spawn(self, argv: list[str], fd: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv, stdin=fd, stdout=fd, stderr=log, env=self._env,
                start_new_session=True,  # Ctrl-C in a terminal is deployer's to handle
                preexec_fn=self._preexec,  # only a prctl: no orphan session if deployer is killed
            )  # fmt: skip

        return self._spawner.submit(start).result()

    def close(self) -> None:
        """Stop every master (targets first), then the agents and the broker; remove the files."""
        with self._lock:
            self._closed = True
            masters = list(self._masters.values())
            self._masters.clear()
        for master in reversed(masters):
            master.stop()
        self._spawner.shutdown(wait=True)
        self._stack.close()
