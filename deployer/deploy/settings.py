"""Everything about a push except where it goes."""

from __future__ import annotations

from dataclasses import dataclass, field

from deployer.deploy.hooks import HookSettings
from deployer.deploy.upload import TransferSettings


@dataclass(frozen=True)
class PushSettings:
    """Everything about a push except where it goes."""

    path: str
    keep: int = 5
    shared: tuple[str, ...] = ()
    hooks: HookSettings = field(default_factory=HookSettings)
    dry_run: bool = False
    transfer: TransferSettings = field(default_factory=TransferSettings)
