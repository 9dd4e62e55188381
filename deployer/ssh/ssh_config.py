"""ssh_config for local use: Host aliases, HostName, User, Port, IdentityFile, ProxyJump,
ProxyCommand, HostKeyAlias and ConnectTimeout (paramiko parses; deployer acts on them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import paramiko

from deployer.errors import ConfigError
from deployer.ssh.route import Lookup

KEYS = ("hostname", "user", "port", "proxyjump", "proxycommand", "hostkeyalias", "connecttimeout")


def ssh_config_lookup(path: Path) -> Lookup | None:
    """A lookup over an ssh_config file, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        config = paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc

    def lookup(alias: str) -> Mapping[str, str]:
        found = config.lookup(alias)
        # ProxyCommand none comes back as None: nothing to run, as in ssh
        values = {key: str(found[key]) for key in KEYS if found.get(key) is not None}
        if found.get("identityfile"):
            values["identityfile"] = "\n".join(found["identityfile"])
        if values.get("hostname") == alias:
            del values["hostname"]
        return values

    return lookup
