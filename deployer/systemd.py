"""A hardened systemd unit for ``deployer tunnel`` (pure text; ``tunnel install-service`` writes it).

The private key never appears in the unit: systemd reads it (as root) from a root-only file and
hands it to the service through ``LoadCredential=`` — a private, unswappable copy in
``$CREDENTIALS_DIRECTORY`` that only the service's user can read and that disappears when the
service stops. The service runs as a dedicated user with no privileges, a read-only system, no
home directories and a private /tmp.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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
