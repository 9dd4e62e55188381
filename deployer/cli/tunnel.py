"""``deployer tunnel`` and ``deployer authorized-keys``: the click layer for the tunnel keeper.

``deployer tunnel USER@JUMP -R ...`` runs the keeper in the foreground; ``deployer tunnel
install-service ...`` writes a hardened systemd unit; ``deployer tunnel status`` reads the status
file (for container health checks). Everything heavy is imported inside the commands.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deployer.addresses import parse_listen_address
from deployer.cli.options import (
    DefaultCommandGroup,
    F,
    FiniteRange,
    accept_new_option,
    apply,
    connect_timeout_option,
    environment,
    fingerprint_option,
    install_service_options,
    key_file_option,
    known_hosts_option,
    proxy_options,
)
from deployer.errors import ConfigError, ExitCode
from deployer.ssh.access import DEFAULT_CONNECT_TIMEOUT
from deployer.tunnel.policy import DEFAULT_MAX_BACKOFF
from deployer.tunnel.settings import (
    DEFAULT_ALIVE_COUNT,
    DEFAULT_ALIVE_INTERVAL,
    DEFAULT_CHECK_INTERVAL,
    TunnelSettings,
)

if TYPE_CHECKING:
    from deployer.ssh.proxy import ProxySpec
    from deployer.ssh.route import Endpoint


def keeper_options(func: F) -> F:
    """Options shared by the keeper and install-service (they end up on the ExecStart line)."""
    options = [
        click.option("-R", "--remote-forward", "forwards", multiple=True, envvar="DEPLOYER_TUNNEL_FORWARD",
                     metavar="[BIND:]PORT:HOST:HOSTPORT",
                     help="Remote forward, as ssh -R (repeatable), e.g. -R 22022:localhost:22."),
        connect_timeout_option("the jump host", "10"),
        click.option("--alive-interval", type=click.IntRange(min=1), default=DEFAULT_ALIVE_INTERVAL,
                     show_default=True, envvar="DEPLOYER_TUNNEL_ALIVE_INTERVAL",
                     help="ssh ServerAliveInterval: seconds of silence before a keepalive."),
        click.option("--alive-count", type=click.IntRange(min=1), default=DEFAULT_ALIVE_COUNT,
                     show_default=True, envvar="DEPLOYER_TUNNEL_ALIVE_COUNT",
                     help="ssh ServerAliveCountMax: a flow is dead after interval x (count+1) s of silence."),
        click.option("--check-interval", type=FiniteRange(min=0), default=DEFAULT_CHECK_INTERVAL,
                     show_default=True, envvar="DEPLOYER_TUNNEL_CHECK_INTERVAL",
                     help="Seconds between end-to-end checks of a running tunnel (0: only when it comes up)."),
        click.option("--max-backoff", type=FiniteRange(min=1), default=DEFAULT_MAX_BACKOFF,
                     show_default=True, envvar="DEPLOYER_TUNNEL_MAX_BACKOFF",
                     help="Longest wait between attempts (jittered)."),
        click.option("--reclaim", is_flag=True, envvar="DEPLOYER_TUNNEL_RECLAIM",
                     help="Kill our own stale session holding the port on the jump host (needs the"
                          " forced command from `deployer authorized-keys --reclaim`)."),
        click.option("--healthz", metavar="[HOST:]PORT", envvar="DEPLOYER_TUNNEL_HEALTHZ",
                     help="Serve GET /healthz (200 when up, 503 otherwise) on this local address."),
    ]  # fmt: skip
    return apply(func, options)


class TunnelGroup(DefaultCommandGroup):
    """`deployer tunnel JUMP -R ...` runs the keeper; known first words are subcommands."""


@click.group(cls=TunnelGroup, name="tunnel")
def tunnel() -> None:
    """Keep reverse forwards on a jump host up (ssh -R that never sits broken)."""


@tunnel.command(name="run", hidden=True)
@click.argument("jump", required=False, envvar="DEPLOYER_TUNNEL_JUMP", metavar="USER@JUMP[:PORT]")
@keeper_options
@key_file_option()
@known_hosts_option("known_hosts file(s) for the jump host, in addition to SSH_KNOWN_HOSTS.")
@fingerprint_option("Trust the jump host's key by fingerprint.")
@accept_new_option(
    "Trust an unknown jump host key on first use (printed; a changed key is refused)."
)
@click.option("--status-file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="DEPLOYER_TUNNEL_STATUS_FILE", help="Keep the current state in this JSON file.")  # fmt: skip
@click.option("--autossh-env", is_flag=True,
              help="Take everything from jnovack/autossh's SSH_REMOTE_*, SSH_TUNNEL_PORT, ... variables.")  # fmt: skip
@functools.partial(apply, options=proxy_options("the jump host"))
@click.pass_context
def run(ctx: click.Context, /, jump: str | None, forwards: tuple[str, ...], key_file: Path | None,
        known_hosts: tuple[Path, ...], fingerprints: tuple[str, ...], accept_new_host_keys: bool,
        status_file: Path | None, autossh_env: bool, proxy: str | None, proxy_command: str | None,
        **options: Any) -> None:  # fmt: skip
    """Keep the -R forwards on USER@JUMP[:PORT] up, verified end to end, until SIGTERM.

    \b
    deployer tunnel jump@jumphost.example.com -R 22022:localhost:22
    Key and host keys as for push: SSH_PRIVATE_KEY or --key-file; SSH_KNOWN_HOSTS, --known-hosts
    or --host-key-fingerprint (an unknown key is refused). Without arguments, jnovack/autossh's
    variables are used when SSH_REMOTE_HOST is set.
    """
    from deployer.ci.environment import is_ci
    from deployer.output import Reporter
    from deployer.ssh.access import proxy_spec
    from deployer.ssh.credentials import load_credentials, load_host_key_policy
    from deployer.ssh.route import default_user, parse_endpoint
    from deployer.tunnel.autossh_env import autossh_config
    from deployer.tunnel.keeper import run_keeper

    env: dict[str, str] = dict(environment())
    if autossh_env or (jump is None and not forwards and env.get("SSH_REMOTE_HOST")):
        if jump or forwards:
            raise ConfigError(
                "--autossh-env reads the jump host and the forward from SSH_REMOTE_HOST,"
                " SSH_TUNNEL_PORT, ...; drop USER@JUMP and -R (or drop --autossh-env)"
            )
        mapped = autossh_config(env, os.path.exists)
        jump, forwards = mapped.jump, (mapped.forward,)
        key_file = key_file or mapped.key_file
        if not known_hosts and mapped.known_hosts_file is not None:
            known_hosts = (mapped.known_hosts_file,)
        if mapped.key_text and not env.get("SSH_PRIVATE_KEY", "").strip():
            env["SSH_PRIVATE_KEY"] = mapped.key_text
        for name, value in (
            ("alive_interval", mapped.alive_interval),
            ("alive_count", mapped.alive_count),
        ):
            if (
                value is not None
                and ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT
            ):
                options[name] = value
    if not jump:
        raise ConfigError(
            "no jump host — usage: deployer tunnel USER@JUMP[:PORT] -R PORT:HOST:HOSTPORT"
        )
    endpoint = parse_endpoint(jump, default_user=default_user(), option="deployer tunnel")
    settings = _settings(endpoint, forwards, status_file=status_file, proxy=proxy_spec(proxy, proxy_command, env),
                         **options)  # fmt: skip
    local = not is_ci(env)
    credentials = load_credentials(env, key_file, local=local)
    policy = load_host_key_policy(env, known_hosts, fingerprints, accept_new_host_keys, local=local)
    reporter = Reporter(tty=False)  # a long-running keeper: always timestamped
    sys.exit(run_keeper(settings, credentials.candidates(), policy, reporter.line))


def _settings(endpoint: Endpoint, forwards: Sequence[str], *, status_file: Path | None,
              connect_timeout: float | None, alive_interval: int, alive_count: int, check_interval: float,
              max_backoff: float, reclaim: bool, healthz: str | None,
              proxy: ProxySpec | None = None) -> TunnelSettings:  # fmt: skip
    from deployer.ssh.forwards import parse_forwards

    return TunnelSettings(
        jump=endpoint,
        forwards=parse_forwards(forwards),
        connect_timeout=connect_timeout or DEFAULT_CONNECT_TIMEOUT,
        proxy=proxy,
        alive_interval=alive_interval,
        alive_count=alive_count,
        check_interval=check_interval,
        max_backoff=max_backoff,
        reclaim=reclaim,
        status_file=status_file,
        healthz=parse_listen_address(healthz, "--healthz") if healthz else None,
    )


@tunnel.command(name="status")
@click.option("--status-file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="DEPLOYER_TUNNEL_STATUS_FILE", help="The keeper's --status-file.")  # fmt: skip
def status(status_file: Path) -> None:
    """Print the keeper's status; exit 0 when the tunnel is up, 7 otherwise (health checks)."""
    from deployer.tunnel.status import read_status_file

    document, healthy = read_status_file(status_file)
    click.echo(json.dumps(document, indent=2, sort_keys=True))
    if not healthy:
        sys.exit(ExitCode.CONNECT)


@tunnel.command(name="install-service")
@click.argument("jump", metavar="USER@JUMP[:PORT]")
@keeper_options
@key_file_option("The private key on this machine (root-only); systemd passes it to the service.",
                 envvar=None, default=Path("/etc/deployer/tunnel.key"), show_default=True)  # fmt: skip
@known_hosts_option(
    "known_hosts file with the jump host's key (readable by the service user).", envvar=None
)
@fingerprint_option("Trust the jump host's key by fingerprint.", envvar=None)
@install_service_options(
    "deployer-tunnel", "deployer-tunnel", "Dedicated system user the service runs as."
)
def install_service(jump: str, forwards: tuple[str, ...], key_file: Path, known_hosts: tuple[Path, ...],
                    fingerprints: tuple[str, ...], name: str, service_user: str, unit_dir: Path,
                    deployer_path: str | None, print_only: bool, **options: Any) -> None:  # fmt: skip
    """Write a hardened systemd unit running `deployer tunnel` and print how to enable it."""
    from deployer.ssh.hostkeys import parse_pins
    from deployer.ssh.route import default_user, parse_endpoint
    from deployer.systemd import check_name, deployer_argv, write_unit
    from deployer.tunnel.service import next_steps, runtime_directory, tunnel_unit

    check_name(name)
    endpoint = parse_endpoint(jump, default_user=default_user(), option="install-service")
    status_file = Path(f"/run/{runtime_directory(name)}/status.json")
    settings = _settings(endpoint, forwards, status_file=status_file, **options)
    unit, argv = tunnel_unit(settings, key_file=key_file, known_hosts=known_hosts, pins=parse_pins(fingerprints),
                             name=name, user=service_user, deployer=deployer_argv(deployer_path))  # fmt: skip
    if print_only:
        click.echo(unit, nl=False)
        return
    click.echo(f"wrote {write_unit(unit, unit_dir, name)}", err=True)
    for line in next_steps(name, service_user, key_file, settings.status_file, argv[0]):
        click.echo(line, err=True)


# ---------------------------------------------------------------------------- authorized-keys


@click.command(name="authorized-keys")
@click.option("-R", "--remote-forward", "forwards", multiple=True, required=True,
              metavar="[BIND:]PORT:HOST:HOSTPORT", help="The tunnel's forwards, as for deployer tunnel.")  # fmt: skip
@click.option("--tunnel-key", metavar="KEY|FILE",
              help="The tunnel's public key: a line, a .pub or private key file"
                   " (default: SSH_PRIVATE_KEY or --key-file).")  # fmt: skip
@key_file_option("The tunnel's private key file (its public half is printed).", envvar=None)
@click.option("--ci-key", metavar="KEY|FILE", help="CI's public key (line or file).")
@click.option(
    "--reclaim",
    is_flag=True,
    help="Let the tunnel key reclaim its own stale session (deployer tunnel --reclaim).",
)
@click.option("--client-alive-interval", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--client-alive-count", type=click.IntRange(min=1), default=3, show_default=True)
def authorized_keys(forwards: tuple[str, ...], tunnel_key: str | None, key_file: Path | None,
                    ci_key: str | None, reclaim: bool, client_alive_interval: int,
                    client_alive_count: int) -> None:  # fmt: skip
    """Print restricted authorized_keys lines for each role, and the jump host's sshd_config lines."""
    from deployer.ssh.authorized_keys import render_authorized_keys
    from deployer.ssh.forwards import parse_forwards
    from deployer.ssh.keys import public_key_from

    env = environment()
    parsed = parse_forwards(forwards)
    tunnel_line = public_key_from(tunnel_key, env, key_file, "--tunnel-key")
    ci_line = public_key_from(ci_key, {}, None, "--ci-key")
    if tunnel_line is None:
        click.echo(
            "note: no tunnel key given (--tunnel-key, --key-file or SSH_PRIVATE_KEY); placeholder printed",
            err=True,
        )
    if ci_line is None:
        click.echo("note: no --ci-key given; placeholder printed", err=True)
    click.echo(
        render_authorized_keys(
            parsed,
            tunnel_key=tunnel_line or "TUNNEL-PUBLIC-KEY",
            ci_key=ci_line or "CI-PUBLIC-KEY",
            reclaim=reclaim,
            client_alive_interval=client_alive_interval,
            client_alive_count=client_alive_count,
        ),
        nl=False,
    )
