"""Commands about keys: ``keyscan`` (host keys to pin) and ``agent`` (the key, in memory, for a command)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deployer.cli import render
from deployer.cli.options import environment, key_file_option, route_options
from deployer.errors import ConfigError
from deployer.output import emit_json
from deployer.ssh.access import Access, RouteRequest

_NOTES = {"known": "already trusted", "new": "not yet trusted", "changed": "CHANGED from what you trust",
          "revoked": "REVOKED in what you trust",
          "unpinned": "not trusted: you trust this host's key of another type"}  # fmt: skip


@click.command()
@route_options
@click.option("--hash", "hashed", is_flag=True, help="Hash host names like ssh-keygen -H.")
def keyscan(route: RouteRequest, access: Access, as_json: bool, hashed: bool) -> None:
    """Print known_hosts lines and SHA256 fingerprints for every hop, to paste into SSH_KNOWN_HOSTS."""
    from deployer.ssh.access import build_routes, connect_options
    from deployer.ssh.keyscan import scan_routes

    reporter = render.reporter()
    routes = build_routes(route, access)
    keys = scan_routes(routes, connect_options(routes[0], access, reporter.line), hashed=hashed)
    if as_json:
        emit_json({"command": "keyscan", "keys": [key.__dict__ for key in keys]})
        return
    for key in keys:
        click.echo(
            f"# {key.hop}: {key.host_id} {key.key_type} {key.fingerprint} ({_NOTES[key.status]})"
        )
        click.echo(key.line)
    if any(k.status in ("changed", "revoked") for k in keys):
        reporter.line(
            "warning: some host keys differ from what you trust — verify them with the server's owner"
        )


@click.command(context_settings={"ignore_unknown_options": True})
@key_file_option()
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def agent(key_file: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with SSH_AUTH_SOCK pointing at an agent holding the key in memory."""
    from deployer.ssh.agent import run_with_agent
    from deployer.ssh.credentials import load_credentials

    credentials = load_credentials(environment(), key_file, local=False)
    if not credentials.keys:
        raise ConfigError("no key for the agent — set SSH_PRIVATE_KEY or pass --key-file")
    sys.exit(run_with_agent(credentials.keys, list(command)))
