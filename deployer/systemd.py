"""Hardened systemd units for ``deployer tunnel`` and ``deployer serve`` (rendered and written here).

The private key never appears in the unit: systemd reads it (as root) from a root-only file and
hands it to the service through ``LoadCredential=`` — a private, unswappable copy in
``$CREDENTIALS_DIRECTORY`` that only the service's user can read and that disappears when the
service stops. The service runs as a dedicated user with no privileges, a read-only system, no
home directories and a private /tmp.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deployer.errors import ConfigError

UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]+$")
KEY_CREDENTIAL = "tunnel-key"


class Specifier(str):
    """An ExecStart word with systemd specifiers kept as they are (like %d/tunnel-key)."""


def quote_word(word: str) -> str:
    """One ExecStart word: % and $ escaped (unless a Specifier), quoted when needed."""
    text = str(word) if isinstance(word, Specifier) else word.replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class UnitSpec:
    """What goes into the unit."""

    name: str
    description: str
    argv: Sequence[str]  # ExecStart, first word an absolute path
    user: str
    key_file: str  # on the host, root-only; loaded with LoadCredential
    runtime_directory: str
    credential: str = KEY_CREDENTIAL  # key_file's name in $CREDENTIALS_DIRECTORY
    written_by: str = "`deployer tunnel install-service`; see docs/tunnel.md"
    extra: Sequence[str] = ()  # more [Service] lines; one naming a setting already set replaces it


HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
)


def render_unit(spec: UnitSpec) -> str:
    """The unit file text."""
    exec_start = " ".join(quote_word(word) for word in spec.argv)
    lines = [
        f"# Written by {spec.written_by}.",
        "[Unit]",
        f"Description={spec.description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "# never give up: deployer itself backs off between attempts",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=exec",
        f"User={spec.user}",
        f"Group={spec.user}",
        f"ExecStart={exec_start}",
        "Restart=always",
        "RestartSec=5",
        "# SIGTERM to deployer only: it cleans up (stops ssh, or lets a running deploy end) and exits",
        "KillMode=mixed",
        "TimeoutStopSec=15",
        "# the secret: read by systemd from a root-only file, visible to this service only",
        f"LoadCredential={spec.credential}:{spec.key_file}",
        f"RuntimeDirectory={spec.runtime_directory}",
        "RuntimeDirectoryMode=0755",
        "Environment=PYTHONUNBUFFERED=1",
        *HARDENING,
    ]
    replaced = {
        line.partition("=")[0] for line in spec.extra if not line.startswith("LoadCredential=")
    }
    lines = [line for line in lines if line.partition("=")[0] not in replaced]
    lines += [*spec.extra, "", "[Install]", "WantedBy=multi-user.target"]
    return "\n".join(lines) + "\n"


def credential_path() -> Specifier:
    """The key's path inside the service (%d is systemd's $CREDENTIALS_DIRECTORY)."""
    return Specifier(f"%d/{KEY_CREDENTIAL}")


def check_name(name: str) -> None:
    """Refuse a unit name systemd would not take."""
    if not UNIT_NAME.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits and - _ . @ only")


def deployer_argv(deployer_path: str | None) -> list[str]:
    """How the service starts deployer: --deployer, the one on PATH, or this Python's module."""
    executable = deployer_path or shutil.which("deployer")
    argv: list[str] = [executable] if executable else [sys.executable, "-m", "deployer"]
    if not os.path.isabs(argv[0]):
        raise ConfigError(f"--deployer {argv[0]!r} must be an absolute path")
    return argv


def write_unit(unit: str, unit_dir: Path, name: str) -> Path:
    """Write the unit into unit_dir; the path it went to."""
    path = unit_dir / f"{name}.service"
    try:
        path.write_text(unit)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {exc.strerror or exc} — run as root, or use --print"
        ) from exc
    return path
