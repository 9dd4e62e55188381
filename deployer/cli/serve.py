"""``deployer serve``: the webhook receiver (or, with --poll, the GitLab poller) on the target.

``deployer serve --path DIR`` runs the receiver in the foreground; ``deployer serve
install-service ...`` writes a hardened systemd unit for it. Secrets (the webhook secret, the
GitLab token, the TLS key) come from the environment or from files systemd hands over with
``LoadCredential=``; they are never part of a request, a log line or the unit file.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import click

from deployer.cli.options import F, apply
from deployer.cli.tunnel import TunnelGroup
from deployer.errors import ConfigError
from deployer.systemd import install_options

SECRET_CREDENTIAL = "webhook-secret"
TOKEN_CREDENTIAL = "gitlab-token"
TLS_KEY_CREDENTIAL = "tls-key"


def receiver_options(func: F) -> F:
    """Options of the receiver that install-service also writes onto the ExecStart line."""
    options = [
        click.option("--path", "paths", multiple=True, envvar="DEPLOYER_SERVE_PATH", metavar="DIR",
                     help="Deploy directory this receiver serves (repeatable; requests naming another are refused)."),
        click.option("--listen", default="127.0.0.1:8700", show_default=True, envvar="DEPLOYER_SERVE_LISTEN",
                     metavar="[HOST:]PORT", help="Address to listen on."),
        click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), envvar="DEPLOYER_TLS_CERT",
                     help="Serve HTTPS with this PEM certificate (chain)."),
        click.option("--ca-bundle", type=click.Path(dir_okay=False, path_type=Path), envvar="DEPLOYER_CA_BUNDLE",
                     help="CA certificates trusted when fetching artifacts (default: the system's)."),
        click.option("--gitlab-url", default="https://gitlab.com", show_default=True, envvar="DEPLOYER_GITLAB_URL",
                     help="GitLab server artifacts are fetched from."),
        click.option("--max-artifact-size", type=click.IntRange(min=1), default=4096, show_default=True,
                     envvar="DEPLOYER_MAX_ARTIFACT_SIZE", metavar="MIB", help="Largest artifact fetched, in MiB."),
        click.option("--max-body", type=click.IntRange(min=1024), default=64 << 10, show_default=True,
                     envvar="DEPLOYER_MAX_BODY", metavar="BYTES", help="Largest request body accepted."),
        click.option("--window", type=click.FloatRange(min=1), default=300.0, show_default=True,
                     envvar="DEPLOYER_WEBHOOK_WINDOW", metavar="SECONDS",
                     help="Accepted clock difference; request ids are remembered for this long."),
    ]  # fmt: skip
    return apply(func, options)


class ServeGroup(TunnelGroup):
    """`deployer serve --path ...` runs the receiver; known first words are subcommands."""


@click.group(cls=ServeGroup, name="serve")
def serve() -> None:
    """Receive signed deploy requests over HTTP(S) and deploy them here (the webhook fallback)."""


def _listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(
            f"--listen {value!r}: use [HOST:]PORT, like 127.0.0.1:8700 or 0.0.0.0:8700"
        )
    return host, int(port)


def _secret_text(env: Mapping[str, str], variable: str, file: Path | None) -> tuple[str, str]:
    """(value, where it came from) from a file (a systemd credential) or else the environment."""
    if file is None:
        return env.get(variable, ""), variable
    try:
        return file.read_text(), str(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from exc


def _paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    if not paths:
        raise ConfigError("no deploy directory — pass --path DIR (the directory deploys go to)")
    for path in paths:
        if not path.startswith("/") or "\n" in path:
            raise ConfigError(f"--path {path!r} must be an absolute directory, like /srv/app")
    return tuple(p.rstrip("/") or "/" for p in paths)


@serve.command(name="run", hidden=True)
@receiver_options
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the webhook secret from this file (default: DEPLOYER_WEBHOOK_SECRET).")  # fmt: skip
@click.option("--gitlab-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the GitLab token from this file (default: DEPLOYER_GITLAB_TOKEN).")  # fmt: skip
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), envvar="DEPLOYER_TLS_KEY",
              help="The certificate's private key (if not in --tls-cert).")  # fmt: skip
@click.option(
    "--poll",
    is_flag=True,
    help="Pull mode: watch GitLab for new successful pipelines instead of listening.",
)
@click.option(
    "--gitlab-project", envvar="DEPLOYER_GITLAB_PROJECT", help="--poll: project id or path."
)
@click.option("--ref", envvar="DEPLOYER_GITLAB_REF", help="--poll: branch or tag to watch.")
@click.option(
    "--job-name",
    envvar="DEPLOYER_GITLAB_JOB_NAME",
    help="--poll: the job whose artifacts hold the release.",
)
@click.option("--artifact-path", envvar="DEPLOYER_ARTIFACT_PATH",
              help="--poll: the .tar.gz/.zip inside that job's artifacts, like dist/app.tar.gz.")  # fmt: skip
@click.option("--interval", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="--poll: seconds between looks at GitLab.")  # fmt: skip
@click.option("--before", multiple=True, help="--poll: before hook (repeatable).")
@click.option("--after", multiple=True, help="--poll: after hook (repeatable).")
@click.option("--healthcheck", help="--poll: healthcheck command.")
@click.option("--hook-timeout", type=float, default=300.0, show_default=True)
@click.option("--keep", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--shared", multiple=True, metavar="PATH", help="--poll: shared entry (repeatable).")
def run(paths: tuple[str, ...], listen: str, tls_cert: Path | None, ca_bundle: Path | None, gitlab_url: str,
        max_artifact_size: int, max_body: int, window: float, secret_file: Path | None,
        gitlab_token_file: Path | None, tls_key: Path | None, poll: bool, gitlab_project: str | None,
        ref: str | None, job_name: str | None, artifact_path: str | None, interval: float,
        before: tuple[str, ...], after: tuple[str, ...], healthcheck: str | None, hook_timeout: float,
        keep: int, shared: tuple[str, ...]) -> None:  # fmt: skip
    """Receive deploys for --path DIR on --listen HOST:PORT until SIGTERM (or --poll GitLab).

    \b
    DEPLOYER_WEBHOOK_SECRET=... deployer serve --path /srv/app --listen 0.0.0.0:8700 \\
        --tls-cert /etc/deployer/tls.pem --tls-key /etc/deployer/tls.key
    GitLab artifacts are fetched with DEPLOYER_GITLAB_TOKEN (read_api), never a token from a request.
    """
    from deployer.output import Reporter
    from deployer.webhook.sources import FetchSettings

    env = os.environ
    token, _ = _secret_text(env, "DEPLOYER_GITLAB_TOKEN", gitlab_token_file)
    fetching = FetchSettings(
        ca_bundle=ca_bundle, gitlab_url=gitlab_url, gitlab_token=token.strip(),
        max_bytes=max_artifact_size << 20,
    )  # fmt: skip
    reporter = Reporter(tty=False)  # a service: always timestamped lines
    served = _paths(paths)
    if poll:
        from deployer.deploy.hooks import HookSettings
        from deployer.deploy.settings import PushSettings
        from deployer.remote.layout import validate_shared
        from deployer.webhook.poll import Poller, PollSettings

        missing = [f"--{n}" for n, v in (("gitlab-project", gitlab_project), ("ref", ref), ("job-name", job_name),
                                         ("artifact-path", artifact_path)) if not v]  # fmt: skip
        if missing or len(served) != 1 or not token.strip():
            raise ConfigError(
                "--poll needs one --path, --gitlab-project, --ref, --job-name, --artifact-path and a"
                " GitLab token (DEPLOYER_GITLAB_TOKEN or --gitlab-token-file)"
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        settings = PushSettings(
            path=served[0], keep=keep, shared=validate_shared(shared),
            hooks=HookSettings(before=before, after=after, healthcheck=healthcheck or None, timeout=hook_timeout),
        )  # fmt: skip
        assert gitlab_project and ref and job_name and artifact_path
        watch = PollSettings(gitlab_project, ref, job_name, artifact_path, interval)
        Poller(watch, settings, fetching, reporter, socket.gethostname()).run()
        return
    from deployer.webhook.receiver import ReceiverSettings, serve, tls_context
    from deployer.webhook.signing import load_secret

    secret = load_secret(*_secret_text(env, "DEPLOYER_WEBHOOK_SECRET", secret_file))
    host, port = _listen_address(listen)
    if tls_key is not None and tls_cert is None:
        raise ConfigError("--tls-key needs --tls-cert")
    tls = tls_context(tls_cert, tls_key) if tls_cert is not None else None
    settings_ = ReceiverSettings(
        secret=secret, paths=served, fetching=fetching, window=window, max_body=max_body
    )
    serve(host, port, settings_, reporter.line, tls)


@serve.command(name="install-service")
@receiver_options
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("/etc/deployer/webhook.secret"), show_default=True,
              help="Root-only file with the webhook secret; systemd passes it to the service.")  # fmt: skip
@click.option("--gitlab-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Root-only file with a read_api GitLab token (for GitLab artifact sources).")  # fmt: skip
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path),
              help="Root-only file with the TLS key; systemd passes it to the service.")  # fmt: skip
@install_options(
    "deployer-serve",
    "deployer",
    "The user deploys run as (owns the deploy directories; runs the hooks).",
)
def install_service(paths: tuple[str, ...], listen: str, tls_cert: Path | None, ca_bundle: Path | None,
                    gitlab_url: str, max_artifact_size: int, max_body: int, window: float, secret_file: Path,
                    gitlab_token_file: Path | None, tls_key: Path | None, name: str, service_user: str,
                    unit_dir: Path, deployer_path: str | None, print_only: bool) -> None:  # fmt: skip
    """Write a hardened systemd unit running `deployer serve` and print how to enable it."""
    from deployer.systemd import (
        Specifier,
        UnitSpec,
        check_name,
        deployer_argv,
        install_unit,
        render_unit,
    )
    from deployer.webhook.receiver import exposure_warning

    check_name(name)
    served = _paths(paths)
    host, port = _listen_address(listen)
    argv = deployer_argv(deployer_path)
    argv += ["serve", "--listen", f"{host}:{port}"]
    for path in served:
        argv += ["--path", path]
    argv += [
        "--secret-file", Specifier(f"%d/{SECRET_CREDENTIAL}"), "--gitlab-url", gitlab_url,
        "--max-artifact-size", str(max_artifact_size), "--max-body", str(max_body), "--window", f"{window:g}",
    ]  # fmt: skip
    # releases stay readable by the web server; a running deploy ends before the service stops
    # (SIGTERM makes deployer exit 130 once it has)
    extra = [
        f"ReadWritePaths={' '.join(served)}", "UMask=0022", "TimeoutStopSec=infinity", "SuccessExitStatus=130",
    ]  # fmt: skip
    if tls_cert is not None:
        argv += ["--tls-cert", str(tls_cert.absolute())]
    if tls_key is not None:
        argv += ["--tls-key", Specifier(f"%d/{TLS_KEY_CREDENTIAL}")]
        extra.append(f"LoadCredential={TLS_KEY_CREDENTIAL}:{tls_key.absolute()}")
    if ca_bundle is not None:
        argv += ["--ca-bundle", str(ca_bundle.absolute())]
    if gitlab_token_file is not None:
        argv += ["--gitlab-token-file", Specifier(f"%d/{TOKEN_CREDENTIAL}")]
        extra.append(f"LoadCredential={TOKEN_CREDENTIAL}:{gitlab_token_file.absolute()}")
    unit = render_unit(
        UnitSpec(
            name=name,
            description=f"deployer serve: webhook deploys to {', '.join(served)}",
            argv=argv,
            user=service_user,
            key_file=str(secret_file.absolute()),
            runtime_directory=name.replace("@", "-"),
            credential=SECRET_CREDENTIAL,
            written_by="`deployer serve install-service`; see docs/webhook.md",
            extra=extra,
        )
    )
    install_unit(unit, unit_dir, name, print_only)
    warning = exposure_warning(host, tls_cert is not None)
    for line in [
        *([warning] if warning else []),
        "next steps (as root):",
        f"  id {service_user} >/dev/null 2>&1 || useradd --system --create-home --shell /bin/sh {service_user}",
        f"  install -d -o {service_user} {' '.join(served)}     # the deploy directories",
        f"  (umask 077; openssl rand -hex 32 > {secret_file})   # CI's DEPLOYER_WEBHOOK_SECRET: the same value",
        f"  systemctl daemon-reload && systemctl enable --now {name}.service",
        f"  journalctl -u {name} -f",
    ]:
        click.echo(line, err=True)
