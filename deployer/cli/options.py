"""Option sets shared by several commands, each declared once.

A set is a decorator that adds its click options and hands the command one typed value instead
of their keyword arguments: ``route_options`` gives ``route: RouteRequest`` and ``access:
Access``. Single options that several commands share (--key-file, --known-hosts,
--connect-timeout, ...) are declared here once as well, so that their types, limits and
environment variables cannot drift apart.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from deployer.ci.environment import is_ci
from deployer.ssh.access import Access, RouteRequest

if TYPE_CHECKING:
    from deployer.output import Reporter

F = TypeVar("F", bound=Callable[..., Any])


def apply(func: F, options: Sequence[Callable[[Any], Any]]) -> F:
    """func with the options added, listed in the order --help shows them."""
    for option in reversed(options):
        func = option(func)
    return func


def environment() -> Mapping[str, str]:
    """The process environment: read here, at the top, and passed down explicitly."""
    return os.environ


def _finite(
    number: Any, value: Any, param: click.Parameter | None, ctx: click.Context | None
) -> Any:
    """Refuse NaN (it passes every range check: all comparisons are false) and infinity."""
    if not math.isfinite(number):
        raise click.BadParameter(f"{value!r} is not a finite number", ctx=ctx, param=param)
    return number


class Finite(click.types.FloatParamType):
    """A float option (seconds, mostly) that must be a finite number."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return _finite(super().convert(value, param, ctx), value, param, ctx)


class FiniteRange(click.FloatRange):
    """A float option within bounds that must be a finite number."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return _finite(super().convert(value, param, ctx), value, param, ctx)


class Lines(click.types.StringParamType):
    """A string option whose environment variable holds one value per line (hook commands)."""

    name = "command"
    envvar_list_splitter = "\n"


class DefaultCommandGroup(click.Group):
    """A group that runs its hidden `run` command unless the first word names another one.

    `deployer tunnel JUMP -R ...` and `deployer serve --path ...` run; `deployer tunnel status`
    and `install-service` are subcommands.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        run = self.commands["run"]
        with click.Context(run, info_name=ctx.info_name, parent=ctx.parent) as sub:
            run.format_help(sub, formatter)
        self.format_commands(ctx, formatter)


# ---------------------------------------------------------------------------- single options

FilePath = click.Path(dir_okay=False, path_type=Path)


def key_file_option(
    help: str = "Private key file (default: SSH_PRIVATE_KEY).", **kwargs: Any
) -> Callable[[F], F]:
    """--key-file (DEPLOYER_KEY_FILE unless the command passes envvar=None)."""
    kwargs.setdefault("envvar", "DEPLOYER_KEY_FILE")
    return click.option("--key-file", type=FilePath, help=help, **kwargs)


def known_hosts_option(
    help: str = "known_hosts file(s), in addition to SSH_KNOWN_HOSTS.", **kwargs: Any
) -> Callable[[F], F]:
    """--known-hosts FILE (repeatable)."""
    kwargs.setdefault("envvar", "DEPLOYER_KNOWN_HOSTS")
    return click.option(
        "--known-hosts", "known_hosts", multiple=True, type=FilePath, help=help, **kwargs
    )


def fingerprint_option(
    help: str = "Trust a host key by fingerprint (repeatable).", **kwargs: Any
) -> Callable[[F], F]:
    """--host-key-fingerprint [HOST=]SHA256:... (repeatable)."""
    kwargs.setdefault("envvar", "DEPLOYER_HOST_KEY_FINGERPRINT")
    return click.option("--host-key-fingerprint", "fingerprints", multiple=True, metavar="[HOST=]SHA256:...",
                        help=help, **kwargs)  # fmt: skip


def accept_new_option(
    help: str = "Trust unknown host keys on first use and print them (never a changed key).",
) -> Callable[[F], F]:
    """--accept-new-host-keys."""
    return click.option(
        "--accept-new-host-keys", is_flag=True, envvar="DEPLOYER_ACCEPT_NEW_HOST_KEYS", help=help
    )


def connect_timeout_option(
    what: str = "each hop", default: str = "ssh_config's ConnectTimeout, else 10"
) -> Callable[[F], F]:
    """--connect-timeout SECONDS: the same type, limit and default (10 s) for every command."""
    return click.option(
        "--connect-timeout",
        type=FiniteRange(min=0.1),
        envvar="DEPLOYER_CONNECT_TIMEOUT",
        help=f"Seconds to wait for {what}.  [default: {default}]",
    )


def proxy_options(what: str = "the first hop") -> list[Callable[[F], F]]:
    """--proxy and --proxy-command."""
    return [
        click.option("--proxy", envvar="DEPLOYER_PROXY", metavar="URL",
                     help=f"Reach {what} through http://[USER@]HOST:PORT (CONNECT) or socks5h://[USER@]HOST:PORT;"
                          " password in DEPLOYER_PROXY_PASSWORD."),
        click.option("--proxy-command", envvar="DEPLOYER_PROXY_COMMAND", metavar="CMD",
                     help=f"Reach {what} through CMD's stdin/stdout, like ssh's ProxyCommand (%h %p %r)."),
    ]  # fmt: skip


path_option = click.option(
    "--path", required=True, envvar="DEPLOYER_PATH", help="Deploy directory on the target."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout.")
transport_option = click.option(
    "--transport", type=click.Choice(("auto", "shell", "sftp")), default="auto", show_default=True,
    envvar="DEPLOYER_TRANSPORT",
    help="shell: run scripts on the target; sftp: SFTP alone (accounts with ForceCommand internal-sftp;"
         " no hooks); auto: sftp when the target runs no commands.",
)  # fmt: skip


def after_option(
    help: str = "Command run after the switch (repeatable); failure switches back.",
) -> Callable[[F], F]:
    """--after COMMAND (repeatable; one command per line in DEPLOYER_AFTER)."""
    return click.option("--after", multiple=True, type=Lines(), envvar="DEPLOYER_AFTER", help=help)


hook_timeout_option = click.option(
    "--hook-timeout", type=Finite(), default=300.0, show_default=True, envvar="DEPLOYER_HOOK_TIMEOUT",
    help="Seconds each hook may run.",
)  # fmt: skip


# ---------------------------------------------------------------------------- option sets


def hook_options(func: F) -> F:
    """--before, --after, --healthcheck and their limits."""
    options = [
        click.option("--before", multiple=True, type=Lines(), envvar="DEPLOYER_BEFORE",
                     help="Command run in the new release before the switch (repeatable); failure aborts."),
        after_option(),
        click.option("--healthcheck", envvar="DEPLOYER_HEALTHCHECK",
                     help="Command run after the switch; failure switches back and exits 9."),
        hook_timeout_option,
        click.option("--healthcheck-retries", type=int, default=2, show_default=True,
                     envvar="DEPLOYER_HEALTHCHECK_RETRIES"),
        click.option("--healthcheck-interval", type=Finite(), default=3.0, show_default=True,
                     envvar="DEPLOYER_HEALTHCHECK_INTERVAL", help="Seconds between healthcheck attempts."),
        click.option("--healthcheck-delay", type=FiniteRange(min=0), default=0.0, show_default=True,
                     envvar="DEPLOYER_HEALTHCHECK_DELAY", metavar="SECONDS",
                     help="Seconds to wait after the switch (and the after hooks) before the first healthcheck."),
    ]  # fmt: skip
    return apply(func, options)


SHORT_VALUE = 4  # a value this short masks (***) much that is no secret: say so


def hook_variables(
    entries: Sequence[str], job: Mapping[str, str], reporter: Reporter
) -> dict[str, str]:
    """The --env variables by name, their values masked in everything this run prints from now on."""
    from deployer.cli.render import masker
    from deployer.environment import hook_variables as resolve

    variables = resolve(entries, job)
    masker().add(variables.values())
    for name, value in variables.items():
        if 0 < len(value.strip()) < SHORT_VALUE:
            reporter.line(
                f"warning: --env {name} is shorter than {SHORT_VALUE} characters: every occurrence of"
                " its value in deployer's output is shown as *** (a value that is no secret can go"
                " into the hook command itself: NAME=value ./run)"
            )
    return variables


env_option = click.option(
    "--env", "env", multiple=True, envvar="DEPLOYER_ENV", metavar="NAME[=VALUE]",
    help="Export NAME to every hook on the target (repeatable): its value from this job's environment,"
         " or VALUE. Sent on the session's stdin, never on a command line; shown as *** in all output.",
)  # fmt: skip


_ROUTE_NAMES = (
    "to",
    "jump",
    "proxy",
    "proxy_command",
    "ssh_config",
    "host_key_alias",
    "jump_host_key_alias",
)
_ACCESS_NAMES = ("key_file", "jump_key_file", "known_hosts", "fingerprints", "accept_new_host_keys",
                 "connect_timeout")  # fmt: skip


def access_from(values: Mapping[str, Any], env: Mapping[str, str]) -> Access:
    """An Access from the login options' values (missing ones keep their defaults)."""
    given = {name: values[name] for name in _ACCESS_NAMES if name in values}
    for name in ("known_hosts", "fingerprints"):
        if name in given:
            given[name] = tuple(given[name])
    return Access(**given, env=env, local=not is_ci(env))


def route_options(func: F) -> F:
    """--to/--jump, proxies, ssh_config, keys, host keys, --connect-timeout and --json.

    The command receives `route: RouteRequest` and `access: Access` (and `as_json`).
    """
    options = [
        click.option("--to", "to", multiple=True, envvar="DEPLOYER_TO", metavar="USER@HOST[:PORT]",
                     help="Target (repeatable). Resolved from the last jump host, like ssh -J."),
        click.option("--jump", "jump", multiple=True, envvar="DEPLOYER_JUMP", metavar="USER@HOST[:PORT][,...]",
                     help="Jump host(s), first hop first, comma-separated like ssh -J."),
        *proxy_options(),
        click.option("--ssh-config", type=FilePath, envvar="DEPLOYER_SSH_CONFIG",
                     help="ssh_config file for host aliases (default: ~/.ssh/config locally, none in CI)."),
        key_file_option("Private key file (default: SSH_PRIVATE_KEY, then ssh-agent and ~/.ssh/id_* locally)."),
        click.option("--jump-key-file", type=FilePath, envvar="DEPLOYER_JUMP_KEY_FILE",
                     help="Private key for the jump hosts (default: SSH_JUMP_PRIVATE_KEY, else the target's key)."),
        click.option("--host-key-alias", envvar="DEPLOYER_HOST_KEY_ALIAS", metavar="NAME",
                     help="Look the target's host key up under NAME (like ssh's HostKeyAlias)."),
        click.option("--jump-host-key-alias", envvar="DEPLOYER_JUMP_HOST_KEY_ALIAS", metavar="NAME[,...]",
                     help="Host key aliases of the jump hosts, first hop first."),
        known_hosts_option(),
        fingerprint_option(),
        accept_new_option(),
        connect_timeout_option(),
        json_option,
    ]  # fmt: skip

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        route = {name: kwargs.pop(name) for name in _ROUTE_NAMES}
        route["to"], route["jump"] = tuple(route["to"]), tuple(route["jump"])
        access = access_from({name: kwargs.pop(name) for name in _ACCESS_NAMES}, environment())
        return func(route=RouteRequest(**route), access=access, **kwargs)

    return apply(command, options)  # type: ignore[return-value]


def install_service_options(name: str, user: str, user_help: str) -> Callable[[F], F]:
    """The options every ``install-service`` command takes (where the unit goes, who runs it)."""
    options = [
        click.option("--name", default=name, show_default=True,
                     help="Unit name (without .service)."),
        click.option("--user", "service_user", default=user, show_default=True, help=user_help),
        click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path),
                     default=Path("/etc/systemd/system"), show_default=True),
        click.option("--deployer", "deployer_path",
                     help="Absolute path of the deployer executable (default: this one)."),
        click.option("--print", "print_only", is_flag=True,
                     help="Print the unit on stdout instead of writing it."),
    ]  # fmt: skip

    return lambda command: apply(command, options)
