"""How a target is worked on: shell scripts (``TargetDeploy``) or SFTP alone (``SftpDeploy``).

``--transport auto`` (the default) starts with the shell path; the probe, its first round trip,
says whether the target runs commands at all (``NoShellError``), and if it does not, the same
connection carries on over SFTP. Nothing is locked or changed before that answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

from deployer.deploy.outcome import Outcome
from deployer.errors import NoShellError
from deployer.output import Reporter

Transport = Literal["auto", "shell", "sftp"]
TRANSPORTS: tuple[Transport, ...] = ("auto", "shell", "sftp")

T = TypeVar("T")


class PhasedDeploy(Protocol):
    """One target's push in phases, as ``push.fleet`` drives it (shell or SFTP)."""

    @property
    def outcome(self) -> Outcome:
        """What happened so far."""
        ...

    def stage(self) -> None:
        """Check, lock, upload (nothing live changes)."""
        ...

    def activate(self, *, last: bool = False) -> None:
        """Switch current to the staged release (and run what follows the switch)."""
        ...

    def finish(self) -> Outcome:
        """Record, prune, unlock."""
        ...

    def abort(self, reason: str) -> None:
        """Discard a staged release that never went live."""
        ...

    def revert(self, reason: str) -> str:
        """Switch back to the release that was live before; say what was restored."""
        ...


class AutoDeploy:
    """A push that learns from the probe whether the target runs commands, and else uses SFTP."""

    def __init__(
        self, shell: PhasedDeploy, sftp: Callable[[], PhasedDeploy], reporter: Reporter
    ) -> None:
        self.chosen = shell
        self._sftp = sftp
        self._reporter = reporter

    @property
    def outcome(self) -> Outcome:
        """The outcome of whichever path was taken."""
        return self.chosen.outcome

    def stage(self) -> None:
        """Stage over the shell; over SFTP when the target runs no commands."""
        try:
            self.chosen.stage()
        except NoShellError as exc:
            self._reporter.target(
                self.chosen.outcome.target, f"{exc.message.split(' — ')[0]}; deploying over SFTP"
            )
            self.chosen = self._sftp()
            self.chosen.stage()

    def activate(self, *, last: bool = False) -> None:
        """Switch."""
        self.chosen.activate(last=last)

    def finish(self) -> Outcome:
        """Record, prune, unlock."""
        return self.chosen.finish()

    def abort(self, reason: str) -> None:
        """Discard the staged release."""
        self.chosen.abort(reason)

    def revert(self, reason: str) -> str:
        """Switch back."""
        return self.chosen.revert(reason)


def by_transport(transport: Transport, shell: Callable[[], T], sftp: Callable[[], T]) -> T:
    """Run a command the way the target allows: shell, SFTP, or (auto) shell unless it runs none."""
    if transport == "sftp":
        return sftp()
    if transport == "shell":
        return shell()
    try:
        return shell()
    except NoShellError:
        return sftp()
