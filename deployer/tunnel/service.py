"""``deployer tunnel install-service``: the keeper as a hardened systemd unit, and what to do next."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deployer.errors import ConfigError
from deployer.systemd import UnitSpec, credential_path, render_unit
from deployer.tunnel.settings import TunnelSettings


def tunnel_unit(
    settings: TunnelSettings,
    *,
    key_file: Path,
    known_hosts: Sequence[Path],
    pins: Sequence[str],
    name: str,
    user: str,
    deployer: Sequence[str],
) -> tuple[str, list[str]]:
    """The unit file text and its ExecStart words (deployer: how the service starts deployer)."""
    if not known_hosts and not pins:
        raise ConfigError(
            "the service needs the jump host's key: pass --known-hosts FILE or --host-key-fingerprint"
            f" SHA256:... (get them with `deployer keyscan --to {settings.jump}`)"
        )
    argv = [*deployer, "tunnel", str(settings.jump)]
    for forward in settings.forwards:
        argv += ["-R", forward.spec]
    argv += ["--key-file", credential_path()]
    for path in known_hosts:
        argv += ["--known-hosts", str(path.absolute())]
    for pin in pins:
        argv += ["--host-key-fingerprint", pin]
    argv += [
        "--connect-timeout", f"{settings.connect_timeout:g}",
        "--alive-interval", str(settings.alive_interval),
        "--alive-count", str(settings.alive_count),
        "--check-interval", f"{settings.check_interval:g}",
        "--max-backoff", f"{settings.max_backoff:g}",
        "--status-file", str(settings.status_file),
    ]  # fmt: skip
    if settings.reclaim:
        argv.append("--reclaim")
    if settings.healthz:
        argv += ["--healthz", f"{settings.healthz[0]}:{settings.healthz[1]}"]
    forwards_text = " ".join(f"-R {f}" for f in settings.forwards)
    unit = render_unit(
        UnitSpec(
            name=name,
            description=f"deployer tunnel {forwards_text} on {settings.jump}",
            argv=argv,
            user=user,
            key_file=str(key_file.absolute()),
            runtime_directory=runtime_directory(name),
        )
    )
    return unit, argv


def runtime_directory(name: str) -> str:
    """The unit's RuntimeDirectory (under /run): its name without template characters."""
    return name.replace("@", "-")


def next_steps(
    name: str, user: str, key_file: Path, status_file: Path | None, executable: str
) -> list[str]:
    """What to run as root once the unit is written."""
    steps = [
        "next steps (as root):",
        f"  id {user} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin {user}",
        f"  install -D -m 600 -o root -g root YOUR_TUNNEL_KEY {key_file}   # the private key; root-only",
        f"  systemctl daemon-reload && systemctl enable --now {name}.service",
        f"  journalctl -u {name} -f        # state changes, timestamped",
        f"  cat {status_file}              # or: deployer tunnel status --status-file {status_file}",
    ]
    if executable.startswith(("/home/", "/root/")):
        steps.append(
            f"warning: {executable} is under a home directory, which ProtectHome=yes hides from the"
            " service — install deployer elsewhere (e.g. a venv in /opt/deployer) and pass --deployer"
        )
    return steps
