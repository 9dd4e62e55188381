"""Everything about a push except where it goes."""

from __future__ import annotations

from dataclasses import dataclass, field

from deployer.deploy.hooks import HookSettings
from deployer.deploy.upload import TransferSettings
from deployer.remote.permissions import AS_CREATED, Permissions


@dataclass(frozen=True)
class PushSettings:
    """Everything about a push except where it goes."""

    path: str
    keep: int = 5
    shared: tuple[str, ...] = ()
    hooks: HookSettings = field(default_factory=HookSettings)
    dry_run: bool = False
    transfer: TransferSettings = field(default_factory=TransferSettings)
    exclude: tuple[str, ...] = ()  # gitignore patterns, applied after the artifact's .deployignore
    permissions: Permissions = AS_CREATED  # --group, --writable
