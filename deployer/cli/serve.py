"""``deployer serve``: the webhook receiver (or, with --poll, the GitLab poller) on the target.

``deployer serve --path DIR`` runs the receiver in the foreground; ``deployer serve
install-service ...`` writes a hardened systemd unit for it. Secrets (the webhook secret, the
GitLab token, the TLS key) come from the environment or from files systemd hands over with
``LoadCredential=``; they are never part of a request, a log line or the unit file.
"""

from __future__ import annotations

import socket
from pathlib import Path

import click

from deployer.addresses import parse_listen_address
from deployer.ci.gitlab_api import DEFAULT_GITLAB_URL
from deployer.cli.options import DefaultCommandGroup, F, apply, environment, install_service_options
from deployer.errors import ConfigError


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
        click.option("--gitlab-url", default=DEFAULT_GITLAB_URL, show_default=True, envvar="DEPLOYER_GITLAB_URL",
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


class ServeGroup(DefaultCommandGroup):
    """`deployer serve --path ...` runs the receiver; known first words are subcommands."""


@click.group(cls=ServeGroup, name="serve")
def serve() -> None:
    """Receive signed deploy requests over HTTP(S) and deploy them here (the webhook fallback)."""


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
    from deployer.webhook.service import read_secret, served_paths
    from deployer.webhook.sources import FetchSettings

    env = environment()
    token, _ = read_secret(env, "DEPLOYER_GITLAB_TOKEN", gitlab_token_file)
    fetching = FetchSettings(
        ca_bundle=ca_bundle, gitlab_url=gitlab_url, gitlab_token=token.strip(),
        max_bytes=max_artifact_size << 20,
    )  # fmt: skip
    reporter = Reporter(tty=False)  # a service: always timestamped lines
    served = served_paths(paths)
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
    from deployer.webhook.deployments import ReceiverSettings
    from deployer.webhook.receiver import serve, tls_context
    from deployer.webhook.signing import load_secret

    secret = load_secret(*read_secret(env, "DEPLOYER_WEBHOOK_SECRET", secret_file))
    host, port = parse_listen_address(listen, "--listen")
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
@install_service_options(
    "deployer-serve",
    "deployer",
    "The user deploys run as (owns the deploy directories; runs the hooks).",
)
def install_service(paths: tuple[str, ...], listen: str, tls_cert: Path | None, ca_bundle: Path | None,
                    gitlab_url: str, max_artifact_size: int, max_body: int, window: float, secret_file: Path,
                    gitlab_token_file: Path | None, tls_key: Path | None, name: str, service_user: str,
                    unit_dir: Path, deployer_path: str | None, print_only: bool) -> None:  # fmt: skip
    """Write a hardened systemd unit running `deployer serve` and print how to enable it."""
    from deployer.systemd import check_name, deployer_argv, write_unit
    from deployer.webhook.receiver import exposure_warning
    from deployer.webhook.service import next_steps, receiver_unit, served_paths

    check_name(name)
    served = served_paths(paths)
    host, port = parse_listen_address(listen, "--listen")
    unit = receiver_unit(
        served=served, host=host, port=port, secret_file=secret_file, gitlab_url=gitlab_url,
        max_artifact_size=max_artifact_size, max_body=max_body, window=window, tls_cert=tls_cert,
        tls_key=tls_key, ca_bundle=ca_bundle, gitlab_token_file=gitlab_token_file, name=name,
        user=service_user, deployer=deployer_argv(deployer_path),
    )  # fmt: skip
    if print_only:
        click.echo(unit, nl=False)
    else:
        click.echo(f"wrote {write_unit(unit, unit_dir, name)}", err=True)
    warning = exposure_warning(host, tls_cert is not None)
    for line in [
        *([warning] if warning else []),
        *next_steps(name, service_user, served, secret_file),
    ]:
        click.echo(line, err=True)
