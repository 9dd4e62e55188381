"""``deployer tunnel`` and ``deployer authorized-keys``: the click layer for the tunnel keeper.

``deployer tunnel USER@JUMP -R ...`` runs the keeper in the foreground; ``deployer tunnel
install-service ...`` writes a hardened systemd unit; ``deployer tunnel status`` reads the status
file (for container health checks). Everything heavy is imported inside the commands.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from deployer.cli.options import F, apply
from deployer.errors import ConfigError, ExitCode
from deployer.ssh.authorized_keys import render_authorized_keys
from deployer.ssh.forwards import parse_forwards
from deployer.systemd import install_options
from deployer.tunnel.autossh_env import autossh_config
from deployer.tunnel.keeper import (
    DEFAULT_ALIVE_COUNT,
    DEFAULT_ALIVE_INTERVAL,
    DEFAULT_CHECK_INTERVAL,
    TunnelSettings,
)
from deployer.tunnel.policy import DEFAULT_MAX_BACKOFF
from deployer.tunnel.status import parse_listen_address


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"


def keeper_options(func: F) -> F:
    """Options shared by the keeper and install-service (they end up on the ExecStart line)."""
    options = [
        click.option("-R", "--remote-forward", "forwards", multiple=True, envvar="DEPLOYER_TUNNEL_FORWARD",
                     metavar="[BIND:]PORT:HOST:HOSTPORT",
                     help="Remote forward, as ssh -R (repeatable), e.g. -R 22022:localhost:22."),
        click.option("--connect-timeout", type=click.FloatRange(min=1), default=10.0, show_default=True,
                     envvar="DEPLOYER_CONNECT_TIMEOUT", help="Seconds to wait for the jump host."),
        click.option("--alive-interval", type=click.IntRange(min=1), default=DEFAULT_ALIVE_INTERVAL,
                     show_default=True, envvar="DEPLOYER_TUNNEL_ALIVE_INTERVAL",
                     help="ssh ServerAliveInterval: seconds of silence before a keepalive."),
        click.option("--alive-count", type=click.IntRange(min=1), default=DEFAULT_ALIVE_COUNT,
                     show_default=True, envvar="DEPLOYER_TUNNEL_ALIVE_COUNT",
                     help="ssh ServerAliveCountMax: a flow is dead after interval x (count+1) s of silence."),
        click.option("--check-interval", type=click.FloatRange(min=0), default=DEFAULT_CHECK_INTERVAL,
                     show_default=True, envvar="DEPLOYER_TUNNEL_CHECK_INTERVAL",
                     help="Seconds between end-to-end checks of a running tunnel (0: only when it comes up)."),
        click.option("--max-backoff", type=click.FloatRange(min=1), default=DEFAULT_MAX_BACKOFF,
                     show_default=True, envvar="DEPLOYER_TUNNEL_MAX_BACKOFF",
                     help="Longest wait between attempts (jittered)."),
        click.option("--reclaim", is_flag=True, envvar="DEPLOYER_TUNNEL_RECLAIM",
                     help="Kill our own stale session holding the port on the jump host (needs the"
                          " forced command from `deployer authorized-keys --reclaim`)."),
        click.option("--healthz", metavar="[HOST:]PORT", envvar="DEPLOYER_TUNNEL_HEALTHZ",
                     help="Serve GET /healthz (200 when up, 503 otherwise) on this local address."),
    ]  # fmt: skip
    return apply(func, options)


class TunnelGroup(click.Group):
    """`deployer tunnel JUMP -R ...` runs the keeper; known first words are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        run = self.commands["run"]
        with click.Context(run, info_name=ctx.info_name, parent=ctx.parent) as sub:
            run.format_help(sub, formatter)
        self.format_commands(ctx, formatter)


@click.group(cls=TunnelGroup, name="tunnel")
def tunnel() -> None:
    """Keep reverse forwards on a jump host up (ssh -R that never sits broken)."""


@tunnel.command(name="run", hidden=True)
@click.argument("jump", required=False, envvar="DEPLOYER_TUNNEL_JUMP", metavar="USER@JUMP[:PORT]")
@keeper_options
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), envvar="DEPLOYER_KEY_FILE",
              help="Private key file (default: SSH_PRIVATE_KEY).")  # fmt: skip
@click.option("--known-hosts", "known_hosts", multiple=True, envvar="DEPLOYER_KNOWN_HOSTS",
              type=click.Path(dir_okay=False, path_type=Path),
              help="known_hosts file(s) for the jump host, in addition to SSH_KNOWN_HOSTS.")  # fmt: skip
@click.option("--host-key-fingerprint", "fingerprints", multiple=True, metavar="[HOST=]SHA256:...",
              envvar="DEPLOYER_HOST_KEY_FINGERPRINT", help="Trust the jump host's key by fingerprint.")  # fmt: skip
@click.option("--accept-new-host-keys", is_flag=True, envvar="DEPLOYER_ACCEPT_NEW_HOST_KEYS",
              help="Trust an unknown jump host key on first use (printed; a changed key is refused).")  # fmt: skip
@click.option("--status-file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="DEPLOYER_TUNNEL_STATUS_FILE", help="Keep the current state in this JSON file.")  # fmt: skip
@click.option("--autossh-env", is_flag=True,
              help="Take everything from jnovack/autossh's SSH_REMOTE_*, SSH_TUNNEL_PORT, ... variables.")  # fmt: skip
@click.option("--proxy", envvar="DEPLOYER_PROXY", metavar="URL",
              help="Reach the jump host through http://[USER@]HOST:PORT or socks5h://...; password in"
                   " DEPLOYER_PROXY_PASSWORD.")  # fmt: skip
@click.option("--proxy-command", envvar="DEPLOYER_PROXY_COMMAND", metavar="CMD",
              help="Reach the jump host through CMD (ssh's ProxyCommand, %h %p %r).")  # fmt: skip
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
    from deployer.config import is_ci
    from deployer.output import Reporter
    from deployer.ssh.credentials import load_credentials, load_host_key_policy
    from deployer.ssh.route import parse_endpoint
    from deployer.tunnel.keeper import run_keeper

    env: dict[str, str] = dict(os.environ)
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
    endpoint = parse_endpoint(jump, default_user=_default_user(), option="deployer tunnel")
    settings = _settings(endpoint, forwards, status_file=status_file, **options)
    if proxy and proxy_command:
        raise ConfigError("--proxy and --proxy-command both given — pass one of them")
    if proxy or proxy_command:
        from dataclasses import replace

        from deployer.ssh.proxy import parse_proxy, parse_proxy_command

        spec = parse_proxy(proxy, env) if proxy else parse_proxy_command(proxy_command or "")
        settings = replace(settings, proxy=spec)
    local = not is_ci(env)
    credentials = load_credentials(env, key_file, local=local)
    policy = load_host_key_policy(env, known_hosts, fingerprints, accept_new_host_keys, local=local)
    reporter = Reporter(tty=False)  # a long-running keeper: always timestamped
    sys.exit(run_keeper(settings, credentials.candidates(), policy, reporter.line))


def _settings(endpoint: Any, forwards: Sequence[str], *, status_file: Path | None, connect_timeout: float,
              alive_interval: int, alive_count: int, check_interval: float, max_backoff: float,
              reclaim: bool, healthz: str | None) -> TunnelSettings:  # fmt: skip
    return TunnelSettings(
        jump=endpoint,
        forwards=parse_forwards(forwards),
        connect_timeout=connect_timeout,
        alive_interval=alive_interval,
        alive_count=alive_count,
        check_interval=check_interval,
        max_backoff=max_backoff,
        reclaim=reclaim,
        status_file=status_file,
        healthz=parse_listen_address(healthz) if healthz else None,
    )


@tunnel.command(name="status")
@click.option("--status-file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="DEPLOYER_TUNNEL_STATUS_FILE", help="The keeper's --status-file.")  # fmt: skip
def status(status_file: Path) -> None:
    """Print the keeper's status; exit 0 when the tunnel is up, 7 otherwise (health checks)."""
    try:
        document = json.loads(status_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the status file {status_file}: {exc}") from exc
    healthy = bool(document.get("healthy"))
    pid = document.get("pid")
    if healthy and isinstance(pid, int) and not _alive(pid):
        healthy = False
        document["state"], document["healthy"] = "dead", False
        document["reason"] = f"the keeper (pid {pid}) is not running"
    click.echo(json.dumps(document, indent=2, sort_keys=True))
    if not healthy:
        sys.exit(ExitCode.CONNECT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@tunnel.command(name="install-service")
@click.argument("jump", metavar="USER@JUMP[:PORT]")
@keeper_options
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("/etc/deployer/tunnel.key"), show_default=True,
              help="The private key on this machine (root-only); systemd passes it to the service.")  # fmt: skip
@click.option("--known-hosts", "known_hosts", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="known_hosts file with the jump host's key (readable by the service user).")  # fmt: skip
@click.option("--host-key-fingerprint", "fingerprints", multiple=True, metavar="[HOST=]SHA256:...",
              help="Trust the jump host's key by fingerprint.")  # fmt: skip
@install_options("deployer-tunnel", "deployer-tunnel", "Dedicated system user the service runs as.")
def install_service(jump: str, forwards: tuple[str, ...], key_file: Path, known_hosts: tuple[Path, ...],
                    fingerprints: tuple[str, ...], name: str, service_user: str, unit_dir: Path,
                    deployer_path: str | None, print_only: bool, **options: Any) -> None:  # fmt: skip
    """Write a hardened systemd unit running `deployer tunnel` and print how to enable it."""
    from deployer.ssh.hostkeys import parse_pins
    from deployer.ssh.route import parse_endpoint
    from deployer.systemd import (
        UnitSpec,
        check_name,
        credential_path,
        deployer_argv,
        install_unit,
        render_unit,
    )

    check_name(name)
    endpoint = parse_endpoint(jump, default_user=_default_user(), option="install-service")
    runtime = name.replace("@", "-")
    settings = _settings(
        endpoint, forwards, status_file=Path(f"/run/{runtime}/status.json"), **options
    )
    if not known_hosts and not fingerprints:
        raise ConfigError(
            "the service needs the jump host's key: pass --known-hosts FILE or --host-key-fingerprint"
            f" SHA256:... (get them with `deployer keyscan --to {endpoint}`)"
        )
    pins = parse_pins(fingerprints)
    argv = deployer_argv(deployer_path)
    argv += ["tunnel", str(endpoint)]
    for forward in settings.forwards:
        argv += ["-R", forward.spec]
    argv += ["--key-file", credential_path()]
    for path in known_hosts:
        argv += ["--known-hosts", str(path.absolute())]
    for pin in pins:
        argv += ["--host-key-fingerprint", pin]
    argv += [
        "--connect-timeout", f"{settings.connect_timeout:g}",
        "--alive-interval", str(settings.alive_interval),
        "--alive-count", str(settings.alive_count),
        "--check-interval", f"{settings.check_interval:g}",
        "--max-backoff", f"{settings.max_backoff:g}",
        "--status-file", str(settings.status_file),
    ]  # fmt: skip
    if settings.reclaim:
        argv.append("--reclaim")
    if settings.healthz:
        argv += ["--healthz", f"{settings.healthz[0]}:{settings.healthz[1]}"]
    forwards_text = " ".join(f"-R {f}" for f in settings.forwards)
    unit = render_unit(
        UnitSpec(
            name=name,
            description=f"deployer tunnel {forwards_text} on {endpoint}",
            argv=argv,
            user=service_user,
            key_file=str(key_file.absolute()),
            runtime_directory=runtime,
        )
    )
    install_unit(unit, unit_dir, name, print_only)
    if print_only:
        return
    for line in _next_steps(name, service_user, key_file, settings.status_file, argv[0]):
        click.echo(line, err=True)


def _next_steps(
    name: str, user: str, key_file: Path, status_file: Path | None, executable: str
) -> list[str]:
    steps = [
        "next steps (as root):",
        f"  id {user} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin {user}",
        f"  install -D -m 600 -o root -g root YOUR_TUNNEL_KEY {key_file}   # the private key; root-only",
        f"  systemctl daemon-reload && systemctl enable --now {name}.service",
        f"  journalctl -u {name} -f        # state changes, timestamped",
        f"  cat {status_file}              # or: deployer tunnel status --status-file {status_file}",
    ]
    if executable.startswith(("/home/", "/root/")):
        steps.append(
            f"warning: {executable} is under a home directory, which ProtectHome=yes hides from the"
            " service — install deployer elsewhere (e.g. a venv in /opt/deployer) and pass --deployer"
        )
    return steps


# ---------------------------------------------------------------------------- authorized-keys


def _public_key(
    value: str | None, env: Mapping[str, str], key_file: Path | None, what: str
) -> str | None:
    """A public key line from a line, a .pub or private key file, or SSH_PRIVATE_KEY/--key-file."""
    from deployer.ssh.keys import load_private_key, public_key_line, read_private_key_file

    if value:
        text = value.strip()
        if text.startswith(("ssh-", "ecdsa-", "sk-")):
            return " ".join(text.split())
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"{what} {value!r} is neither a public key line nor a file")
        content = path.read_text(errors="replace")
        if "PRIVATE KEY" in content:
            return public_key_line(
                read_private_key_file(path, passphrase=env.get("SSH_PRIVATE_KEY_PASSPHRASE"))
            )
        for line in content.splitlines():
            if line.strip().startswith(("ssh-", "ecdsa-", "sk-")):
                return " ".join(line.split())
        raise ConfigError(f"{what} {path}: no public key line in the file")
    if key_file is not None:
        return public_key_line(
            read_private_key_file(key_file, passphrase=env.get("SSH_PRIVATE_KEY_PASSPHRASE"))
        )
    if env.get("SSH_PRIVATE_KEY", "").strip():
        key = load_private_key(
            env["SSH_PRIVATE_KEY"], passphrase=env.get("SSH_PRIVATE_KEY_PASSPHRASE") or None
        )
        return public_key_line(key)
    return None


@click.command(name="authorized-keys")
@click.option("-R", "--remote-forward", "forwards", multiple=True, required=True,
              metavar="[BIND:]PORT:HOST:HOSTPORT", help="The tunnel's forwards, as for deployer tunnel.")  # fmt: skip
@click.option("--tunnel-key", metavar="KEY|FILE",
              help="The tunnel's public key: a line, a .pub or private key file"
                   " (default: SSH_PRIVATE_KEY or --key-file).")  # fmt: skip
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The tunnel's private key file (its public half is printed).")  # fmt: skip
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
    env = os.environ
    parsed = parse_forwards(forwards)
    tunnel_line = _public_key(tunnel_key, env, key_file, "--tunnel-key")
    ci_line = _public_key(ci_key, {}, None, "--ci-key")
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
