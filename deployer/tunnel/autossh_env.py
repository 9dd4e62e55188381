"""jnovack/autossh's environment variables, translated to deployer tunnel's options (switch by image name)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deployer.addresses import bracket
from deployer.errors import ConfigError
from deployer.ssh.forwards import parse_forward

AUTOSSH_VARIABLES = (
    "SSH_REMOTE_USER", "SSH_REMOTE_HOST", "SSH_REMOTE_PORT", "SSH_TUNNEL_PORT", "SSH_TARGET_HOST",
    "SSH_TARGET_PORT", "SSH_BIND_IP", "SSH_SERVER_ALIVE_INTERVAL", "SSH_SERVER_ALIVE_COUNT_MAX",
    "SSH_KEY_FILE", "SSH_KNOWN_HOSTS_FILE",
)  # fmt: skip


@dataclass(frozen=True)
class AutosshConfig:
    """jnovack/autossh's environment, translated."""

    jump: str
    forward: str
    key_file: Path | None
    known_hosts_file: Path | None
    key_text: str | None
    alive_interval: int | None
    alive_count: int | None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r} is not a whole number")
    return int(value)


def autossh_config(env: Mapping[str, str], exists: Callable[[str], bool]) -> AutosshConfig:
    """Map jnovack/autossh's variables (same defaults where they are safe) to deployer's options."""
    if env.get("SSH_MODE", "-R").strip() not in ("", "-R"):
        raise ConfigError(
            f"SSH_MODE={env['SSH_MODE']} is not supported — deployer tunnel keeps remote (-R) forwards"
        )
    host = env.get("SSH_REMOTE_HOST", "").strip()
    if not host:
        raise ConfigError("SSH_REMOTE_HOST is not set — name the jump host (autossh's 'remote')")
    tunnel_port = env.get("SSH_TUNNEL_PORT", "").strip()
    if not tunnel_port:
        raise ConfigError(
            "SSH_TUNNEL_PORT is not set — autossh picks a random port, but CI needs a fixed one"
        )
    user = env.get("SSH_REMOTE_USER", "").strip() or "root"
    port = env.get("SSH_REMOTE_PORT", "").strip() or "22"
    bind = env.get("SSH_BIND_IP", "").strip() or "127.0.0.1"
    target = env.get("SSH_TARGET_HOST", "").strip() or "localhost"
    target_port = env.get("SSH_TARGET_PORT", "").strip() or "22"
    forward = f"{bracket(bind)}:{tunnel_port}:{bracket(target)}:{target_port}"
    parse_forward(forward)  # validate now, naming the variables' values
    key_file_text = env.get("SSH_KEY_FILE", "").strip()
    key_text = env.get("SSH_KEY", "").strip() or None
    key_file: Path | None = None
    if key_file_text:
        key_file = Path(key_file_text)
    elif key_text is None and exists("/id_rsa"):
        key_file = Path("/id_rsa")  # the image's documented mount point
    known = env.get("SSH_KNOWN_HOSTS_FILE", "").strip() or "/known_hosts"
    known_hosts_file = Path(known) if exists(known) else None
    if env.get("SSH_KNOWN_HOSTS_FILE", "").strip() and known_hosts_file is None:
        raise ConfigError(f"SSH_KNOWN_HOSTS_FILE={known} does not exist")
    return AutosshConfig(
        jump=f"{user}@{bracket(host)}:{port}",
        forward=forward,
        key_file=key_file,
        known_hosts_file=known_hosts_file,
        key_text=key_text,
        alive_interval=_env_int(env, "SSH_SERVER_ALIVE_INTERVAL"),
        alive_count=_env_int(env, "SSH_SERVER_ALIVE_COUNT_MAX"),
    )
