"""``deployer sandbox``: the local demo (a jump sshd, a target sshd, an ssh -R tunnel, real deploys)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".sandbox"),
    show_default=True,
    help="Where the sandbox keeps its servers, keys and deploy directory.",
)
@click.option(
    "--keep-running", is_flag=True, help="Leave the servers and tunnel running (stop with Ctrl-C)."
)
def sandbox(directory: Path, keep_running: bool) -> None:
    """Start a jump sshd, a target sshd and an ssh -R tunnel on loopback, and deploy through them."""
    from deployer.sandbox.demo import run_demo

    run_demo(directory, keep_running=keep_running)
