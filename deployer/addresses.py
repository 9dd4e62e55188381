"""Host and port text: brackets for IPv6, and the one parser of local listen addresses."""

from __future__ import annotations

from deployer.errors import ConfigError


def bracket(host: str) -> str:
    """An address as OpenSSH writes it next to a port (IPv6 in [brackets])."""
    return f"[{host}]" if ":" in host else host


def unbracket(value: str) -> str:
    """The address inside [brackets], if any."""
    return value[1:-1] if value.startswith("[") and value.endswith("]") else value


def parse_listen_address(text: str, option: str) -> tuple[str, int]:
    """[HOST:]PORT where deployer listens (--listen, --healthz); no HOST (or an empty one) is 127.0.0.1.

    Loopback unless asked: a service on every interface takes an explicit 0.0.0.0 (or ::).
    """
    host, sep, port = text.strip().rpartition(":")
    host = unbracket(host) if sep else ""
    if not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise ConfigError(
            f"{option} {text!r}: use [HOST:]PORT with a port from 1 to 65535, like 127.0.0.1:8700"
            " (0.0.0.0:8700 listens on every interface)"
        )
    return host or "127.0.0.1", int(port)
