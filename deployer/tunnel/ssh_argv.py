"""The OpenSSH command lines the keeper runs: no config files, the pinned jump host key, the agent only."""

from __future__ import annotations

import base64
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deployer.addresses import bracket
from deployer.environment import child_environment
from deployer.ssh.authorized_keys import (
    HOLD_COMMAND,
    RECLAIM_COMMAND,
)
from deployer.ssh.forwards import Forward
from deployer.ssh.proxy import PASSWORD_ENV, ProxySpec, proxy_command_line
from deployer.tunnel.settings import TunnelSettings

if TYPE_CHECKING:
    pass


HOST_KEY_ALIAS = "deployer-jump"


_ALGORITHMS = {"ssh-rsa": "rsa-sha2-512,rsa-sha2-256"}


def host_key_algorithms(key_type: str) -> str:
    """HostKeyAlgorithms that make ssh ask for exactly the verified key's type."""
    return _ALGORITHMS.get(key_type, key_type)


def pinned_known_hosts(key_type: str, key_blob: bytes) -> str:
    """A known_hosts file holding only the verified jump host key, under HOST_KEY_ALIAS."""
    return f"{HOST_KEY_ALIAS} {key_type} {base64.b64encode(key_blob).decode()}\n"


@dataclass(frozen=True)
class RuntimePaths:
    """The keeper's private files: pinned known_hosts, check sockets, the agent's socket."""

    directory: Path
    agent_socket: str

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file ssh verifies the jump host against."""
        return self.directory / "known_hosts"

    def check_socket(self, index: int) -> Path:
        """The -L Unix socket through which forward number index is checked."""
        return self.directory / f"check-{index}.sock"


def ssh_environment(
    parent: Mapping[str, str], paths: RuntimePaths, proxy: ProxySpec | None
) -> dict[str, str]:
    """The environment of every ssh the keeper runs (and of its ProxyCommand).

    Ours without secrets or another agent's pid, SSH_AUTH_SOCK naming our agent, and the proxy
    password only when a proxy URL has one: `deployer proxy-connect`, the ProxyCommand that
    uses it, reads it there (never from its command line). A ProxyCommand of the user's own
    gets no password.
    """
    env = child_environment(parent, extra={"SSH_AUTH_SOCK": paths.agent_socket})
    env.pop("SSH_AGENT_PID", None)
    if proxy is not None and proxy.kind != "command" and proxy.password:
        env[PASSWORD_ENV] = proxy.password
    return env


def common_ssh_options(settings: TunnelSettings, paths: RuntimePaths, key_type: str) -> list[str]:
    """Options for every ssh the keeper runs: no config files, only the pinned key, agent only."""
    jump = settings.jump
    return [
        settings.ssh_binary,
        "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "IdentityFile=none",
        "-o", f"IdentityAgent={paths.agent_socket}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={paths.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"HostKeyAlias={HOST_KEY_ALIAS}",
        "-o", f"HostKeyAlgorithms={host_key_algorithms(key_type)}",
        "-o", "UpdateHostKeys=no",
        "-o", "CheckHostIP=no",
        "-o", f"ConnectTimeout={max(1, round(settings.connect_timeout))}",
        "-o", "ConnectionAttempts=1",
        "-o", "TCPKeepAlive=yes",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "PermitLocalCommand=no",
        # a proxy is run by `deployer proxy-connect` (same code as push) as ssh's ProxyCommand
        *(["-o", f"ProxyCommand={proxy_command_line(settings.proxy, sys.executable)}"]
          if settings.proxy else []),
        "-l", jump.user,
        "-p", str(jump.port),
    ]  # fmt: skip


def tunnel_argv(
    settings: TunnelSettings, paths: RuntimePaths, key_type: str, *, hold: bool
) -> list[str]:
    """The supervised ssh: the -R forwards, a -L check socket per forward, keepalives, -v for events."""
    argv = common_ssh_options(settings, paths, key_type)
    argv += [
        "-v",
        "-T",
        "-o", "ExitOnForwardFailure=yes",
        "-o", f"ServerAliveInterval={settings.alive_interval}",
        "-o", f"ServerAliveCountMax={settings.alive_count}",
        "-o", "StreamLocalBindUnlink=yes",
    ]  # fmt: skip
    for forward in settings.forwards:
        argv += ["-R", forward.spec]
    for index, forward in enumerate(settings.forwards):
        argv += ["-L", f"{paths.check_socket(index)}:{bracket(forward.probe_host)}:{forward.port}"]
    # `--`: the destination can never be read as an option, whatever it holds
    if hold:
        return [*argv, "--", settings.jump.host, HOLD_COMMAND]
    return [*argv, "-N", "--", settings.jump.host]


def guard_argv(
    settings: TunnelSettings, paths: RuntimePaths, key_type: str, forward: Forward
) -> list[str]:
    """A separate ssh that connects to a forward's port on the jump host (is its holder alive?)."""
    argv = common_ssh_options(settings, paths, key_type)
    return [
        *argv,
        "-o",
        "LogLevel=VERBOSE",  # "Authenticated to": from then on a live holder answers at once
        "-W",
        f"{forward.probe_host}:{forward.port}",
        "--",
        settings.jump.host,
    ]


def reclaim_argv(
    settings: TunnelSettings, paths: RuntimePaths, key_type: str, holder: tuple[int, int] | None
) -> list[str]:
    """A separate ssh that runs the forced command's reclaim (of exactly holder, when known)."""
    argv = common_ssh_options(settings, paths, key_type)
    command = RECLAIM_COMMAND + ("" if holder is None else f" {holder[0]} {holder[1]}")
    return [*argv, "-o", "LogLevel=ERROR", "-T", "--", settings.jump.host, command]
