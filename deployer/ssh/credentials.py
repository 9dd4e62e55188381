"""Where keys and host keys come from: CI variables, files, the local ssh-agent and ~/.ssh.

This is the one place that reads SSH_PRIVATE_KEY, SSH_JUMP_PRIVATE_KEY, their passphrases and
SSH_KNOWN_HOSTS; everything below receives typed values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko import PKey

from deployer.errors import ConfigError, PrivateKeyError
from deployer.ssh.hostkeys import HostKeyPolicy, KnownHost, parse_known_hosts, parse_pins
from deployer.ssh.keys import load_private_key, read_private_key_file
from deployer.ssh.route import Route

DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


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


def load_credentials(env: Mapping[str, str], key_file: Path | None, *, local: bool) -> Credentials:
    """SSH_PRIVATE_KEY and/or --key-file; locally also the ssh-agent and unencrypted ~/.ssh/id_*."""
    passphrase = env.get("SSH_PRIVATE_KEY_PASSPHRASE") or None
    keys = _given_keys(env, "SSH_PRIVATE_KEY", key_file, "--key-file", passphrase)
    if keys or not local:
        return Credentials(tuple(keys))
    for name in DEFAULT_IDENTITIES:
        candidate = Path.home() / ".ssh" / name
        if candidate.is_file():
            try:
                keys.append(read_private_key_file(candidate, passphrase=passphrase))
            except PrivateKeyError:
                continue  # encrypted default keys are the agent's job, as with ssh
    return Credentials(tuple(keys), use_agent=bool(env.get("SSH_AUTH_SOCK")))


def _given_keys(
    env: Mapping[str, str],
    variable: str,
    key_file: Path | None,
    option: str,
    passphrase: str | None,
) -> list[PKey]:
    """The key in a variable and/or a key file, in that order."""
    keys = []
    raw = env.get(variable, "")
    if raw.strip():
        keys.append(load_private_key(raw, passphrase=passphrase, source=variable))
    if key_file is not None:
        if not key_file.is_file():
            raise ConfigError(f"{option} {key_file} not found — check the path")
        keys.append(read_private_key_file(key_file, passphrase=passphrase))
    return keys


def load_hop_credentials(
    env: Mapping[str, str], route: Route, target: Credentials, jump_key_file: Path | None
) -> tuple[Credentials, ...]:
    """Each hop's keys: its ssh_config IdentityFile first, then the jump keys or the target's.

    SSH_JUMP_PRIVATE_KEY / --jump-key-file log in to the jump hosts only; without them every
    hop gets the target's credentials, as before.
    """
    passphrase = (
        env.get("SSH_JUMP_PRIVATE_KEY_PASSPHRASE") or env.get("SSH_PRIVATE_KEY_PASSPHRASE") or None
    )
    jump_keys = _given_keys(
        env, "SSH_JUMP_PRIVATE_KEY", jump_key_file, "--jump-key-file", passphrase
    )
    jump = Credentials(tuple(jump_keys)) if jump_keys else target
    hops = []
    for index, hop in enumerate(route.hops):
        base = jump if index < len(route.jumps) else target
        own = tuple(_identity_files(hop.identity_files, env.get("SSH_PRIVATE_KEY_PASSPHRASE")))
        hops.append(Credentials(own + base.keys, base.use_agent) if own else base)
    return tuple(hops)


def _identity_files(paths: Sequence[str], passphrase: str | None) -> list[PKey]:
    """IdentityFile keys that load; like ssh, a missing or encrypted one is left to the agent."""
    keys = []
    for name in paths:
        path = Path(name).expanduser()
        if path.is_file():
            try:
                keys.append(read_private_key_file(path, passphrase=passphrase or None))
            except PrivateKeyError:
                continue
    return keys


def load_host_key_policy(
    env: Mapping[str, str],
    known_hosts_files: Sequence[Path],
    pins: Sequence[str],
    accept_new: bool,
    *,
    local: bool,
) -> HostKeyPolicy:
    """SSH_KNOWN_HOSTS, --known-hosts files and fingerprint pins; locally ~/.ssh/known_hosts too."""
    known: list[KnownHost] = []
    text = env.get("SSH_KNOWN_HOSTS", "")
    if text.strip():
        known += parse_known_hosts(text, "SSH_KNOWN_HOSTS")
    files = list(known_hosts_files)
    default = Path.home() / ".ssh" / "known_hosts"
    if local and not files and default.is_file():
        files.append(default)
    for path in files:
        try:
            # the user's own ~/.ssh/known_hosts is read the way ssh reads it: bad lines skipped
            known += parse_known_hosts(path.read_text(), str(path), lenient=path == default)
        except FileNotFoundError:
            raise ConfigError(f"--known-hosts {path} not found — check the path") from None
        except OSError as exc:
            raise ConfigError(f"cannot read --known-hosts {path}: {exc.strerror}") from exc
    return HostKeyPolicy(known=tuple(known), pins=parse_pins(pins), accept_new=accept_new)
