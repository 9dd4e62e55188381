"""``deployer status``: what is live on every target, who put it there, the lock, and drift."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from deployer.cli import render
from deployer.cli.options import path_option, route_options, transport_option
from deployer.ssh.access import Access, RouteRequest

if TYPE_CHECKING:
    from deployer.deploy.outcome import Outcome
    from deployer.deploy.transport import Transport


@click.command()
@route_options
@path_option
@click.option("--parallel", type=click.IntRange(min=1), default=10, show_default=True,
              envvar="DEPLOYER_PARALLEL", help="Targets asked at the same time.")  # fmt: skip
@transport_option
def status(route: RouteRequest, access: Access, path: str, as_json: bool, parallel: int,
           transport: Transport) -> None:  # fmt: skip
    """Show each target's live release (commit, pipeline, who and when), its lock, and drift.

    Every target is asked, even when some do not answer; the exit status is 0 only when all did.
    """
    from deployer.deploy.sftp.manage import status_over_sftp
    from deployer.deploy.status import describe_drift, find_drift, status_target
    from deployer.deploy.transport import by_transport
    from deployer.errors import TargetsFailed
    from deployer.push.service import ask_every_target
    from deployer.remote.layout import validate_path
    from deployer.ssh.access import build_routes
    from deployer.ssh.sftp import open_sftp

    directory = validate_path(path)
    reporter = render.reporter(bars=False)
    outcomes, errors = ask_every_target(
        build_routes(route, access), access, reporter,
        lambda connection: by_transport(
            transport, lambda: status_target(connection, directory),
            lambda: status_over_sftp(open_sftp(connection), directory),
        ), parallel,
    )  # fmt: skip
    drift = find_drift(outcomes)
    error = None
    if errors:
        failed = [o for o in outcomes if o.error]
        error = TargetsFailed(
            f"{len(failed)} of {len(outcomes)} target(s) did not answer: "
            + "; ".join(f"{o.target} ({o.error})" for o in failed)
            + (" — the others' status is above" if len(failed) < len(outcomes) else ""),
            errors[0],
        )
    if not as_json:
        for outcome in outcomes:
            for line in describe_target(outcome):
                click.echo(line)
        summary = describe_drift(drift)
        if summary:
            click.echo(summary)
    render.finish("status", outcomes, as_json, error, extra={"drift": drift.to_document()})


def describe_target(outcome: Outcome) -> list[str]:
    """The lines `deployer status` prints for one target."""
    if outcome.error:
        return [f"{outcome.target}  did not answer: {outcome.error}"]
    details: dict[str, Any] = outcome.details
    lines = [f"{outcome.target}  {details['path']}"]
    live = details["live"]
    if not details["exists"]:
        return [*lines, "  nothing deployed: the directory does not exist"]
    if live is None:
        lines.append(
            f"  live:     none ({len(details['releases'])} release(s), no current symlink)"
        )
    else:
        commit = f"commit {live['commit'][:12]}" + (f" ({live['ref']})" if live["ref"] else "")
        missing = "" if live["present"] == "yes" else "  (its directory is missing!)"
        lines.append(
            f"  live:     {live['release']}  {commit if live['commit'] else ''}".rstrip() + missing
        )
        if live["by"] or live["at"]:
            lines.append(f"            deployed by {live['by'] or '?'} at {live['at'] or '?'}")
        else:
            lines.append("            (no deploy of it in the history)")
        if live["rolled_back_by"]:
            lines.append(
                f"            rolled back to by {live['rolled_back_by']} at {live['rolled_back_at']}"
            )
        if live["pipeline"]:
            lines.append(f"            pipeline {live['pipeline']}")
    lock = details["lock"]
    lines.append(
        f"  lock:     held: {lock['info'] or 'no details'}" if lock["held"] else "  lock:     free"
    )
    lines.append(f"  releases: {len(details['releases'])}")
    return lines
