"""How we reach a target: endpoints and the chain of jump hosts in front of it (pure, no I/O)."""

from __future__ import annotations

import getpass
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from deployer.errors import ConfigError
from deployer.ssh.proxy import ProxySpec, parse_proxy_command

_ENDPOINT = re.compile(
    r"""^(?:(?P<user>[^@\s:/]+)@)?                  # optional user@
        (?:\[(?P<ipv6>[0-9A-Fa-f:.%]+)\]|(?P<host>[^@\s:/\[\]]+))
        (?::(?P<port>\d{1,5}))?$""",
    re.VERBOSE,
)
# What a host or user name may be: it reaches a shell when a ProxyCommand's %h and %r are expanded
# (the CVE-2023-51385 pattern), so nothing a shell would read as syntax. Stricter than OpenSSH's
# valid_hostname/valid_ruser: DNS names (letters, digits, '-', '_', '.'), IP literals, and POSIX
# portable user names (letters, digits, '.', '_', '-'; no leading '-').
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_USER_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,255}")


@dataclass(frozen=True)
class Endpoint:
    """One SSH server as the user wrote it: user, host and port."""

    user: str
    host: str
    port: int = 22
    host_key_alias: str = ""  # the name its host key is known under (HostKeyAlias)
    identity_files: tuple[str, ...] = ()  # ssh_config IdentityFile: offered first to this hop

    @property
    def known_as(self) -> tuple[str, int]:
        """Host and port its key is looked up under: a HostKeyAlias has no port, as in ssh."""
        return (self.host_key_alias, 22) if self.host_key_alias else (self.host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + ("" if self.port == 22 else f":{self.port}")

    @property
    def address(self) -> str:
        """host:port as used in messages about what listens where."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def default_user() -> str:
    """The login name when USER@ is left out: the local user, as ssh does (root if unknown)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"


# An ssh_config lookup: host alias -> {"hostname", "user", "port", "proxyjump", "proxycommand",
# "hostkeyalias", "connecttimeout", "identityfile" (newline-separated paths)} (any subset).
Lookup = Callable[[str], Mapping[str, str]]


def valid_host(host: str) -> bool:
    """A DNS name, an IPv4 address or an IPv6 address (with a %zone): nothing a shell would parse."""
    if _HOST_NAME.fullmatch(host):
        return True
    if ":" not in host:
        return False
    address, _, zone = host.partition("%")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return not zone or bool(_HOST_NAME.fullmatch(zone))


def valid_user(user: str) -> bool:
    """A POSIX portable user name: letters, digits, '.', '_' and '-', not starting with '-'."""
    return bool(_USER_NAME.fullmatch(user))


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
    hostname = config.get("hostname") or host
    where = f"{option} {text!r}" + (f" (after ssh_config's Host {host})" if config else "")
    if not valid_host(hostname):
        raise ConfigError(
            f"{where}: {hostname!r} is not a host name or an IP address — use letters, digits,"
            " '.', '-' and '_' (shell characters are refused: a ProxyCommand would run them)"
        )
    if not valid_user(user):
        raise ConfigError(
            f"{where}: {user!r} is not a user name — use letters, digits, '.', '_' and '-',"
            " not starting with '-' (shell characters are refused: a ProxyCommand would run them)"
        )
    identities = tuple(path for path in config.get("identityfile", "").split("\n") if path)
    return Endpoint(
        user,
        hostname,
        int(port_text),
        host_key_alias=config.get("hostkeyalias", ""),
        identity_files=identities,
    )


@dataclass(frozen=True)
class Route:
    """A target and the jump hosts in front of it, first hop first (ProxyJump semantics)."""

    target: Endpoint
    jumps: tuple[Endpoint, ...] = ()
    proxy: ProxySpec | None = None  # how the first hop is reached, when not directly
    connect_timeout: float | None = None  # ssh_config ConnectTimeout (a flag wins over it)

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


def _alias(text: str) -> str:
    """The host part of USER@HOST[:PORT] as written (an ssh_config alias, perhaps)."""
    host = text.strip().rpartition("@")[2]
    return host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]


def build_route(
    target: str,
    jumps: Sequence[str],
    *,
    default_user: str,
    lookup: Lookup | None = None,
    proxy: ProxySpec | None = None,
    host_key_alias: str = "",
    jump_host_key_aliases: Sequence[str] = (),
) -> Route:
    """A route from --to, --jump and --proxy; ssh_config fills in what the flags leave open.

    Without --jump the target's ProxyJump applies; without --proxy/--proxy-command the first
    hop's ProxyCommand does. Host key aliases name the target and the jumps in order.
    """
    endpoint = parse_endpoint(target, default_user=default_user, lookup=lookup)
    settings = lookup(_alias(target)) if lookup is not None else {}
    if not jumps and settings.get("proxyjump"):
        jumps = [settings["proxyjump"]]
    hops = parse_jumps(jumps, default_user=default_user, lookup=lookup)
    if len(jump_host_key_aliases) > len(hops):
        raise ConfigError(
            f"{len(jump_host_key_aliases)} jump host key aliases for {len(hops)} jump host(s)"
            " — give one per --jump hop, first hop first"
        )
    aliases = [*jump_host_key_aliases, *[""] * (len(hops) - len(jump_host_key_aliases))]
    hops = tuple(
        replace(hop, host_key_alias=alias) if alias else hop
        for hop, alias in zip(hops, aliases, strict=True)
    )
    if host_key_alias:
        endpoint = replace(endpoint, host_key_alias=host_key_alias)
    if proxy is None and lookup is not None:
        first = _first_alias(jumps) if hops else _alias(target)
        command = lookup(first).get("proxycommand", "")
        if command and command.lower() != "none":
            proxy = parse_proxy_command(command, option=f"ProxyCommand for {first} in ssh_config")
    timeout = settings.get("connecttimeout", "")
    if timeout and not (timeout.isdigit() and int(timeout) > 0):
        raise ConfigError(f"ssh_config ConnectTimeout {timeout!r} is not a number of seconds")
    return Route(endpoint, hops, proxy, float(timeout) if timeout else None)


def _first_alias(jumps: Sequence[str]) -> str:
    parts = [
        p for value in jumps for p in value.split(",") if p.strip().lower() not in ("", "none")
    ]
    return _alias(parts[0]) if parts else ""
