"""Remote forwards as OpenSSH's -R writes them: parsing, and the addresses sshd matches them by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deployer.addresses import bracket, unbracket
from deployer.errors import ConfigError

_LOOPBACK_BINDS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "*")


@dataclass(frozen=True)
class Forward:
    """One remote forward: the jump host listens on [bind:]port, we connect to host:host_port."""

    port: int
    host: str
    host_port: int
    bind: str | None = None  # None: not given (sshd listens on loopback); "" or "*": everywhere

    @property
    def spec(self) -> str:
        """The OpenSSH -R text."""
        bind = "" if self.bind is None else f"{bracket(self.bind)}:"
        return f"{bind}{self.port}:{bracket(self.host)}:{self.host_port}"

    @property
    def listen_host(self) -> str:
        """The listen address as sshd's permitlisten matches it ('localhost' when none given)."""
        if self.bind is None:
            return "localhost"
        return "*" if self.bind in WILDCARD_BINDS else self.bind

    @property
    def probe_host(self) -> str:
        """Where, on the jump host, a connection reaches this forward's listener."""
        if self.bind in (None, "localhost", "127.0.0.1", "0.0.0.0", *WILDCARD_BINDS):
            return "127.0.0.1"
        if self.bind in ("::", "::1"):
            return "::1"
        return str(self.bind)

    @property
    def needs_gateway_ports(self) -> bool:
        """Whether the listener is meant to be reachable from other hosts (GatewayPorts)."""
        return self.bind is not None and self.bind not in _LOOPBACK_BINDS

    def permitlisten(self) -> str:
        """The authorized_keys permitlisten value allowing this forward."""
        return f"{bracket(self.listen_host)}:{self.port}"

    def permitopen(self) -> str:
        """The permitopen value for the tunnel key's own end-to-end check of this forward."""
        return f"{bracket(self.probe_host)}:{self.port}"

    def __str__(self) -> str:
        return self.spec


def _split_fields(text: str) -> list[str]:
    """Split on ':' outside [brackets] (OpenSSH's forward syntax, IPv6 in brackets)."""
    fields: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "[":
            end = text.find("]", i)
            if end < 0:
                raise ValueError("an opening [ has no closing ]")
            current += text[i : end + 1]
            i = end + 1
            continue
        if char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
        i += 1
    fields.append(current)
    return fields


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"-R {spec!r}: {what} {text!r} is not a number")
    port = int(text)
    if port == 0 and what == "port":
        raise ConfigError(
            f"-R {spec!r}: port 0 asks the jump host for a random port — a tunnel needs a fixed"
            " one that CI can reach, e.g. -R 22022:localhost:22"
        )
    if not 0 < port < 65536:
        raise ConfigError(f"-R {spec!r}: {what} {port} is out of range (1-65535)")
    return port


def parse_forward(text: str) -> Forward:
    """Parse OpenSSH's -R syntax: [BIND:]PORT:HOST:HOSTPORT (IPv6 addresses in [brackets])."""
    spec = text.strip()
    usage = "use [BIND:]PORT:HOST:HOSTPORT, e.g. -R 22022:localhost:22"
    try:
        fields = _split_fields(spec)
    except ValueError as exc:
        raise ConfigError(f"-R {spec!r}: {exc} — {usage}") from None
    if any(f.startswith("/") for f in fields):
        raise ConfigError(f"-R {spec!r}: Unix socket forwarding is not supported — {usage}")
    if len(fields) in (1, 2) and fields[-1].isdigit():
        raise ConfigError(
            f"-R {spec!r}: reverse dynamic (SOCKS) forwarding is not supported — {usage}"
        )
    if len(fields) == 3:
        bind: str | None = None
        port_text, host, host_port_text = fields
    elif len(fields) == 4:
        bind = unbracket(fields[0])
        port_text, host, host_port_text = fields[1:]
    else:
        raise ConfigError(f"-R {spec!r} is not a remote forward — {usage}")
    host = unbracket(host)
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"-R {spec!r}: the host to connect to is missing — {usage}")
    if bind is not None and any(c.isspace() for c in bind):
        raise ConfigError(f"-R {spec!r}: the bind address contains spaces — {usage}")
    port = _port(port_text, "port", spec)
    host_port = _port(host_port_text, "host port", spec)
    return Forward(port=port, host=host, host_port=host_port, bind=bind)


def parse_forwards(values: Sequence[str]) -> tuple[Forward, ...]:
    """Parse every -R (whitespace- or comma-separated values too); refuse duplicate listeners."""
    forwards: list[Forward] = []
    for value in values:
        for item in value.replace(",", " ").split():
            forward = parse_forward(item)
            for other in forwards:
                if other.port == forward.port and other.listen_host == forward.listen_host:
                    raise ConfigError(f"-R {forward} and -R {other} listen on the same port")
            forwards.append(forward)
    return tuple(forwards)


def forwards_key(forwards: Sequence[Forward]) -> str:
    """A stable name for a set of forwards (the jump host's record of the session holding them)."""
    return "-".join(str(p) for p in sorted({f.port for f in forwards}))
