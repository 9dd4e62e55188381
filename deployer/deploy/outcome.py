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
    SWITCHING = "switching"  # the switch was sent: current may point at the new release
    SWITCHED = "switched"  # current points at the new release; after hooks and healthcheck pending
    CONFIRMED = "confirmed"  # switched, after hooks and healthcheck passed; not yet recorded
    DEPLOYED = "deployed"  # switched, checked, recorded and unlocked
    ABORTED = "aborted"  # staged, then discarded: the live release was never touched
    REVERTED = "reverted"  # switched, then switched back
    UNCONFIRMED = "unconfirmed"  # switched, then the target was lost: the new release is live
    FAILED = "failed"
    SKIPPED = "skipped"  # never tried because an earlier target failed
    ROLLED_BACK = "rolled-back"  # deployer rollback
    LISTED = "listed"  # deployer releases
    UNLOCKED = "unlocked"  # deployer unlock
    RAN = "ran"  # deployer exec
    INSPECTED = "inspected"  # deployer status: the target answered

    def __str__(self) -> str:
        return self.value

    @property
    def live(self) -> bool:
        """Whether current may point at this deploy's release while the deploy still holds the lock."""
        return self in (Status.SWITCHING, Status.SWITCHED, Status.CONFIRMED)


# Where one target's push may go from each state (a push only moves forward; anything else is a
# bug). From a live state every way out is DEPLOYED, REVERTED or UNCONFIRMED.
NEXT: dict[Status, frozenset[Status]] = {
    # PENDING -> SWITCHING: the only target of a push, without hooks, builds and switches at once
    Status.PENDING: frozenset({Status.PLANNED, Status.STAGED, Status.SWITCHING, Status.ABORTED}),
    Status.STAGED: frozenset({Status.SWITCHING, Status.ABORTED}),
    Status.SWITCHING: frozenset(
        {Status.SWITCHED, Status.DEPLOYED, Status.ABORTED, Status.REVERTED, Status.UNCONFIRMED}
    ),
    Status.SWITCHED: frozenset({Status.CONFIRMED, Status.REVERTED, Status.UNCONFIRMED}),
    Status.CONFIRMED: frozenset({Status.DEPLOYED, Status.REVERTED, Status.UNCONFIRMED}),
}


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

    def advance(self, status: Status) -> None:
        """Move to the next state of a push (raises AssertionError on a move NEXT does not allow)."""
        if status not in NEXT.get(self.status, frozenset()):
            raise AssertionError(f"a push cannot go from {self.status} to {status}")
        self.status = status
