"""The ``deployer`` group and the entry point: the one place that prints errors and exits.

Each command lives in its own module and is imported only when it runs (or --help lists it), so
that ``deployer --help`` starts fast; heavy modules (paramiko, the deploy service) are imported
inside the commands.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import click

from deployer import __version__, interrupts
from deployer.config import (
    build_default_map,
    find_config_file,
    nest_default_map,
    read_config_file,
)
from deployer.errors import DeployerError, ExitCode
from deployer.output import Masker

# Every command lives in its own module, imported only when it is used or listed.
COMMANDS: dict[str, str] = {
    "push": "deployer.cli.push:push",
    "releases": "deployer.cli.targets:releases",
    "status": "deployer.cli.status:status",
    "rollback": "deployer.cli.targets:rollback",
    "unlock": "deployer.cli.targets:unlock",
    "exec": "deployer.cli.targets:exec_",
    "keyscan": "deployer.cli.keys:keyscan",
    "agent": "deployer.cli.keys:agent",
    "sandbox": "deployer.cli.sandbox:sandbox",
    "tunnel": "deployer.cli.tunnel:tunnel",
    "authorized-keys": "deployer.cli.tunnel:authorized_keys",
    "proxy-connect": "deployer.cli.proxy:proxy_connect",
    "setup": "deployer.cli.setup:setup",
    "serve": "deployer.cli.serve:serve",
}


class Group(click.Group):
    """A click group that also serves the commands listed in COMMANDS."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module_name, _, attr = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="deployer")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DEPLOYER_CONFIG",
    help="Settings file (default: ./deployer.toml or [tool.deployer]).",
)
@click.option(
    "--traceback", is_flag=True, envvar="DEPLOYER_DEBUG", help="Show the stack on errors."
)
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, traceback: bool) -> None:
    """Agentless, atomic deploys to servers CI cannot reach directly (jump hosts, reverse tunnels)."""
    path = find_config_file(Path.cwd(), config_file)
    if path is not None:
        commands = {}
        for name in cli.list_commands(ctx):
            command = cli.get_command(ctx, name)
            # a group's commands (serve run, serve install-service, ...) take the file's values too
            subcommands = (
                [
                    (f"{name} {sub}", command.get_command(ctx, sub))
                    for sub in command.list_commands(ctx)
                ]
                if isinstance(command, click.Group)
                else [(name, command)]
            )
            for key, each in subcommands:
                if each is not None:
                    commands[key] = {p.name: p.multiple for p in each.params if p.name}
        ctx.default_map = nest_default_map(
            build_default_map(read_config_file(path), commands, path)
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the CLI, print one-line errors, exit with the documented status."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in args or os.environ.get("DEPLOYER_DEBUG", "") not in ("", "0")
    # CI cancels jobs with SIGTERM: clean up like Ctrl-C (after the SSH packet being written)
    signal.signal(signal.SIGTERM, interrupts.interrupt)
    signal.signal(signal.SIGINT, interrupts.interrupt)
    masker = Masker()  # commands add the --env values; the error line goes through it too

    def stack() -> None:
        click.echo(masker.text(traceback.format_exc()), err=True, nl=False)

    try:
        cli.main(args=args, prog_name="deployer", standalone_mode=False, obj=masker)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("deployer: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except DeployerError as exc:
        if show_traceback:
            stack()
        click.echo(f"deployer: error: {masker.text(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("deployer: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except Exception:  # a bug: say so in one line, with the stack only on request
        if show_traceback:
            stack()
        exc_type, exc_value = sys.exc_info()[:2]
        name = exc_type.__name__ if exc_type else "error"
        click.echo(
            masker.text(
                f"deployer: internal error ({name}: {exc_value}) — rerun with --traceback and report it"
            ),
            err=True,
        )
        sys.exit(ExitCode.ERROR)
