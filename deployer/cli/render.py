"""How results reach people: a reporter for progress and events, summary lines, the --json document.

Human-readable lines go to stderr (a bar on a terminal, timestamped lines in CI); with --json
the result document is the only thing on stdout, so ``deployer push --json | jq`` works.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a command runs, not when --help lists it
    from deployer.deploy.outcome import Outcome
    from deployer.errors import DeployerError
    from deployer.output import Reporter


def reporter(*, bars: bool = True) -> Reporter:
    """Where a command's lines go: stderr, with progress bars on a terminal unless bars=False."""
    from deployer.output import Reporter

    return Reporter(tty=None if bars else False)


def summarize(reporter: Reporter, outcomes: list[Outcome]) -> None:
    """One line per target when there are several, so the job log says which host did what."""
    from deployer.deploy.outcome import Status

    if len(outcomes) > 1:
        for outcome in outcomes:
            detail = outcome.release if outcome.status == Status.DEPLOYED else outcome.error
            reporter.line(
                f"summary: {outcome.target}: {outcome.status}" + (f" ({detail})" if detail else "")
            )


def finish(
    command: str, outcomes: list[Outcome], as_json: bool, error: DeployerError | None
) -> None:
    """Print the --json document; re-raise the first failure for main() to report."""
    from deployer.output import emit_json

    if as_json:
        emit_json(
            {
                "command": command,
                "ok": error is None,
                "exit_code": int(error.exit_code) if error else 0,
                "error": str(error) if error else None,
                "targets": [asdict(o) for o in outcomes],
            }
        )
    if error is not None:
        raise error
