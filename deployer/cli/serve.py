"""``deployer serve``: the webhook receiver (or, with --poll, the GitLab poller) on the target.

``deployer serve --path DIR`` runs the receiver in the foreground; ``deployer serve
install-service ...`` writes a hardened systemd unit for it. Secrets (the webhook secret, the
GitLab token, the TLS key) come from the environment or from files systemd hands over with
``LoadCredential=``; they are never part of a request, a log line or the unit file.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

import click

from deployer.addresses import parse_listen_address
from deployer.ci.gitlab_api import DEFAULT_GITLAB_URL
from deployer.cli.options import (
    DefaultCommandGroup,
    F,
    FiniteRange,
    apply,
    environment,
    hook_options,
    install_service_options,
)
from deployer.errors import ConfigError

if TYPE_CHECKING:
    from deployer.deploy.hooks import HookSettings


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
        click.option("--window", type=FiniteRange(min=1), default=300.0, show_default=True,
                     envvar="DEPLOYER_WEBHOOK_WINDOW", metavar="SECONDS",
                     help="Accepted clock difference; request ids are remembered for this long."),
        click.option("--allow-request-hooks", is_flag=True, envvar="DEPLOYER_ALLOW_REQUEST_HOOKS",
                     help="Run the hooks a request names (then the webhook secret can run any command here)."),
        click.option("--allow-env", multiple=True, envvar="DEPLOYER_ALLOW_ENV", metavar="NAME",
                     help="A variable a request may pass to the hooks (push --env NAME; repeatable). Requests"
                          " with any other name are refused."),
        # deployer.toml's [served."/srv/app"] tables: hooks per served path, over the flags
        click.option("--served", "served", type=click.UNPROCESSED, hidden=True, default=None),
    ]  # fmt: skip
    # the hooks every served path runs (--poll's too): set here, never by a request
    return apply(hook_options(func), options)


def _hooks(before: tuple[str, ...], after: tuple[str, ...], healthcheck: str | None, timeout: float,
           retries: int, interval: float, delay: float) -> HookSettings:  # fmt: skip
    """The hook flags as settings (every served path's, unless deployer.toml says otherwise)."""
    from deployer.deploy.hooks import HookSettings

    return HookSettings(before=before, after=after, healthcheck=healthcheck or None, timeout=timeout,
                        healthcheck_retries=retries, healthcheck_interval=interval,
                        healthcheck_delay=delay)  # fmt: skip


def _variable_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """--allow-env names, checked to be names a push can send."""
    from deployer.environment import check_variable_name

    for name in names:
        check_variable_name(name, "--allow-env")
    return names


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
@click.option("--interval", type=FiniteRange(min=1), default=60.0, show_default=True,
              help="--poll: seconds between looks at GitLab.")  # fmt: skip
@click.option("--replay-file", type=click.Path(dir_okay=False, path_type=Path), envvar="DEPLOYER_REPLAY_FILE",
              help="Where accepted request ids are kept across restarts (default: in systemd's StateDirectory,"
                   " else ~/.local/state/deployer/webhook-requests-PORT).")  # fmt: skip
@click.option("--keep", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--shared", multiple=True, metavar="PATH", help="--poll: shared entry (repeatable).")
def run(paths: tuple[str, ...], listen: str, tls_cert: Path | None, ca_bundle: Path | None, gitlab_url: str,
        max_artifact_size: int, max_body: int, window: float, allow_request_hooks: bool,
        allow_env: tuple[str, ...], served: object,
        before: tuple[str, ...], after: tuple[str, ...], healthcheck: str | None, hook_timeout: float,
        healthcheck_retries: int, healthcheck_interval: float, healthcheck_delay: float, secret_file: Path | None,
        gitlab_token_file: Path | None, tls_key: Path | None, poll: bool, gitlab_project: str | None,
        ref: str | None, job_name: str | None, artifact_path: str | None, interval: float,
        replay_file: Path | None, keep: int, shared: tuple[str, ...]) -> None:  # fmt: skip
    """Receive deploys for --path DIR on --listen HOST:PORT until SIGTERM (or --poll GitLab).

    \b
    DEPLOYER_WEBHOOK_SECRET=... deployer serve --path /srv/app --listen 0.0.0.0:8700 \\
        --tls-cert /etc/deployer/tls.pem --tls-key /etc/deployer/tls.key --healthcheck 'curl -fsS localhost/up'
    GitLab artifacts are fetched with DEPLOYER_GITLAB_TOKEN (read_api), never a token from a request.
    Hooks are the receiver's (--before/--after/--healthcheck, per path in deployer.toml): a request
    naming others is refused unless --allow-request-hooks.
    """
    from deployer.output import Reporter
    from deployer.webhook.service import read_secret, served_hooks, served_paths
    from deployer.webhook.sources import FetchSettings

    common = _hooks(before, after, healthcheck, hook_timeout, healthcheck_retries,
                    healthcheck_interval, healthcheck_delay)  # fmt: skip
    env = environment()
    token, _ = read_secret(env, "DEPLOYER_GITLAB_TOKEN", gitlab_token_file)
    fetching = FetchSettings(
        ca_bundle=ca_bundle, gitlab_url=gitlab_url, gitlab_token=token.strip(),
        max_bytes=max_artifact_size << 20,
    )  # fmt: skip
    reporter = Reporter(tty=False)  # a service: always timestamped lines
    directories = served_paths(paths)
    hooks = served_hooks(directories, common, served)
    if poll:
        from deployer.deploy.settings import PushSettings
        from deployer.remote.layout import validate_shared
        from deployer.webhook.poll import Poller, PollSettings

        missing = [f"--{n}" for n, v in (("gitlab-project", gitlab_project), ("ref", ref), ("job-name", job_name),
                                         ("artifact-path", artifact_path)) if not v]  # fmt: skip
        if missing or len(directories) != 1 or not token.strip():
            raise ConfigError(
                "--poll needs one --path, --gitlab-project, --ref, --job-name, --artifact-path and a"
                " GitLab token (DEPLOYER_GITLAB_TOKEN or --gitlab-token-file)"
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        settings = PushSettings(
            path=directories[0],
            keep=keep,
            shared=validate_shared(shared),
            hooks=hooks[directories[0]],
        )
        assert gitlab_project and ref and job_name and artifact_path
        watch = PollSettings(gitlab_project, ref, job_name, artifact_path, interval)
        Poller(watch, settings, fetching, reporter, socket.gethostname()).run()
        return
    from deployer.webhook.deployments import ReceiverSettings
    from deployer.webhook.receiver import serve, tls_context
    from deployer.webhook.replay import default_replay_file
    from deployer.webhook.signing import load_secret

    secret = load_secret(*read_secret(env, "DEPLOYER_WEBHOOK_SECRET", secret_file))
    host, port = parse_listen_address(listen, "--listen")
    if tls_key is not None and tls_cert is None:
        raise ConfigError("--tls-key needs --tls-cert")
    tls = tls_context(tls_cert, tls_key) if tls_cert is not None else None
    settings_ = ReceiverSettings(
        secret=secret, paths=directories, fetching=fetching, window=window, max_body=max_body,
        hooks=hooks, allow_request_hooks=allow_request_hooks, allow_env=_variable_names(allow_env),
        replay_file=replay_file or default_replay_file(env, port),
    )  # fmt: skip
    if allow_request_hooks:
        reporter.line(
            "WARNING: --allow-request-hooks: requests may name hooks, so the webhook secret runs any"
            " command as this user here"
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
                    gitlab_url: str, max_artifact_size: int, max_body: int, window: float,
                    allow_request_hooks: bool, allow_env: tuple[str, ...], served: object,
                    before: tuple[str, ...], after: tuple[str, ...],
                    healthcheck: str | None, hook_timeout: float, healthcheck_retries: int,
                    healthcheck_interval: float, healthcheck_delay: float, secret_file: Path,
                    gitlab_token_file: Path | None,
                    tls_key: Path | None, name: str, service_user: str, unit_dir: Path, deployer_path: str | None,
                    print_only: bool) -> None:  # fmt: skip
    """Write a hardened systemd unit running `deployer serve` and print how to enable it."""
    from deployer.systemd import check_name, deployer_argv, write_unit
    from deployer.webhook.receiver import exposure_warning
    from deployer.webhook.service import hook_arguments, next_steps, receiver_unit, served_paths

    check_name(name)
    directories = served_paths(paths)
    if served is not None:
        raise ConfigError(
            "install-service writes the hook flags into the unit; per-path [served] tables stay in a"
            " deployer.toml the service reads: run it with `deployer --config FILE serve ...`"
            " (systemctl edit), or give the flags instead"
        )
    hooks = _hooks(before, after, healthcheck, hook_timeout, healthcheck_retries,
                   healthcheck_interval, healthcheck_delay)  # fmt: skip
    host, port = parse_listen_address(listen, "--listen")
    unit = receiver_unit(
        served=directories, host=host, port=port, secret_file=secret_file, gitlab_url=gitlab_url,
        max_artifact_size=max_artifact_size, max_body=max_body, window=window, tls_cert=tls_cert,
        tls_key=tls_key, ca_bundle=ca_bundle, gitlab_token_file=gitlab_token_file, name=name,
        user=service_user, deployer=deployer_argv(deployer_path),
        hooks=hook_arguments(hooks, allow_request_hooks, _variable_names(allow_env)),
    )  # fmt: skip
    if print_only:
        click.echo(unit, nl=False)
    else:
        click.echo(f"wrote {write_unit(unit, unit_dir, name)}", err=True)
    warning = exposure_warning(host, tls_cert is not None)
    for line in [
        *([warning] if warning else []),
        *next_steps(name, service_user, directories, secret_file),
    ]:
        click.echo(line, err=True)
