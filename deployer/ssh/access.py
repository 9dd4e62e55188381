"""From what the user asked for to routes and connect options: the one place every command uses.

``RouteRequest`` holds the route options as given (--to, --jump, --proxy, ssh_config, host key
aliases) and ``Access`` the login options (keys, host keys, connect timeout); ``build_routes``
and ``connect_options`` turn them into typed values. The command line fills them in; nothing
here reads click or the process environment on its own.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deployer.errors import ConfigError

if TYPE_CHECKING:  # imported when used: the command line imports this module at start
    from deployer.ssh.connect import ConnectOptions
    from deployer.ssh.proxy import ProxySpec
    from deployer.ssh.route import Route

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds per hop, when neither a flag nor ssh_config says


def split_values(values: Sequence[str]) -> list[str]:
    """--to a,b and --to a --to b both work (a list in deployer.toml too)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@dataclass(frozen=True)
class RouteRequest:
    """The route options as the user gave them."""

    to: tuple[str, ...] = ()
    jump: tuple[str, ...] = ()
    proxy: str | None = None
    proxy_command: str | None = None
    ssh_config: Path | None = None
    host_key_alias: str | None = None
    jump_host_key_alias: str | None = None


@dataclass(frozen=True)
class Access:
    """How to log in and whom to trust: keys, host keys and the connect timeout."""

    key_file: Path | None = None
    jump_key_file: Path | None = None
    known_hosts: tuple[Path, ...] = ()
    fingerprints: tuple[str, ...] = ()
    accept_new_host_keys: bool = False
    connect_timeout: float | None = None  # None: ssh_config's ConnectTimeout, else the default
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # SSH_PRIVATE_KEY & co.
    local: bool = True  # not in CI: ~/.ssh, the agent and ~/.ssh/config count too

    def timeout_for(self, route: Route) -> float:
        """The flag's timeout, else ssh_config's for this route, else DEFAULT_CONNECT_TIMEOUT."""
        return self.connect_timeout or route.connect_timeout or DEFAULT_CONNECT_TIMEOUT


def proxy_spec(
    proxy: str | None, proxy_command: str | None, env: Mapping[str, str]
) -> ProxySpec | None:
    """--proxy or --proxy-command (not both) as a ProxySpec, or None."""
    from deployer.ssh.proxy import parse_proxy, parse_proxy_command

    if proxy and proxy_command:
        raise ConfigError("--proxy and --proxy-command both given — pass one of them")
    if proxy:
        return parse_proxy(proxy, env)
    if proxy_command:
        return parse_proxy_command(proxy_command)
    return None


def build_routes(request: RouteRequest, access: Access) -> list[Route]:
    """One route per target, ssh_config filling in what the flags leave open."""
    from deployer.ssh.route import build_route, default_user
    from deployer.ssh.ssh_config import ssh_config_lookup

    if not request.to:
        raise ConfigError("no target given — pass --to USER@HOST[:PORT] (or set DEPLOYER_TO)")
    proxy = proxy_spec(request.proxy, request.proxy_command, access.env)
    config = request.ssh_config
    if config is not None and not config.is_file():
        raise ConfigError(f"--ssh-config {config} not found — check the path")
    # ~/.ssh/config is the developer's: honoured locally, ignored in CI unless named
    if config is None and access.local:
        config = Path.home() / ".ssh" / "config"
    lookup = ssh_config_lookup(config) if config is not None else None
    aliases = split_values([request.jump_host_key_alias or ""])
    return [
        build_route(target, request.jump, default_user=default_user(), lookup=lookup, proxy=proxy,
                    host_key_alias=request.host_key_alias or "", jump_host_key_aliases=aliases)
        for target in split_values(request.to)
    ]  # fmt: skip


def route_flags(route: Route) -> str:
    """--to, --jump and --proxy as a command line that reaches this route again (for messages)."""
    jumps = f" --jump {','.join(str(j) for j in route.jumps)}" if route.jumps else ""
    proxy = ""
    if route.proxy is not None:
        command = route.proxy.kind == "command"
        shown = route.proxy.command or str(route.proxy)
        proxy = f" --proxy{'-command' if command else ''} {shlex.quote(shown)}"
    aliases = ""
    if route.target.host_key_alias:
        aliases += f" --host-key-alias {shlex.quote(route.target.host_key_alias)}"
    if route.jumps and all(j.host_key_alias for j in route.jumps):  # positional: all or none
        named = ",".join(j.host_key_alias for j in route.jumps)
        aliases += f" --jump-host-key-alias {shlex.quote(named)}"
    return f"--to {route.target}{jumps}{proxy}{aliases}"


def keyscan_hint(route: Route) -> str:
    """The keyscan command that shows this route's host keys (for host key errors)."""
    return f"deployer keyscan {route_flags(route)}"


def connect_options(
    route: Route, access: Access, on_notice: Callable[[str], None]
) -> ConnectOptions:
    """Keys, host key policy and timeout for connecting along route."""
    from deployer.ssh.connect import ConnectOptions
    from deployer.ssh.credentials import (
        load_credentials,
        load_hop_credentials,
        load_host_key_policy,
    )

    credentials = load_credentials(access.env, access.key_file, local=access.local)
    return ConnectOptions(
        credentials=credentials,
        host_keys=load_host_key_policy(
            access.env,
            access.known_hosts,
            access.fingerprints,
            access.accept_new_host_keys,
            local=access.local,
        ),
        keyscan_hint=keyscan_hint(route),
        timeout=access.timeout_for(route),
        on_notice=on_notice,
        hop_credentials=load_hop_credentials(access.env, route, credentials, access.jump_key_file),
    )
