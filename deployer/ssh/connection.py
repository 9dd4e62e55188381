"""SSH connections along a route, and commands on the far end (the paramiko boundary).

One TCP connection to the first hop; every further hop is a ``direct-tcpip`` channel opened on
the previous hop's transport (what OpenSSH's ProxyJump does). Host keys are checked on every
hop before authenticating. paramiko and socket errors are translated here, and only here.
"""

from __future__ import annotations

import contextlib
import logging
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import paramiko

from deployer.errors import AuthError, ConnectError, DeployerError, HostKeyError, TransferError
from deployer.remote.executor import OutputSink, RunResult
from deployer.ssh.hostkeys import HostKeyPolicy, fingerprint
from deployer.ssh.proxy import dial, open_through
from deployer.ssh.route import Route

# paramiko logs handshake failures with tracebacks; we report them ourselves in one line.
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
READ_CHUNK = 32768


@dataclass(frozen=True)
class Credentials:
    """What we can authenticate with: in-memory keys first, then a local ssh-agent."""

    keys: tuple[paramiko.PKey, ...] = ()
    use_agent: bool = False

    def candidates(self) -> list[paramiko.PKey]:
        """Keys to offer, in order (the agent is asked at connection time)."""
        keys = list(self.keys)
        if self.use_agent:
            # no usable agent: the in-memory keys are all we have
            with contextlib.suppress(paramiko.SSHException):
                keys.extend(paramiko.Agent().get_keys())
        return keys


@dataclass(frozen=True)
class ConnectOptions:
    """Everything a connection needs besides the route."""

    credentials: Credentials
    host_keys: HostKeyPolicy
    keyscan_hint: str
    timeout: float = 10.0
    on_notice: Callable[[str], None] = field(default=lambda line: None)
    hop_credentials: tuple[Credentials, ...] = ()  # per hop, first hop first; else credentials

    def credentials_for(self, index: int) -> Credentials:
        """The keys for hop index (a jump host may need another key than the target)."""
        if index < len(self.hop_credentials):
            return self.hop_credentials[index]
        return self.credentials


class _ChannelWriter:
    """A minimal binary file object over a channel's stdin, for streaming uploads."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> int:
        self._channel.sendall(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: sendall already handed the bytes to the transport."""


class Connection:
    """An authenticated session with a target, possibly through jump hosts."""

    def __init__(self, route: Route, transports: list[paramiko.Transport]) -> None:
        self.route = route
        self.label = str(route.target)
        self._transports = transports

    @property
    def transport(self) -> paramiko.Transport:
        """The target's transport (the last hop)."""
        return self._transports[-1]

    def close(self) -> None:
        """Close every hop, innermost first."""
        for transport in reversed(self._transports):
            transport.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        script: str,
        *,
        upload: Callable[[BinaryIO], object] | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run a command on the target; optionally stream stdin from upload(writer)."""
        try:
            channel = self.transport.open_session(timeout=30)
            # our scripts are POSIX sh whatever the login shell is (fish, csh, ...)
            _exec_without_reply(channel, f"/bin/sh -c {shlex.quote(script)}")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"lost the connection to {self.label}: {_reason(exc)}") from exc
        uploader = _start_upload(channel, upload) if upload else None
        try:
            status, out, err = _collect(channel, on_output, timeout, self.label)
        finally:
            channel.close()
        if uploader is not None:
            uploader.join(timeout=10)
            if isinstance(uploader.error, DeployerError):
                raise uploader.error  # e.g. the artifact changed while being sent: its own exit code
            if uploader.error is not None and status == 0:
                raise TransferError(
                    f"upload to {self.label} failed: {_reason(uploader.error)} — run the push again"
                ) from uploader.error
        return RunResult(status, out, err)


def _exec_without_reply(channel: paramiko.Channel, command: str) -> None:
    """Start a command without waiting for the server's reply, like OpenSSH's client does.

    paramiko's exec_command waits one round trip for the reply; stdin may follow the request at
    once (the server buffers it). A refused command closes the channel, which _collect reports.
    """
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("exec")
    message.add_boolean(False)
    message.add_string(command)
    channel.transport._send_user_message(message)


class _Uploader(threading.Thread):
    def __init__(self, channel: paramiko.Channel, upload: Callable[[BinaryIO], object]) -> None:
        super().__init__(name="deployer-upload", daemon=True)
        self.channel = channel
        self.upload = upload
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.upload(_ChannelWriter(self.channel))  # type: ignore[arg-type]
            self.channel.shutdown_write()
        except BaseException as exc:  # reported by the caller, which owns the channel
            self.error = exc
            self.channel.close()


def _start_upload(channel: paramiko.Channel, upload: Callable[[BinaryIO], object]) -> _Uploader:
    uploader = _Uploader(channel, upload)
    uploader.start()
    return uploader


_TAIL = 65536


def _collect(
    channel: paramiko.Channel, on_output: OutputSink | None, timeout: float | None, label: str
) -> tuple[int, bytes, bytes]:
    """Read stdout/stderr until the command exits; keep the tails, stream if asked."""
    deadline = None if timeout is None else time.monotonic() + timeout
    buffers = {"stdout": bytearray(), "stderr": bytearray()}
    readers = {"stdout": channel.recv, "stderr": channel.recv_stderr}
    ready = {"stdout": channel.recv_ready, "stderr": channel.recv_stderr_ready}
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TransferError(f"command on {label} did not finish within {timeout:.0f} s")
        select.select([channel], [], [], 0.2)
        progressed = False
        for name in ("stdout", "stderr"):
            while ready[name]():
                chunk = readers[name](READ_CHUNK)
                if not chunk:
                    break
                progressed = True
                if on_output is not None:
                    on_output(name, chunk)
                buffers[name] += chunk
                if on_output is not None:  # streamed output: keep only a tail for messages
                    del buffers[name][:-_TAIL]
        if (
            channel.exit_status_ready()
            and not channel.recv_ready()
            and not channel.recv_stderr_ready()
        ):
            break
        if channel.closed and not progressed and not channel.exit_status_ready():
            raise ConnectError(f"the connection to {label} closed while a command was running")
    return channel.recv_exit_status(), bytes(buffers["stdout"]), bytes(buffers["stderr"])


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.rstrip(".")


def _tcp_socket(route: Route, timeout: float) -> socket.socket:
    first = route.hops[0]
    what = route.describe(0)
    if route.proxy is not None:
        return open_through(
            route.proxy, first.host, first.port, user=first.user, timeout=timeout, hop=what
        )
    return dial(
        first.host, first.port, timeout, what, "is sshd listening on that port?", ConnectError
    )


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
            raise ConnectError(
                f"jump host {via} refused to forward to {hop.address} (administratively prohibited)"
                f' — allow it with permitopen="{hop.address}" on the jump host\'s key'
            ) from exc
        raise ConnectError(
            f"nothing listens on {hop.address} on {via} — is the tunnel up?"
            " (check the intranet server's ssh -R / deployer tunnel)"
        ) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise ConnectError(
            f"jump host {via} did not open a channel to {hop.address}: {_reason(exc)}"
        ) from exc


def _handshake(sock: Any, route: Route, index: int, options: ConnectOptions) -> paramiko.Transport:
    hop = route.hops[index]
    what = route.describe(index)
    transport = paramiko.Transport(sock)
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
        behind = " (the tunnel is up but nothing answers behind it — is sshd running on the intranet server?)"
        raise ConnectError(
            f"{what} closed the connection during the SSH handshake: {_reason(exc)}"
            + (behind if index > 0 else " — is this port an SSH server?")
        ) from exc
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
    what = route.describe(index)
    candidates = options.credentials_for(index).candidates()
    if not candidates:
        transport.close()
        jump = "SSH_JUMP_PRIVATE_KEY or --jump-key-file, or " if index < len(route.jumps) else ""
        raise AuthError(
            f"no key to log in to {what} — set {jump}SSH_PRIVATE_KEY, pass --key-file,"
            " or start ssh-agent"
        )
    for key in candidates:
        try:
            remaining = transport.auth_publickey(hop.user, key)
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise ConnectError(
                f"{what} dropped the connection while authenticating: {_reason(exc)}"
            ) from exc
        if not remaining and transport.is_authenticated():
            return
    transport.close()
    offered = ", ".join(fingerprint(k.asbytes()) for k in candidates)
    raise AuthError(
        f"{what} refused the key ({offered}) for user '{hop.user}' — check the user name and that"
        f" the public key is in ~{hop.user}/.ssh/authorized_keys there"
    )


def connect(route: Route, options: ConnectOptions) -> Connection:
    """Connect hop by hop, verifying each host key and authenticating, and return the target."""
    transports: list[paramiko.Transport] = []
    try:
        sock: Any = _tcp_socket(route, options.timeout)
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
def connected(route: Route, options: ConnectOptions) -> Iterator[Connection]:
    """connect() as a context manager that always closes every hop."""
    connection = connect(route, options)
    try:
        yield connection
    finally:
        connection.close()


def scan_host_keys(
    route: Route, options: ConnectOptions, algorithms: Sequence[str]
) -> list[tuple[int, str, bytes]]:
    """Collect every hop's host keys, one handshake per algorithm; (hop index, type, blob)."""
    found: list[tuple[int, str, bytes]] = []
    transports: list[paramiko.Transport] = []
    try:
        for index in range(len(route.hops)):
            for algorithm in algorithms:
                sock: Any = (
                    _tcp_socket(route, options.timeout)
                    if index == 0
                    else _open_hop_channel(transports[-1], route, index, options.timeout)
                )
                probe = paramiko.Transport(sock)
                probe.get_security_options().key_types = [algorithm]
                try:
                    probe.start_client(timeout=options.timeout)
                    key = probe.get_remote_server_key()
                    found.append((index, key.get_name(), key.asbytes()))
                except (paramiko.SSHException, EOFError, OSError):
                    pass  # the server has no key of this type
                finally:
                    probe.close()
            if index < len(route.hops) - 1:
                # to reach the next hop we must log in here; verified keys only
                sock = (
                    _tcp_socket(route, options.timeout)
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
