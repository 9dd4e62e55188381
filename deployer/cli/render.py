"""How results reach people: a reporter for progress and events, summary lines, the --json document.

Human-readable lines go to stderr (a bar on a terminal, timestamped lines in CI); with --json
the result document is the only thing on stdout, so ``deployer push --json | jq`` works. All of
it, and the error line main() prints, goes through this run's masker (the --env values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from deployer.output import Masker

if TYPE_CHECKING:  # imported when a command runs, not when --help lists it
    from deployer.deploy.outcome import Outcome
    from deployer.errors import DeployerError
    from deployer.output import Reporter


def masker() -> Masker:
    """This run's masker: main() makes one per run and prints its error line through it."""
    context = click.get_current_context(silent=True)
    return context.ensure_object(Masker) if context is not None else Masker()


def reporter(*, bars: bool = True) -> Reporter:
    """Where a command's lines go: stderr, with progress bars on a terminal unless bars=False."""
    from deployer.output import Reporter

    return Reporter(tty=None if bars else False, masker=masker())


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
    command: str,
    outcomes: list[Outcome],
    as_json: bool,
    error: DeployerError | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Print the --json document (with extra's keys too); re-raise the first failure for main()."""
    from deployer.output import emit_json

    if as_json:
        emit_json(
            {
                "command": command,
                "ok": error is None,
                "exit_code": int(error.exit_code) if error else 0,
                "error": str(error) if error else None,
                "targets": [asdict(o) for o in outcomes],
                **(extra or {}),
            },
            masker=masker(),
        )
    if error is not None:
        raise error
