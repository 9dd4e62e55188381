"""``deployer setup gitlab``: the click layer (plan, show, confirm, apply) over ``deployer.gitlab``."""

from __future__ import annotations

import base64
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from deployer.cli.options import environment as environment_variables
from deployer.cli.options import route_options
from deployer.errors import ConfigError
from deployer.output import Reporter, emit_json
from deployer.ssh.access import Access, RouteRequest

if TYPE_CHECKING:
    from deployer.gitlab.variables import Change
    from deployer.ssh.keyscan import ScannedKey


@click.group(name="setup")
def setup() -> None:
    """Store deploy credentials in a CI system."""


@setup.command(name="gitlab")
@route_options
@click.option(
    "--project",
    required=True,
    metavar="GROUP/NAME",
    help="The GitLab project (path or numeric id).",
)
@click.option("--environment", default="production", show_default=True,
              help="Environment scope of the variables ('*': every environment).")  # fmt: skip
@click.option("-R", "--remote-forward", "forwards", multiple=True, metavar="[BIND:]PORT:HOST:HOSTPORT",
              help="The tunnel's forwards, for the jump host's line (default: TARGET-PORT:localhost:22).")  # fmt: skip
@click.option("--rotate", is_flag=True, help="Replace an existing SSH_PRIVATE_KEY with a new key.")
@click.option(
    "--yes", is_flag=True, help="Store the scanned host keys without asking (non-interactive use)."
)
@click.option("--replace-host-key", "replace_keys", multiple=True, metavar="HOST[:PORT]",
              help="Take this hop's scanned keys in place of the ones SSH_KNOWN_HOSTS holds (a reinstalled"
                   " server); without it a changed key stops setup.")  # fmt: skip
@click.option(
    "--dry-run", is_flag=True, help="Read and scan, print what would change, change nothing."
)
def gitlab(route: RouteRequest, access: Access, as_json: bool, project: str, environment: str,
           forwards: tuple[str, ...], rotate: bool, yes: bool, replace_keys: tuple[str, ...],
           dry_run: bool) -> None:  # fmt: skip
    """Generate a deploy key and store it and the route's host keys as CI/CD variables of a project."""
    from deployer.gitlab.setup import (
        KNOWN_HOSTS,
        PRIVATE_KEY,
        check_project,
        plan_setup,
        render_ci_key_lines,
    )
    from deployer.gitlab.variables import GitLabSettings, ProjectVariables
    from deployer.ssh.access import build_routes, connect_options
    from deployer.ssh.hostkeys import fingerprint

    reporter = Reporter()
    settings = GitLabSettings.from_env(environment_variables())
    check_project(project, environment)
    routes = build_routes(route, access) if route.to else []
    if replace_keys and not routes:
        raise ConfigError(
            "--replace-host-key needs the route (--to, --jump) whose host keys to scan"
        )
    api = ProjectVariables(settings, project)
    options = connect_options(routes[0], access, reporter.line) if routes else None
    plan = plan_setup(api.list(), project, environment, routes, options, rotate=rotate,
                      replace_keys=replace_keys)  # fmt: skip
    if routes:
        _show_fingerprints(reporter, plan.scanned)
    else:
        reporter.line(
            f"note: no --to given: {KNOWN_HOSTS} left as it is (pass --to/--jump to scan the route)"
        )
    _show_plan(reporter, plan.changes)
    public = plan.public
    if dry_run:
        reporter.line("dry run: nothing was changed")
        if plan.new_key:
            public = None  # that key will never exist: the real run generates its own
    else:
        if plan.changes_host_keys and not yes:
            _confirm_host_keys()
        for change in plan.changes:
            if change.action != "keep":
                api.apply(change)
                reporter.line(f"{change.variable.key} [{environment}]: {change.action}d")
    if public is not None:
        key_type, blob = public.split()[:2]
        origin = "new" if plan.new_key else "existing"
        reporter.line(f"deploy key ({origin}): {key_type} {fingerprint(base64.b64decode(blob))}")
    elif not (dry_run and plan.new_key):
        reporter.line(f"note: the project's {PRIVATE_KEY} is hidden, so its public key is unknown here"
                      " — put that key's public half into the lines below, or use --rotate")  # fmt: skip
    lines = render_ci_key_lines(routes, forwards, public or "CI-PUBLIC-KEY") if routes else ""
    if as_json:
        emit_json({"command": "setup gitlab", "project": project, "environment": environment, "dry_run": dry_run,
                   "changes": [{"key": c.variable.key, "action": c.action, "reason": c.reason} for c in plan.changes],
                   "host_keys": [k.__dict__ for k in plan.scanned], "public_key": public or "",
                   "authorized_keys": lines})  # fmt: skip
    elif lines:
        click.echo(lines, nl=False)


def _show_fingerprints(reporter: Reporter, scanned: Sequence[ScannedKey]) -> None:
    from deployer.gitlab.setup import KNOWN_HOSTS

    notes = {"known": f"already in {KNOWN_HOSTS}", "new": "new",
             "changed": f"CHANGED from {KNOWN_HOSTS}: replacing it (--replace-host-key)",
             "revoked": f"REVOKED in {KNOWN_HOSTS}",
             "unpinned": "not stored: the host is pinned by its key of another type"}  # fmt: skip
    reporter.line(
        "host keys found — compare with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on each server:"
    )
    for key in scanned:
        reporter.line(
            f"  {key.hop}: {key.host_id} {key.key_type} {key.fingerprint} ({notes[key.status]})"
        )


def _show_plan(reporter: Reporter, changes: Sequence[Change]) -> None:
    for change in changes:
        variable = change.variable
        flags = ", ".join(n for n in ("masked", "protected") if getattr(variable, n)) or "plain"
        reporter.line(
            f"{variable.key} [{variable.environment_scope}]: {change.action} ({change.reason}; {flags})"
        )


def _confirm_host_keys() -> None:
    """Ask before trusting scanned host keys; refuse when nobody can answer."""
    from deployer.gitlab.setup import KNOWN_HOSTS

    if not sys.stdin.isatty():
        raise ConfigError("stdin is not a terminal, so the host keys above cannot be confirmed — check their"
                          " fingerprints with the servers' owners, then rerun with --yes")  # fmt: skip
    if not click.confirm(f"Store these host keys in {KNOWN_HOSTS}?", default=False, err=True):
        raise ConfigError("host keys not confirmed — nothing was changed")
