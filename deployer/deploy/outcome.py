"""What a deploy did on one target, for the summary and --json, and who it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class Provenance:
    """Who and what a deploy came from (CI user, commit, ref, pipeline URL)."""

    by: str
    commit: str = ""
    ref: str = ""
    pipeline: str = ""


class Status(str, Enum):
    """Where one target stands; a str, so that --json and the job summary carry its value."""

    PENDING = "pending"  # connected, nothing done yet
    PLANNED = "planned"  # --dry-run: checked and described, nothing changed
    STAGED = "staged"  # uploaded and before hooks passed; nothing live changed
    SWITCHED = "switched"  # current points at the new release
    DEPLOYED = "deployed"  # switched, checked, recorded and unlocked
    ABORTED = "aborted"  # staged, then discarded: the live release was never touched
    REVERTED = "reverted"  # switched, then switched back
    FAILED = "failed"
    SKIPPED = "skipped"  # never tried because an earlier target failed
    ROLLED_BACK = "rolled-back"  # deployer rollback
    LISTED = "listed"  # deployer releases
    UNLOCKED = "unlocked"  # deployer unlock
    RAN = "ran"  # deployer exec
    INSPECTED = "inspected"  # deployer status: the target answered

    def __str__(self) -> str:
        return self.value


@dataclass
class Outcome:
    """What happened on one target, for the summary and --json."""

    target: str
    status: Status
    release: str = ""
    previous: str = ""
    error: str = ""
    exit_code: int = 0
    seconds: float = 0.0
    uploaded_bytes: int = 0
    pruned: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
