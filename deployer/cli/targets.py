"""Commands on the releases of each target: ``releases``, ``rollback``, ``unlock`` and ``exec``."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from deployer.ci.environment import provenance_fields
from deployer.cli import render
from deployer.cli.options import (
    after_option,
    env_option,
    environment,
    hook_timeout_option,
    hook_variables,
    path_option,
    route_options,
    transport_option,
)
from deployer.errors import ConfigError
from deployer.output import Reporter
from deployer.ssh.access import Access, RouteRequest

if TYPE_CHECKING:
    from deployer.deploy.outcome import Outcome
    from deployer.deploy.transport import Transport
    from deployer.ssh.connection import Connection


def on_each_target(
    command: str,
    route: RouteRequest,
    access: Access,
    as_json: bool,
    reporter: Reporter,
    action: Callable[[Connection], Outcome],
) -> list[Outcome]:
    """Run action on every target in turn, then print the summary and --json; raise the first error."""
    from deployer.push.service import for_each_target
    from deployer.ssh.access import build_routes

    outcomes, error = for_each_target(build_routes(route, access), access, reporter, action)
    render.summarize(reporter, outcomes)
    render.finish(command, outcomes, as_json, error)
    return outcomes


@click.command()
@route_options
@path_option
@transport_option
def releases(
    route: RouteRequest, access: Access, path: str, as_json: bool, transport: Transport
) -> None:
    """List the releases on each target, the live one marked."""
    from deployer.deploy.manage import list_target
    from deployer.deploy.sftp.manage import list_over_sftp
    from deployer.deploy.transport import by_transport
    from deployer.remote.layout import validate_path
    from deployer.ssh.sftp import open_sftp

    directory = validate_path(path)
    outcomes = on_each_target(
        "releases", route, access, as_json, render.reporter(),
        lambda connection: by_transport(
            transport, lambda: list_target(connection, directory),
            lambda: list_over_sftp(open_sftp(connection), directory),
        ),
    )  # fmt: skip
    if as_json:
        return
    for outcome in outcomes:
        details = outcome.details
        click.echo(
            f"{outcome.target}:{details['path']}"
            + (f"  (locked: {details['lock']})" if details["lock"] else "")
        )
        rows: Any = details["releases"]
        if not rows:
            click.echo("  (no releases)")
        for row in rows:
            marker = "* live" if row["live"] else "      "
            extra = " ".join(x for x in (row["by"], row["commit"][:12]) if x)
            click.echo(f"  {marker}  {row['id']}  {extra}".rstrip())


@click.command()
@route_options
@path_option
@click.option(
    "--release", "release_id", help="Release id to switch to (default: the one before current)."
)
@after_option("Command run after the switch (repeatable), e.g. a service reload.")
@hook_timeout_option
@transport_option
@click.option("--lock-token", metavar="TOKEN",
              help="Take over the lock a deploy left when it lost the target after switching"
                   " (its last line names the token).")  # fmt: skip
@env_option
def rollback(route: RouteRequest, access: Access, path: str, as_json: bool, release_id: str | None,
             after: tuple[str, ...], hook_timeout: float, lock_token: str | None,
             env: tuple[str, ...], transport: Transport) -> None:  # fmt: skip
    """Switch current back to the previous release (or --release ID)."""
    from deployer.deploy.hooks import HookSettings
    from deployer.deploy.manage import rollback_target
    from deployer.deploy.outcome import Provenance
    from deployer.deploy.sftp.manage import rollback_over_sftp
    from deployer.deploy.transport import by_transport
    from deployer.remote.layout import validate_path
    from deployer.ssh.sftp import open_sftp

    if transport == "sftp" and after:
        raise ConfigError(
            "--transport sftp: no commands run over SFTP, so --after cannot run there — drop it"
        )

    if lock_token is not None and not re.fullmatch(r"[0-9a-f]{8,64}", lock_token):
        raise ConfigError(
            f"--lock-token {lock_token!r} is not a lock token — copy the hex token from the line"
            " that named this command"
        )
    reporter = render.reporter()
    job = environment()
    hooks = HookSettings(after=after, timeout=hook_timeout, env=hook_variables(env, job, reporter))
    provenance = Provenance(**provenance_fields(job))
    directory = validate_path(path)
    on_each_target(
        "rollback", route, access, as_json, reporter,
        lambda connection: by_transport(
            transport,
            lambda: rollback_target(connection, directory, release_id, hooks, provenance, reporter,
                                    lock_token),
            lambda: rollback_over_sftp(open_sftp(connection), directory, release_id, after, provenance,
                                       reporter, lock_token),
        ),
    )  # fmt: skip


@click.command()
@route_options
@path_option
@transport_option
def unlock(
    route: RouteRequest, access: Access, path: str, as_json: bool, transport: Transport
) -> None:
    """Remove a deploy lock left behind by a deploy that died."""
    from deployer.deploy.manage import unlock_target
    from deployer.deploy.sftp.manage import unlock_over_sftp
    from deployer.deploy.transport import by_transport
    from deployer.remote.layout import validate_path
    from deployer.ssh.sftp import open_sftp

    reporter = render.reporter()
    directory = validate_path(path)
    outcomes = on_each_target(
        "unlock", route, access, as_json, reporter,
        lambda connection: by_transport(
            transport, lambda: unlock_target(connection, directory),
            lambda: unlock_over_sftp(open_sftp(connection), directory),
        ),
    )  # fmt: skip
    for outcome in outcomes:
        was = outcome.details.get("was")
        note = outcome.details.get("note")
        reporter.line(
            f"{outcome.target}: "
            + (f"removed lock ({was})" if was else "no lock was held")
            + (f"; {note}" if note else "")
        )


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
@route_options
@env_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(route: RouteRequest, access: Access, as_json: bool, env: tuple[str, ...],
          command: tuple[str, ...]) -> None:  # fmt: skip
    """Run COMMAND on each target (after --), streaming its output; exit with its status."""
    from deployer.deploy.outcome import Outcome, Status
    from deployer.remote.hooks import command_script, send_variables

    reporter = render.reporter()
    variables = hook_variables(env, environment(), reporter)
    # like ssh: the words are joined and run by the shell
    script = command_script(" ".join(command), bool(variables))
    statuses: list[int] = []
    masker = render.masker()

    def run(connection: Connection) -> Outcome:
        masked = {"stdout": masker.stream(), "stderr": masker.stream()}

        def forward(stream: str, chunk: bytes) -> None:
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.buffer.write(masked[stream].feed(chunk))
            target.flush()

        result = connection.run(
            script,
            upload=send_variables(variables),
            on_output=None if as_json else forward,
        )
        if not as_json:  # what each stream held back in case a value began there
            for name, stream in masked.items():
                out = sys.stdout if name == "stdout" else sys.stderr
                out.buffer.write(stream.close())
                out.flush()
        statuses.append(result.status)
        return Outcome(connection.label, Status.RAN, exit_code=result.status,
                       details={"stdout": result.stdout.decode(errors="replace"),
                                "stderr": result.stderr.decode(errors="replace")})  # fmt: skip

    on_each_target("exec", route, access, as_json, reporter, run)
    failed = [s for s in statuses if s != 0]
    if failed:
        sys.exit(failed[0])
