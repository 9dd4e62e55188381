"""The command line: parse, build settings, call a service, render text or --json.

Heavy modules (paramiko, the deploy service) are imported inside the commands so that
``deployer --help`` starts fast. Only ``main`` prints errors and chooses the exit status.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deployer import __version__
from deployer.cli.options import F, apply
from deployer.cli.push_modes import pop_webhook_options, webhook_options
from deployer.config import (
    build_default_map,
    find_config_file,
    is_ci,
    provenance_fields,
    read_config_file,
)
from deployer.deploy.outcome import Status
from deployer.errors import ConfigError, ConnectError, DeployerError, ExitCode

if TYPE_CHECKING:
    from deployer.deploy.outcome import Outcome
    from deployer.output import Reporter
    from deployer.ssh.connection import Connection, ConnectOptions
    from deployer.ssh.route import Route

DEFAULT_CONNECT_TIMEOUT = 10.0


class Lines(click.types.StringParamType):
    """A string option whose environment variable holds one value per line (hook commands)."""

    name = "command"
    envvar_list_splitter = "\n"


def route_options(func: F) -> F:
    """--to/--jump and everything about keys, host keys and timeouts."""
    options = [
        click.option("--to", "to", multiple=True, envvar="DEPLOYER_TO", metavar="USER@HOST[:PORT]",
                     help="Target (repeatable). Resolved from the last jump host, like ssh -J."),
        click.option("--jump", "jump", multiple=True, envvar="DEPLOYER_JUMP", metavar="USER@HOST[:PORT][,...]",
                     help="Jump host(s), first hop first, comma-separated like ssh -J."),
        click.option("--proxy", envvar="DEPLOYER_PROXY", metavar="URL",
                     help="Reach the first hop through http://[USER@]HOST:PORT (CONNECT) or socks5h://[USER@]HOST:PORT;"
                          " password in DEPLOYER_PROXY_PASSWORD."),
        click.option("--proxy-command", envvar="DEPLOYER_PROXY_COMMAND", metavar="CMD",
                     help="Reach the first hop through CMD's stdin/stdout, like ssh's ProxyCommand (%h %p %r)."),
        click.option("--ssh-config", type=click.Path(dir_okay=False, path_type=Path), envvar="DEPLOYER_SSH_CONFIG",
                     help="ssh_config file for host aliases (default: ~/.ssh/config locally, none in CI)."),
        click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), envvar="DEPLOYER_KEY_FILE",
                     help="Private key file (default: SSH_PRIVATE_KEY, then ssh-agent and ~/.ssh/id_* locally)."),
        click.option("--jump-key-file", type=click.Path(dir_okay=False, path_type=Path),
                     envvar="DEPLOYER_JUMP_KEY_FILE",
                     help="Private key for the jump hosts (default: SSH_JUMP_PRIVATE_KEY, else the target's key)."),
        click.option("--host-key-alias", envvar="DEPLOYER_HOST_KEY_ALIAS", metavar="NAME",
                     help="Look the target's host key up under NAME (like ssh's HostKeyAlias)."),
        click.option("--jump-host-key-alias", envvar="DEPLOYER_JUMP_HOST_KEY_ALIAS", metavar="NAME[,...]",
                     help="Host key aliases of the jump hosts, first hop first."),
        click.option("--known-hosts", "known_hosts", multiple=True, envvar="DEPLOYER_KNOWN_HOSTS",
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="known_hosts file(s), in addition to SSH_KNOWN_HOSTS."),
        click.option("--host-key-fingerprint", "fingerprints", multiple=True,
                     envvar="DEPLOYER_HOST_KEY_FINGERPRINT", metavar="[HOST=]SHA256:...",
                     help="Trust a host key by fingerprint (repeatable)."),
        click.option("--accept-new-host-keys", is_flag=True, envvar="DEPLOYER_ACCEPT_NEW_HOST_KEYS",
                     help="Trust unknown host keys on first use and print them (never a changed key)."),
        click.option("--connect-timeout", type=click.FloatRange(min=0.1), envvar="DEPLOYER_CONNECT_TIMEOUT",
                     help="Seconds to wait for each hop.  [default: ssh_config's ConnectTimeout, else 10]"),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout."),
    ]  # fmt: skip
    return apply(func, options)


# Commands that live in their own modules, imported only when used (keeps --help fast).
LAZY_COMMANDS: dict[str, str] = {
    "tunnel": "deployer.cli.tunnel:tunnel",
    "authorized-keys": "deployer.cli.tunnel:authorized_keys",
    "proxy-connect": "deployer.cli.proxy:proxy_connect",
    "setup": "deployer.gitlab.setup:setup",
    "serve": "deployer.cli.serve:serve",
}


class Group(click.Group):
    """A click group that also serves the commands listed in LAZY_COMMANDS."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module_name, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
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
            if command is not None:
                commands[name] = {p.name: p.multiple for p in command.params if p.name}
        ctx.default_map = build_default_map(read_config_file(path), commands, path)


# ---------------------------------------------------------------------------- building blocks


def _env() -> Mapping[str, str]:
    return os.environ


def _reporter(as_json: bool, *, bars: bool = True) -> Reporter:
    from deployer.output import Reporter

    return Reporter(tty=None if bars else False)


def _routes(to: Sequence[str], jump: Sequence[str]) -> list[Route]:
    """Routes from --to/--jump and the other route_options of the running command."""
    from deployer.ssh.proxy import parse_proxy, parse_proxy_command
    from deployer.ssh.route import build_route
    from deployer.ssh.ssh_config import ssh_config_lookup

    if not to:
        raise ConfigError("no target given — pass --to USER@HOST[:PORT] (or set DEPLOYER_TO)")
    params = click.get_current_context().params
    if params["proxy"] and params["proxy_command"]:
        raise ConfigError("--proxy and --proxy-command both given — pass one of them")
    proxy = None
    if params["proxy"]:
        proxy = parse_proxy(params["proxy"], _env())
    elif params["proxy_command"]:
        proxy = parse_proxy_command(params["proxy_command"])
    config: Path | None = params["ssh_config"]
    if config is not None and not config.is_file():
        raise ConfigError(f"--ssh-config {config} not found — check the path")
    # ~/.ssh/config is the developer's: honoured locally, ignored in CI unless named
    if config is None and not is_ci(_env()):
        config = Path.home() / ".ssh" / "config"
    lookup = ssh_config_lookup(config) if config is not None else None
    aliases = _split([params["jump_host_key_alias"] or ""])
    return [
        build_route(t, jump, default_user=_default_user(), lookup=lookup, proxy=proxy,
                    host_key_alias=params["host_key_alias"] or "", jump_host_key_aliases=aliases)
        for t in _split(to)
    ]  # fmt: skip


def _split(values: Sequence[str]) -> list[str]:
    """--to a,b and --to a --to b both work (a list in deployer.toml too)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _default_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"


def _keyscan_hint(route: Route) -> str:
    jumps = f" --jump {','.join(str(j) for j in route.jumps)}" if route.jumps else ""
    proxy = ""
    if route.proxy is not None:
        command = route.proxy.kind == "command"
        proxy = f" --proxy{'-command' if command else ''} {shlex.quote(route.proxy.command or str(route.proxy))}"
    return f"deployer keyscan --to {route.target}{jumps}{proxy}"


def _connect_options(
    route: Route,
    *,
    key_file: Path | None,
    jump_key_file: Path | None,
    known_hosts: Sequence[Path],
    fingerprints: Sequence[str],
    accept_new_host_keys: bool,
    connect_timeout: float | None,
    reporter: Reporter,
) -> ConnectOptions:
    from deployer.ssh.connection import ConnectOptions
    from deployer.ssh.credentials import (
        load_credentials,
        load_hop_credentials,
        load_host_key_policy,
    )

    env = _env()
    credentials = load_credentials(env, key_file, local=not is_ci(env))
    return ConnectOptions(
        credentials=credentials,
        host_keys=load_host_key_policy(
            env, known_hosts, fingerprints, accept_new_host_keys, local=not is_ci(env)
        ),
        keyscan_hint=_keyscan_hint(route),
        timeout=connect_timeout or route.connect_timeout or DEFAULT_CONNECT_TIMEOUT,
        on_notice=reporter.line,
        hop_credentials=load_hop_credentials(env, route, credentials, jump_key_file),
    )


@contextmanager
def _connection(route: Route, reporter: Reporter, **kwargs: Any) -> Iterator[Connection]:
    from deployer.ssh.connection import connected

    options = _connect_options(route, reporter=reporter, **kwargs)
    with connected(route, options) as connection:
        yield connection


def _route_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the connection-related options out of a command's kwargs."""
    names = ("key_file", "jump_key_file", "known_hosts", "fingerprints", "accept_new_host_keys",
             "connect_timeout")  # fmt: skip
    return {name: kwargs.pop(name) for name in names}


def _provenance() -> Any:
    from deployer.deploy.outcome import Provenance

    return Provenance(**provenance_fields(_env()))


def _hook_settings(**kwargs: Any) -> Any:
    from deployer.deploy.hooks import HookSettings

    return HookSettings(**kwargs)


def _summarize(reporter: Reporter, outcomes: list[Outcome]) -> None:
    """One line per target when there are several, so the job log says which host did what."""
    if len(outcomes) > 1:
        for outcome in outcomes:
            detail = outcome.release if outcome.status == Status.DEPLOYED else outcome.error
            reporter.line(
                f"summary: {outcome.target}: {outcome.status}" + (f" ({detail})" if detail else "")
            )


def _finish(
    command: str, outcomes: list[Outcome], as_json: bool, error: DeployerError | None
) -> None:
    """Print the --json document; re-raise the first failure for main() to report."""
    if as_json:
        from deployer.output import emit_json

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


def _for_each_target(
    command: str,
    routes: list[Route],
    reporter: Reporter,
    route_kwargs: dict[str, Any],
    as_json: bool,
    action: Callable[[Connection], Outcome],
) -> list[Outcome]:
    """Run action on each target in turn; stop at the first failure and report the rest as skipped."""
    from deployer.deploy.outcome import Outcome

    outcomes: list[Outcome] = []
    error: DeployerError | None = None
    for route in routes:
        if error is not None:
            outcomes.append(
                Outcome(str(route.target), Status.SKIPPED, error="an earlier target failed")
            )
            continue
        try:
            with _connection(route, reporter, **route_kwargs) as connection:
                outcomes.append(action(connection))
        except DeployerError as exc:
            error = exc
            outcomes.append(
                Outcome(
                    str(route.target), Status.FAILED, error=str(exc), exit_code=int(exc.exit_code)
                )
            )
    _summarize(reporter, outcomes)
    _finish(command, outcomes, as_json, error)
    return outcomes


# ---------------------------------------------------------------------------- commands


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path), envvar="DEPLOYER_ARTIFACT")
@route_options
@click.option(
    "--path", required=True, envvar="DEPLOYER_PATH", help="Deploy directory on the target."
)
@click.option(
    "--before",
    multiple=True,
    type=Lines(),
    envvar="DEPLOYER_BEFORE",
    help="Command run in the new release before the switch (repeatable); failure aborts.",
)
@click.option(
    "--after",
    multiple=True,
    type=Lines(),
    envvar="DEPLOYER_AFTER",
    help="Command run after the switch (repeatable); failure switches back.",
)
@click.option(
    "--healthcheck",
    envvar="DEPLOYER_HEALTHCHECK",
    help="Command run after the switch; failure switches back and exits 9.",
)
@click.option(
    "--hook-timeout",
    type=float,
    default=300.0,
    show_default=True,
    envvar="DEPLOYER_HOOK_TIMEOUT",
    help="Seconds each hook may run.",
)
@click.option(
    "--healthcheck-retries",
    type=int,
    default=2,
    show_default=True,
    envvar="DEPLOYER_HEALTHCHECK_RETRIES",
)
@click.option(
    "--healthcheck-interval",
    type=float,
    default=3.0,
    show_default=True,
    envvar="DEPLOYER_HEALTHCHECK_INTERVAL",
    help="Seconds between healthcheck attempts.",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    envvar="DEPLOYER_KEEP",
    help="Releases to keep (the live one is never removed).",
)
@click.option(
    "--shared",
    multiple=True,
    envvar="DEPLOYER_SHARED",
    metavar="PATH",
    help="Path linked from DIR/shared into each release ('dir/' for a directory; repeatable).",
)
@click.option(
    "--compress-level",
    type=click.IntRange(0, 9),
    envvar="DEPLOYER_COMPRESS_LEVEL",
    help="gzip level of the upload stream (0: none). Default: gzip -1, none for incompressible content.",
)
@click.option(
    "--no-delta",
    is_flag=True,
    envvar="DEPLOYER_NO_DELTA",
    help="Send every file, even those unchanged since the live release.",
)
@click.option(
    "--link-unchanged",
    is_flag=True,
    envvar="DEPLOYER_LINK_UNCHANGED",
    help="Hard-link unchanged files from the live release instead of copying them"
    " (faster, but a file changed in place changes in every release sharing it).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="DEPLOYER_DRY_RUN",
    help="Connect and check everything, print the plan, change nothing.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    envvar="DEPLOYER_PARALLEL",
    help="Targets worked on at the same time.",
)
@click.option(
    "--batch",
    envvar="DEPLOYER_BATCH",
    metavar="N|P%",
    help="Switch targets in rolling batches of N (or P% of them); default: all together.",
)
@click.option(
    "--shard",
    envvar="DEPLOYER_SHARD",
    metavar="K/N|auto",
    help="Deploy only every N-th target starting at K (auto: GitLab's CI_NODE_INDEX/CI_NODE_TOTAL).",
)
@webhook_options
def push(artifact: Path, to: tuple[str, ...], jump: tuple[str, ...], path: str, as_json: bool,
         before: tuple[str, ...], after: tuple[str, ...], healthcheck: str | None, hook_timeout: float,
         healthcheck_retries: int, healthcheck_interval: float, keep: int, shared: tuple[str, ...],
         compress_level: int | None, no_delta: bool, link_unchanged: bool, dry_run: bool, parallel: int,
         batch: str | None, shard: str | None, **kwargs: Any) -> None:  # fmt: skip
    """Upload ARTIFACT (dir, .tar, .tar.gz, .tgz or .zip) as a new release and switch to it."""
    from deployer.artifact.scan import open_artifact
    from deployer.deploy.payload import prepare_payload
    from deployer.deploy.settings import PushSettings
    from deployer.deploy.target import TargetDeploy
    from deployer.deploy.upload import TransferSettings
    from deployer.push.fleet import (
        FleetSettings,
        parse_batch,
        parse_shard,
        push_fleet,
        select_shard,
    )
    from deployer.remote.layout import validate_shared

    reporter = _reporter(as_json)
    webhook = pop_webhook_options(kwargs)
    route_kwargs = _route_kwargs(kwargs)
    settings = PushSettings(
        path=_validate_path(path),
        keep=keep,
        shared=validate_shared(_split(shared)),
        hooks=_hook_settings(before=before, after=after, healthcheck=healthcheck or None, timeout=hook_timeout,
                             healthcheck_retries=healthcheck_retries, healthcheck_interval=healthcheck_interval),
        dry_run=dry_run,
        transfer=TransferSettings(delta=not no_delta, hardlink=link_unchanged, compresslevel=compress_level),
    )  # fmt: skip
    if webhook.mode != "ssh":
        from deployer.webhook.client import WebhookPush

        if dry_run:
            raise ConfigError(
                f"--dry-run works over SSH only — drop it or use --mode ssh, not {webhook.mode}"
            )
        via_webhook = WebhookPush(webhook, artifact, settings.path, _env())
    if webhook.mode == "webhook":
        outcomes, error = via_webhook.run(settings, _provenance(), reporter)
        _finish("push", outcomes, as_json, error)
        return
    routes = select_shard(_routes(to, jump), parse_shard(shard, _env()))
    if webhook.mode == "auto" and len(routes) != 1:
        raise ConfigError("--mode auto deploys to one target (one --to and one --webhook-url)")
    if not routes:
        raise ConfigError(
            f"--shard {shard} selects no target out of {len(_split(to))} — use fewer shards"
        )
    fleet = FleetSettings(parallel=parallel, batch=parse_batch(batch, len(routes)))
    payload = prepare_payload(open_artifact(artifact), targets=len(routes))
    opened = payload.artifact
    provenance = _provenance()
    if len(routes) > 1:
        reporter = _reporter(as_json, bars=False)  # one bar cannot show several uploads
    reporter.line(
        f"deploying {artifact} ({opened.file_count} files) to {', '.join(str(r) for r in routes)}"
        + (" [dry run]" if dry_run else "")
    )
    established: list[str] = []  # --mode auto falls back only if no connection ever came up
    with contextlib.ExitStack() as connections:
        connections.callback(payload.close)

        def start(index: int) -> TargetDeploy:
            def connect() -> Connection:
                connection = connections.enter_context(
                    _connection(routes[index], reporter, **route_kwargs)
                )
                established.append(connection.label)
                return connection

            return TargetDeploy(
                connect(), payload, settings, provenance, reporter, reconnect=connect
            )

        outcomes, error = push_fleet([str(r.target) for r in routes], start, fleet)
    if webhook.mode == "auto" and isinstance(error, ConnectError) and not established:
        # nothing ran on the target: deploying through the receiver cannot double anything up
        reporter.line(
            f"SSH route to {routes[0]} cannot be established ({error});"
            f" falling back to the webhook at {webhook.webhook_url}"
        )
        outcomes, error = via_webhook.run(settings, provenance, reporter)
    _summarize(reporter, outcomes)
    _finish("push", outcomes, as_json, error)


def _validate_path(path: str) -> str:
    if not path.strip() or "\n" in path or "\0" in path:
        raise ConfigError("--path must name a directory on the target, like /srv/app")
    return path.rstrip("/") or "/"


@cli.command()
@route_options
@click.option(
    "--path", required=True, envvar="DEPLOYER_PATH", help="Deploy directory on the target."
)
def releases(
    to: tuple[str, ...], jump: tuple[str, ...], path: str, as_json: bool, **kwargs: Any
) -> None:
    """List the releases on each target, the live one marked."""
    from deployer.deploy.manage import list_target

    reporter = _reporter(as_json)
    outcomes = _for_each_target(
        "releases", _routes(to, jump), reporter, _route_kwargs(kwargs), as_json,
        lambda connection: list_target(connection, _validate_path(path)),
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


@cli.command()
@route_options
@click.option(
    "--path", required=True, envvar="DEPLOYER_PATH", help="Deploy directory on the target."
)
@click.option(
    "--release", "release_id", help="Release id to switch to (default: the one before current)."
)
@click.option(
    "--after",
    multiple=True,
    type=Lines(),
    envvar="DEPLOYER_AFTER",
    help="Command run after the switch (repeatable), e.g. a service reload.",
)
@click.option(
    "--hook-timeout", type=float, default=300.0, show_default=True, envvar="DEPLOYER_HOOK_TIMEOUT"
)
def rollback(to: tuple[str, ...], jump: tuple[str, ...], path: str, as_json: bool, release_id: str | None,
             after: tuple[str, ...], hook_timeout: float, **kwargs: Any) -> None:  # fmt: skip
    """Switch current back to the previous release (or --release ID)."""
    from deployer.deploy.manage import rollback_target

    reporter = _reporter(as_json)
    hooks = _hook_settings(after=after, timeout=hook_timeout)
    provenance = _provenance()
    _for_each_target(
        "rollback", _routes(to, jump), reporter, _route_kwargs(kwargs), as_json,
        lambda connection: rollback_target(connection, _validate_path(path), release_id, hooks, provenance, reporter),
    )  # fmt: skip


@cli.command()
@route_options
@click.option(
    "--path", required=True, envvar="DEPLOYER_PATH", help="Deploy directory on the target."
)
def unlock(
    to: tuple[str, ...], jump: tuple[str, ...], path: str, as_json: bool, **kwargs: Any
) -> None:
    """Remove a deploy lock left behind by a deploy that died."""
    from deployer.deploy.manage import unlock_target

    reporter = _reporter(as_json)
    outcomes = _for_each_target(
        "unlock", _routes(to, jump), reporter, _route_kwargs(kwargs), as_json,
        lambda connection: unlock_target(connection, _validate_path(path)),
    )  # fmt: skip
    for outcome in outcomes:
        was = outcome.details.get("was")
        reporter.line(
            f"{outcome.target}: " + (f"removed lock ({was})" if was else "no lock was held")
        )


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@route_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(to: tuple[str, ...], jump: tuple[str, ...], as_json: bool, command: tuple[str, ...],
          **kwargs: Any) -> None:  # fmt: skip
    """Run COMMAND on each target (after --), streaming its output; exit with its status."""
    from deployer.deploy.outcome import Outcome

    reporter = _reporter(as_json)
    script = " ".join(command)  # like ssh: the words are joined and run by the login shell
    statuses: list[int] = []

    def run(connection: Connection) -> Outcome:
        def forward(stream: str, chunk: bytes) -> None:
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.buffer.write(chunk)
            target.flush()

        result = connection.run(script, on_output=None if as_json else forward)
        statuses.append(result.status)
        return Outcome(connection.label, Status.RAN, exit_code=result.status,
                       details={"stdout": result.stdout.decode(errors="replace"),
                                "stderr": result.stderr.decode(errors="replace")})  # fmt: skip

    _for_each_target("exec", _routes(to, jump), reporter, _route_kwargs(kwargs), as_json, run)
    failed = [s for s in statuses if s != 0]
    if failed:
        sys.exit(failed[0])


@cli.command()
@route_options
@click.option("--hash", "hashed", is_flag=True, help="Hash host names like ssh-keygen -H.")
def keyscan(
    to: tuple[str, ...], jump: tuple[str, ...], as_json: bool, hashed: bool, **kwargs: Any
) -> None:
    """Print known_hosts lines and SHA256 fingerprints for every hop, to paste into SSH_KNOWN_HOSTS."""
    from deployer.ssh.keyscan import scan_routes

    reporter = _reporter(as_json)
    route_kwargs = _route_kwargs(kwargs)
    routes = _routes(to, jump)
    options = _connect_options(routes[0], reporter=reporter, **route_kwargs)
    scan_routes(routes, options, hashed=hashed, as_json=as_json, reporter=reporter)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DEPLOYER_KEY_FILE",
    help="Private key file (default: SSH_PRIVATE_KEY).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def agent(key_file: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with SSH_AUTH_SOCK pointing at an agent holding the key in memory."""
    from deployer.ssh.agent import run_with_agent
    from deployer.ssh.credentials import load_credentials

    credentials = load_credentials(_env(), key_file, local=False)
    if not credentials.keys:
        raise ConfigError("no key for the agent — set SSH_PRIVATE_KEY or pass --key-file")
    sys.exit(run_with_agent(credentials.keys, list(command)))


@cli.command()
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


# ---------------------------------------------------------------------------- entry point


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the CLI, print one-line errors, exit with the documented status."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in args or os.environ.get("DEPLOYER_DEBUG", "") not in ("", "0")
    signal.signal(signal.SIGTERM, _interrupt)  # CI cancels jobs with SIGTERM: clean up like Ctrl-C
    try:
        cli.main(args=args, prog_name="deployer", standalone_mode=False)
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
            traceback.print_exc()
        click.echo(f"deployer: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("deployer: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except Exception:  # a bug: say so in one line, with the stack only on request
        if show_traceback:
            traceback.print_exc()
        exc_type, exc_value = sys.exc_info()[:2]
        name = exc_type.__name__ if exc_type else "error"
        click.echo(
            f"deployer: internal error ({name}: {exc_value}) — rerun with --traceback and report it",
            err=True,
        )
        sys.exit(ExitCode.ERROR)
