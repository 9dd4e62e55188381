"""How we reach a target: endpoints and the chain of jump hosts in front of it (pure, no I/O)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from deployer.errors import ConfigError

_ENDPOINT = re.compile(
    r"""^(?:(?P<user>[^@\s:/]+)@)?                  # optional user@
        (?:\[(?P<ipv6>[0-9A-Fa-f:.%]+)\]|(?P<host>[^@\s:/\[\]]+))
        (?::(?P<port>\d{1,5}))?$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Endpoint:
    """One SSH server as the user wrote it: user, host and port."""

    user: str
    host: str
    port: int = 22

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + ("" if self.port == 22 else f":{self.port}")

    @property
    def address(self) -> str:
        """host:port as used in messages about what listens where."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# An ssh_config lookup: host alias -> {"hostname", "user", "port", "proxyjump"} (any subset).
Lookup = Callable[[str], Mapping[str, str]]


def parse_endpoint(
    text: str, *, default_user: str, option: str = "--to", lookup: Lookup | None = None
) -> Endpoint:
    """Parse USER@HOST[:PORT] (IPv6 as [addr]:port), filling gaps from ssh_config when given."""
    match = _ENDPOINT.match(text.strip())
    if not match:
        raise ConfigError(
            f"{option} {text!r} is not USER@HOST[:PORT] — e.g. {option} deploy@example.com:2222"
        )
    host = match["ipv6"] or match["host"]
    config = lookup(host) if lookup else {}
    port_text = match["port"] or config.get("port") or "22"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{option} {text!r}: port {port_text} is out of range (1-65535)")
    user = match["user"] or config.get("user") or default_user
    return Endpoint(user, config.get("hostname") or host, int(port_text))


@dataclass(frozen=True)
class Route:
    """A target and the jump hosts in front of it, first hop first (ProxyJump semantics)."""

    target: Endpoint
    jumps: tuple[Endpoint, ...] = ()

    @property
    def hops(self) -> tuple[Endpoint, ...]:
        """Every server we authenticate to, in connection order."""
        return (*self.jumps, self.target)

    def describe(self, hop_index: int) -> str:
        """Name a hop for messages: 'jump host j@h' or 'target t@h (through j@h)'."""
        hop = self.hops[hop_index]
        if hop_index < len(self.jumps):
            return f"jump host {hop}"
        if self.jumps:
            return f"target {hop} (through {self.jumps[-1]})"
        return f"target {hop}"

    def __str__(self) -> str:
        return " -> ".join(str(hop) for hop in self.hops)


def parse_jumps(
    values: Sequence[str], *, default_user: str, lookup: Lookup | None = None
) -> tuple[Endpoint, ...]:
    """Parse one or more --jump values, each possibly a comma-separated chain like ssh -J."""
    hops: list[Endpoint] = []
    for value in values:
        for part in value.split(","):
            if part.strip() and part.strip().lower() != "none":
                hops.append(
                    parse_endpoint(part, default_user=default_user, option="--jump", lookup=lookup)
                )
    return tuple(hops)


def build_route(
    target: str, jumps: Sequence[str], *, default_user: str, lookup: Lookup | None = None
) -> Route:
    """A route from --to and --jump; without --jump, ssh_config's ProxyJump for the target applies."""
    endpoint = parse_endpoint(target, default_user=default_user, lookup=lookup)
    if not jumps and lookup is not None:
        alias = target.rpartition("@")[2].split(":")[0]
        proxy_jump = lookup(alias).get("proxyjump", "")
        jumps = [proxy_jump] if proxy_jump else []
    return Route(endpoint, parse_jumps(jumps, default_user=default_user, lookup=lookup))
