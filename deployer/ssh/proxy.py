"""The first hop's way out: an HTTP CONNECT proxy, a SOCKS5 proxy or a ProxyCommand.

Each opens a plain byte stream to HOST:PORT and returns it as a real socket, handed to paramiko
unchanged (no relay thread, no packet splitting). Proxy replies are read exactly: the HTTP
response header up to its blank line, SOCKS replies by their length, so not one byte of the SSH
banner behind them is consumed. Failures are ProxyError lines naming the proxy and the hop.
"""

from __future__ import annotations

import atexit
import base64
import collections
import contextlib
import ipaddress
import os
import re
import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from deployer.environment import child_environment
from deployer.errors import ConfigError, DeployerError, ProxyError

ProxyKind = Literal["http", "socks5", "socks5h", "command"]

PASSWORD_ENV = "DEPLOYER_PROXY_PASSWORD"
_DEFAULT_PORTS = {"socks5": 1080, "socks5h": 1080}
_MAX_HEADER = 16384
_TOKEN = re.compile(r"%(.)", re.S)


@dataclass(frozen=True)
class ProxySpec:
    """How the first hop is reached: a proxy URL's parts, or a ProxyCommand template."""

    kind: ProxyKind
    host: str = ""
    port: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    command: str = ""

    def __str__(self) -> str:
        """The proxy as shown in messages: the URL without its password, or the command."""
        if self.kind == "command":
            return f"ProxyCommand `{self.command}`"
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{self.kind}://{user}{host}:{self.port}"


def parse_proxy(text: str, env: Mapping[str, str], option: str = "--proxy") -> ProxySpec:
    """Parse http://[USER[:PASS]@]HOST:PORT or socks5(h)://...; the password may come from env."""
    value = text.strip()
    scheme, sep, _ = value.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(
            f"{option} {_without_password(value)!r} has no scheme — write http://HOST:PORT, socks5://HOST:PORT"
            " or socks5h://HOST:PORT"
        )
    if scheme in ("https", "socks4", "socks4a", "socks"):
        hint = "http:// (CONNECT in clear to the proxy)" if scheme == "https" else "socks5h://"
        raise ConfigError(f"{option}: {scheme}:// proxies are not supported — use {hint}")
    if scheme not in ("http", "socks5", "socks5h"):
        raise ConfigError(
            f"{option} {_without_password(value)!r}: unknown scheme {scheme!r} — use http://,"
            " socks5:// or socks5h://"
        )
    shown = _without_password(value)
    # The last @ ends the user info, so a password may hold '/', '@' or ':' as typed; only the
    # part after it is a URL (and only that part ever shows in a message).
    userinfo, _, location = value.partition("://")[2].rpartition("@")
    try:
        parts = urlsplit(f"{scheme}://{location}")
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{option} {shown!r}: {exc}") from exc
    if not parts.hostname:
        raise ConfigError(f"{option} {shown!r} names no proxy host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"{option} {shown!r}: a proxy URL has no path — write {scheme}://HOST:PORT"
        )
    port = port or _DEFAULT_PORTS.get(scheme)
    if not port:
        raise ConfigError(
            f"{option} {shown!r} has no port — add one, e.g. {scheme}://{parts.hostname}:3128"
        )
    user_text, _, password_text = userinfo.partition(":")
    username = unquote(user_text)
    password = env.get(PASSWORD_ENV) or unquote(password_text)
    if password and not username:
        raise ConfigError(
            f"{PASSWORD_ENV} is set but {option} names no user — write {scheme}://USER@HOST:PORT"
        )
    if scheme.startswith("socks5") and (
        len(username.encode()) > 255 or len(password.encode()) > 255
    ):
        raise ConfigError(f"{option}: SOCKS5 user names and passwords are at most 255 bytes")
    return ProxySpec(scheme, parts.hostname, port, username, password)  # type: ignore[arg-type]


def _without_password(url: str) -> str:
    """A URL fit for a message: USER:anything@ up to the last @ becomes USER:***@."""
    scheme, sep, rest = url.partition("://")
    prefix = f"{scheme}://" if sep else ""
    userinfo, at, location = (rest if sep else url).rpartition("@")
    if not (at and ":" in userinfo):
        return url
    return f"{prefix}{userinfo.partition(':')[0]}:***@{location}"


def parse_proxy_command(command: str, option: str = "--proxy-command") -> ProxySpec:
    """A ProxyCommand template; %h %p %r %% are checked here and expanded per connection."""
    if not command.strip():
        raise ConfigError(f"{option} is empty — e.g. {option} 'ssh -W %h:%p bastion'")
    for match in _TOKEN.finditer(command):
        if match[1] not in "hpr%":
            raise ConfigError(
                f"{option} {command!r}: unknown token %{match[1]} — use %h (host), %p (port),"
                " %r (user) or %% (a percent sign)"
            )
    return ProxySpec("command", command=command)


def expand_command(template: str, host: str, port: int, user: str) -> str:
    """Expand %h, %p, %r and %% as ssh does in ProxyCommand, host and user shell-quoted.

    Routes only hold checked host and user names (ssh.route), for which quoting changes
    nothing; it is the second wall against a name that would otherwise run as a command.
    """
    values = {"h": shlex.quote(host), "p": str(port), "r": shlex.quote(user), "%": "%"}
    return _TOKEN.sub(lambda m: values[m[1]], template)


# ---------------------------------------------------------------------------- opening


def open_through(
    proxy: ProxySpec, host: str, port: int, *, user: str, timeout: float, hop: str
) -> socket.socket:
    """A connected stream to host:port through the proxy, ready for SSH (ProxyError otherwise)."""
    if proxy.kind == "command":
        return _spawn(proxy, expand_command(proxy.command, host, port, user), timeout, hop)
    sock = dial(
        proxy.host, proxy.port, timeout, f"the proxy {proxy} (for {hop})",
        "is it running on that port?", ProxyError,
    )  # fmt: skip
    try:
        if proxy.kind == "http":
            _http_connect(sock, proxy, host, port, hop)
        else:
            _socks5_connect(sock, proxy, host, port, hop)
    except TimeoutError as exc:
        sock.close()
        raise ProxyError(
            f"{proxy} did not answer within {timeout:g} s while opening the way to {hop}"
        ) from exc
    except OSError as exc:
        sock.close()
        raise ProxyError(
            f"{proxy} dropped the connection while opening the way to {hop}: {exc.strerror or exc}"
        ) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def dial(
    host: str, port: int, timeout: float, what: str, hint: str, error: type[DeployerError]
) -> socket.socket:
    """A TCP connection tuned for SSH, or error with a one-line reason; what names the peer,
    hint says what to check when it refuses."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise error(
            f"cannot resolve {host} ({what}): {exc.strerror} — check the host name"
        ) from exc
    except ConnectionRefusedError as exc:
        raise error(f"{what} refused the connection on {address} — {hint}") from exc
    except TimeoutError as exc:
        raise error(
            f"{what} did not answer within {timeout:g} s on {address}"
            " — check the address, the port and any firewall in between"
        ) from exc
    except OSError as exc:
        raise error(f"cannot reach {what} on {address}: {exc.strerror or exc}") from exc
    # no socket options by default; Nagle + delayed ACK would cost ~40 ms per exchange
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return _acking_at_once(sock)


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges what it receives at once (Linux's TCP_QUICKACK).

    A stock sshd sets TCP_NODELAY only on a connection with a terminal, so on ours (no terminal)
    its second small packet in a row waits until we acknowledge the first, and Linux delays that
    ACK by up to 40 ms: a jump host answering a channel open, a login or a command's exit stalls
    for 40 ms each time. The kernel drops back to delayed ACKs by itself, so every read re-arms it.
    """

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        """Read, then acknowledge at once again."""
        data = super().recv(bufsize, flags)
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data


def _acking_at_once(sock: socket.socket) -> socket.socket:
    """sock as a QuickAckSocket (the same connection), where the system has TCP_QUICKACK."""
    if _QUICKACK is None:
        return sock
    timeout = sock.gettimeout()
    quick = QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    quick.settimeout(timeout)
    with contextlib.suppress(OSError):
        quick.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    return quick


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _http_connect(sock: socket.socket, proxy: ProxySpec, host: str, port: int, hop: str) -> None:
    target = _authority(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username:
        token = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    header = read_http_header(sock)
    status_line = header.split(b"\r\n", 1)[0].decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)", status_line)
    if not match:
        raise ProxyError(
            f"{proxy} is not an HTTP proxy (it answered {status_line[:60]!r} to CONNECT) — check"
            f" the proxy URL (for {hop})"
        )
    code, reason = int(match[1]), match[2].strip()
    if code == 200:
        return
    said = f"{code} {reason}".strip()
    if code in (401, 407):  # 407 is the standard; tinyproxy answers 401 to wrong credentials
        fix = (
            f"check the user name and {PASSWORD_ENV}"
            if proxy.username
            else f"put the user in the URL (http://USER@{_authority(proxy.host, proxy.port)}) and"
            f" the password in {PASSWORD_ENV}"
        )
        who = f" for user '{proxy.username}'" if proxy.username else ""
        raise ProxyError(
            f"the proxy {proxy} refused the credentials{who} ({said}) for {hop} — {fix}"
        )
    if code == 403:
        raise ProxyError(
            f"the proxy {proxy} refused CONNECT to {target} ({said}) for {hop} — its allow-list"
            " does not include that host and port: ask the proxy's admin to allow it"
        )
    if code in (500, 502, 503, 504):  # tinyproxy says "500 Unable to connect"
        raise ProxyError(
            f"the proxy {proxy} could not reach {target} ({said}) for {hop} — check the host"
            " name and port as the proxy sees them"
        )
    raise ProxyError(f"the proxy {proxy} answered {said} to CONNECT {target} for {hop}")


def read_http_header(sock: socket.socket) -> bytes:
    """Read an HTTP response header through its blank line, and not one byte further."""
    header = bytearray()
    while True:
        peeked = sock.recv(4096, socket.MSG_PEEK)
        if not peeked:
            raise ConnectionResetError(0, "closed before the end of the response header")
        seen = bytes(header[-3:]) + peeked
        end = seen.find(b"\r\n\r\n")
        take = len(peeked) if end < 0 else end + 4 - len(header[-3:])
        header += _recv_exactly(sock, take)
        if end >= 0:
            return bytes(header)
        if len(header) > _MAX_HEADER:
            raise ConnectionResetError(0, f"response header longer than {_MAX_HEADER} bytes")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError(0, "closed in the middle of a reply")
        data += chunk
    return bytes(data)


_SOCKS_REPLIES = {
    1: "general failure",
    2: "connection not allowed by its rules",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused by the destination",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


def _socks5_connect(sock: socket.socket, proxy: ProxySpec, host: str, port: int, hop: str) -> None:
    methods = b"\x00\x02" if proxy.username else b"\x00"
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    version, method = _recv_exactly(sock, 2)
    if version != 5:
        raise ProxyError(f"{proxy} is not a SOCKS5 proxy — check the proxy URL (for {hop})")
    if method == 0xFF:
        fix = (
            "it accepts none of the methods offered (no authentication, user name/password)"
            if proxy.username
            else f"it requires a user name and password: write socks5h://USER@{_authority(proxy.host, proxy.port)}"
            f" and set {PASSWORD_ENV}"
        )
        raise ProxyError(f"the SOCKS proxy {proxy} refused to serve {hop} — {fix}")
    if method == 2:
        user, password = proxy.username.encode(), proxy.password.encode()
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        _, status = _recv_exactly(sock, 2)
        if status != 0:
            raise ProxyError(
                f"the SOCKS proxy {proxy} refused the user name and password for user"
                f" '{proxy.username}' (for {hop}) — check the user and {PASSWORD_ENV}"
            )
    elif method != 0:
        raise ProxyError(
            f"the SOCKS proxy {proxy} chose an unsupported method {method} (for {hop})"
        )
    sock.sendall(b"\x05\x01\x00" + _socks_address(proxy, host, port, hop))
    version, reply, _, kind = _recv_exactly(sock, 4)
    length = {1: 4, 4: 16}.get(kind) or _recv_exactly(sock, 1)[0]
    _recv_exactly(sock, length + 2)  # bound address and port: not needed, but must be consumed
    if reply != 0:
        said = _SOCKS_REPLIES.get(reply, f"error {reply}")
        hint = (
            " — its rules do not allow this destination: ask the proxy's admin"
            if reply == 2
            else " — check the host name and port as the proxy sees them"
        )
        raise ProxyError(
            f"the SOCKS proxy {proxy} could not connect to {_authority(host, port)} for {hop}:"
            f" {said}{hint}"
        )


def _socks_address(proxy: ProxySpec, host: str, port: int, hop: str) -> bytes:
    """The DST.ADDR/DST.PORT of a request: a name for socks5h (remote DNS), else an address."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if proxy.kind == "socks5h":
            name = host.encode("idna")
            return b"\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
        try:
            resolved = str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
        except socket.gaierror as exc:
            raise ProxyError(
                f"cannot resolve {host} ({hop}) locally: {exc.strerror} — use socks5h:// to let"
                f" the proxy resolve it"
            ) from exc
        address = ipaddress.ip_address(resolved.split("%")[0])
    kind = b"\x01" if address.version == 4 else b"\x04"
    return kind + address.packed + port.to_bytes(2, "big")


# ---------------------------------------------------------------------------- ProxyCommand

_STDERR_TAIL = 20
_children: list[subprocess.Popen[bytes]] = []
_children_lock = threading.Lock()


def _spawn(proxy: ProxySpec, command: str, timeout: float, hop: str) -> socket.socket:
    """Run the command on one end of a socketpair and return the other end once it speaks."""
    ours, theirs = socket.socketpair()
    shell = os.environ.get("SHELL") or "/bin/sh"
    try:
        # like ssh: the user's shell runs the command; its stdin and stdout are the stream
        process = subprocess.Popen(
            [shell, "-c", f"exec {command}"],
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=subprocess.PIPE,
            env=child_environment(os.environ),
        )
    except OSError as exc:
        ours.close()
        raise ProxyError(f"cannot run {proxy} for {hop}: {exc.strerror or exc}") from exc
    finally:
        theirs.close()
    tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
    _watch(process, tail)
    deadline = time.monotonic() + timeout
    while True:
        readable, _, _ = select.select([ours], [], [], max(0.0, deadline - time.monotonic()))
        if readable:
            if ours.recv(1, socket.MSG_PEEK):
                return ours  # the SSH banner (or the first byte of it) has arrived
            ours.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2)
            break
        if time.monotonic() >= deadline:
            ours.close()
            _stop(process)
            raise ProxyError(
                f"{proxy} sent nothing within {timeout:g} s for {hop} — an SSH server speaks"
                f" first: check the command{_last(tail)}"
            )
    status = process.poll()
    said = "closed its output" if status is None else f"exited with status {status}"
    raise ProxyError(f"{proxy} {said} before {hop} answered{_last(tail)}")


def _last(tail: collections.deque[str]) -> str:
    time.sleep(0.05)  # the stderr reader may still be collecting the last line
    lines = [line for line in tail if line.strip()]
    return f": {lines[-1].strip()}" if lines else ""


def _watch(process: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
    """Keep the command's last stderr lines and reap it when it ends; stop it at our exit."""
    with _children_lock:
        _children.append(process)

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            tail.append(line.decode(errors="replace"))
        process.wait()
        with _children_lock:
            _children.remove(process)

    threading.Thread(target=drain, name="deployer-proxy-command", daemon=True).start()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()


@atexit.register
def _stop_children() -> None:
    """A ProxyCommand that ignores the end of its input must not outlive deployer."""
    with _children_lock:
        running = list(_children)
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)  # ssh -W and nc end by themselves once their input closes
        _stop(process)


# ---------------------------------------------------------------------------- relaying


def relay(sock: socket.socket, infd: int, outfd: int) -> None:
    """Copy infd to sock and sock to outfd until both directions end (for proxy-connect)."""
    sock.settimeout(None)
    open_in, open_out = True, True
    while open_out:
        watched: list[socket.socket | int] = [sock, infd] if open_in else [sock]
        readable, _, _ = select.select(watched, [], [])
        if infd in readable:
            data = os.read(infd, 65536)
            if data:
                sock.sendall(data)
            else:
                open_in = False
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
        if sock in readable:
            data = sock.recv(65536)
            if not data:
                open_out = False
            view = memoryview(data)
            while view:
                view = view[os.write(outfd, view) :]


def proxy_command_line(proxy: ProxySpec, python: str) -> str:
    """An OpenSSH ProxyCommand running this proxy (the password travels in the environment)."""
    if proxy.kind == "command":
        return proxy.command
    words = [python, "-m", "deployer", "proxy-connect", "--proxy", str(proxy)]
    # ssh expands % tokens in ProxyCommand: a literal percent sign must be doubled
    return " ".join(shlex.quote(word).replace("%", "%%") for word in words) + " %h %p"
