"""The one way deployer opens SSH: dial, hop-by-hop handshake, host key check, authentication.

One TCP connection to the first hop (directly, or through a proxy); every further hop is a
``direct-tcpip`` channel opened on the previous hop's transport (what OpenSSH's ProxyJump does).
Host keys are checked on every hop before authenticating. push, keyscan, setup gitlab and the
tunnel's check of its jump host all connect through here.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import paramiko

from deployer.errors import (
    DeployerError,
    HostKeyError,
    reason,
)
from deployer.ssh.connection import Connection
from deployer.ssh.contact import first_hop_socket
from deployer.ssh.credentials import Credentials
from deployer.ssh.failures import (
    channel_failed,
    dropped_while_authenticating,
    forward_prohibited,
    handshake_failed,
    key_refused,
    no_key,
    nothing_listens,
)
from deployer.ssh.hostkeys import HostKeyPolicy, fingerprint
from deployer.ssh.route import Route
from deployer.ssh.stalls import stall_free_transport

# paramiko logs handshake failures with tracebacks (its transport thread, to stderr when no
# handler is set); we report them ourselves in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

# AES-GCM is the fastest cipher paramiko speaks (no chacha20); CTR stays as the fallback.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


KEEPALIVE_SECONDS = 15


@dataclass(frozen=True)
class ConnectOptions:
    """Everything a connection needs besides the route."""

    credentials: Credentials
    host_keys: HostKeyPolicy
    keyscan_hint: str
    timeout: float = 10.0
    on_notice: Callable[[str], None] = field(default=lambda line: None)
    hop_credentials: tuple[Credentials, ...] = ()  # per hop, first hop first; else credentials
    # what to do when a hop refuses the key ({user}: the login name)
    auth_hint: str = "the public key is in ~{user}/.ssh/authorized_keys there"

    def credentials_for(self, index: int) -> Credentials:
        """The keys for hop index (a jump host may need another key than the target)."""
        if index < len(self.hop_credentials):
            return self.hop_credentials[index]
        return self.credentials


def _open_hop_channel(
    transport: paramiko.Transport, route: Route, index: int, timeout: float
) -> paramiko.Channel:
    """Open a direct-tcpip channel from hop index-1 to hop index."""
    hop = route.hops[index]
    via = route.hops[index - 1]
    try:
        return transport.open_channel(
            "direct-tcpip", (hop.host, hop.port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.ChannelException as exc:
        if exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
            raise forward_prohibited(via, hop) from exc
        raise nothing_listens(via, hop) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise channel_failed(via, hop, reason(exc)) from exc


def _handshake(sock: Any, route: Route, index: int, options: ConnectOptions) -> paramiko.Transport:
    hop = route.hops[index]
    what = route.describe(index)
    transport = stall_free_transport(sock)
    transport.banner_timeout = options.timeout
    transport.handshake_timeout = options.timeout
    security = transport.get_security_options()
    security.ciphers = [c for c in PREFERRED_CIPHERS if c in security.ciphers] + [
        c for c in security.ciphers if c not in PREFERRED_CIPHERS
    ]
    known_as = hop.known_as  # HostKeyAlias: a tunnel port's key pinned under a stable name
    known_algorithms = options.host_keys.algorithms_for(*known_as)
    if known_algorithms:
        offered = list(security.key_types)
        security.key_types = [a for a in known_algorithms if a in offered] + [
            a for a in offered if a not in known_algorithms
        ]
    try:
        transport.start_client(timeout=options.timeout)
        if not transport.is_active():
            raise paramiko.SSHException(f"no SSH handshake within {options.timeout:g} s")
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise handshake_failed(route, index, reason(exc)) from exc
    try:
        notice = options.host_keys.check(
            what, *known_as, key.get_name(), key.asbytes(), options.keyscan_hint
        )
    except HostKeyError:
        transport.close()
        raise
    if notice:
        options.on_notice(notice)
    _authenticate(transport, route, index, options)
    transport.set_keepalive(KEEPALIVE_SECONDS)
    return transport


def _authenticate(
    transport: paramiko.Transport, route: Route, index: int, options: ConnectOptions
) -> None:
    hop = route.hops[index]
    candidates = options.credentials_for(index).candidates()
    if not candidates:
        transport.close()
        raise no_key(route, index)
    for key in candidates:
        try:
            remaining = transport.auth_publickey(hop.user, key)
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise dropped_while_authenticating(route, index, reason(exc)) from exc
        if not remaining and transport.is_authenticated():
            return
    transport.close()
    offered = [fingerprint(k.asbytes()) for k in candidates]
    raise key_refused(route, index, offered, options.auth_hint)


def connect(
    route: Route, options: ConnectOptions, first: socket.socket | None = None
) -> Connection:
    """Connect hop by hop, verifying each host key and authenticating, and return the target.

    first: the connection to the first hop when the caller has made it already.
    """
    transports: list[paramiko.Transport] = []
    try:
        sock: Any = first if first is not None else first_hop_socket(route, options.timeout)
        for index in range(len(route.hops)):
            if index > 0:
                sock = _open_hop_channel(transports[-1], route, index, options.timeout)
            transports.append(_handshake(sock, route, index, options))
    except BaseException:
        for transport in reversed(transports):
            transport.close()
        raise
    return Connection(route, transports)


@contextmanager
def connected(
    route: Route, options: ConnectOptions, first: socket.socket | None = None
) -> Iterator[Connection]:
    """connect() as a context manager that always closes every hop."""
    connection = connect(route, options, first)
    try:
        yield connection
    finally:
        connection.close()


def scan_host_keys(
    route: Route,
    options: ConnectOptions,
    algorithms: Sequence[str],
    on_hop: Callable[[int, list[tuple[str, bytes]]], None] = lambda index, keys: None,
) -> list[tuple[int, str, bytes]]:
    """Collect every hop's host keys, one handshake per algorithm; (hop index, type, blob).

    on_hop sees each hop's keys before that hop is logged in to (to reach the next one); it may
    raise to stop there. Logins check host keys with options.host_keys.
    """
    found: list[tuple[int, str, bytes]] = []
    transports: list[paramiko.Transport] = []
    try:
        for index in range(len(route.hops)):
            for algorithm in algorithms:
                sock: Any = (
                    first_hop_socket(route, options.timeout)
                    if index == 0
                    else _open_hop_channel(transports[-1], route, index, options.timeout)
                )
                probe = stall_free_transport(sock)
                probe.get_security_options().key_types = [algorithm]
                try:
                    probe.start_client(timeout=options.timeout)
                    key = probe.get_remote_server_key()
                    found.append((index, key.get_name(), key.asbytes()))
                except (paramiko.SSHException, EOFError, OSError):
                    pass  # the server has no key of this type
                finally:
                    probe.close()
            on_hop(index, [(key_type, blob) for i, key_type, blob in found if i == index])
            if index < len(route.hops) - 1:
                # to reach the next hop we must log in here; verified keys only
                sock = (
                    first_hop_socket(route, options.timeout)
                    if index == 0
                    else _open_hop_channel(transports[-1], route, index, options.timeout)
                )
                transports.append(_handshake(sock, route, index, options))
    except DeployerError:
        for transport in reversed(transports):
            transport.close()
        raise
    for transport in reversed(transports):
        transport.close()
    return found
