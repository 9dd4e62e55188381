"""``deployer push``: upload an artifact as a new release and switch to it (SSH, webhook or auto)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deployer.artifact.compression import COMPRESS_MODES, CompressMode
from deployer.ci.environment import provenance_fields
from deployer.cli import render
from deployer.cli.options import (
    F,
    FiniteRange,
    apply,
    env_option,
    environment,
    hook_options,
    hook_variables,
    path_option,
    route_options,
    transport_option,
)
from deployer.errors import ConfigError, ConnectError
from deployer.ssh.access import Access, RouteRequest, split_values
from deployer.ssh.clients import CLIENT_CHOICES, ClientChoice
from deployer.webhook.options import MODES, WebhookOptions

if TYPE_CHECKING:
    from deployer.deploy.transport import Transport


def webhook_options(func: F) -> F:
    """push's --mode, --webhook-url and where the receiver fetches the artifact from (as `webhook`)."""
    options = [
        click.option("--mode", type=click.Choice(MODES), default="ssh", show_default=True, envvar="DEPLOYER_MODE",
                     help="ssh; webhook (a signed request to `deployer serve`); auto (webhook only when the"
                          " SSH route cannot be established)."),
        click.option("--webhook-url", envvar="DEPLOYER_WEBHOOK_URL", metavar="URL",
                     help="Base URL of `deployer serve` (secret: DEPLOYER_WEBHOOK_SECRET)."),
        click.option("--webhook-ca-bundle", type=click.Path(dir_okay=False, path_type=Path),
                     envvar="DEPLOYER_WEBHOOK_CA_BUNDLE", help="CA certificates to trust for --webhook-url."),
        click.option("--webhook-timeout", type=FiniteRange(min=1), default=3600.0, show_default=True,
                     envvar="DEPLOYER_WEBHOOK_TIMEOUT", help="Seconds to follow a webhook deploy."),
        click.option("--webhook-allow-http", is_flag=True, envvar="DEPLOYER_WEBHOOK_ALLOW_HTTP",
                     help="Allow a plain http:// --webhook-url to another machine (default: loopback only)."),
        click.option("--artifact-url", envvar="DEPLOYER_ARTIFACT_URL", metavar="URL",
                     help="Webhook: the receiver downloads ARTIFACT from this https:// URL."),
        click.option("--gitlab-job", type=click.IntRange(min=1), envvar="DEPLOYER_GITLAB_JOB", metavar="ID",
                     help="Webhook: the receiver fetches ARTIFACT from this job's artifacts."),
        click.option("--gitlab-ref", envvar="DEPLOYER_GITLAB_REF",
                     help="Webhook: ... or from the latest successful --gitlab-job-name job on this ref."),
        click.option("--gitlab-job-name", envvar="DEPLOYER_GITLAB_JOB_NAME"),
        click.option("--gitlab-project", envvar="DEPLOYER_GITLAB_PROJECT",
                     help="Webhook: project id or path (default: CI_PROJECT_ID)."),
    ]  # fmt: skip

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        names = [f.name for f in dataclasses.fields(WebhookOptions)]
        webhook = WebhookOptions(**{name: kwargs.pop(name) for name in names})
        return func(webhook=webhook, **kwargs)

    return apply(command, options)  # type: ignore[return-value]


def transfer_options(func: F) -> F:
    """--keep, --shared, compression, delta, --dry-run and the fleet options."""
    options = [
        click.option("--keep", type=click.IntRange(min=1), default=5, show_default=True, envvar="DEPLOYER_KEEP",
                     help="Releases to keep (the live one is never removed)."),
        click.option("--shared", multiple=True, envvar="DEPLOYER_SHARED", metavar="PATH",
                     help="Path linked from DIR/shared into each release ('dir/' for a directory; repeatable)."),
        click.option("--exclude", multiple=True, envvar="DEPLOYER_EXCLUDE", metavar="PATTERN",
                     help="Leave out what matches (gitignore syntax: 'node_modules/', '*.map', '!keep.map';"
                          " repeatable; after the artifact's own .deployignore)."),
        click.option("--group", envvar="DEPLOYER_GROUP", metavar="GROUP",
                     help="Release files get group GROUP, readable by it (directories setgid); the deploy"
                          " user must be in GROUP."),
        click.option("--writable", multiple=True, envvar="DEPLOYER_WRITABLE", metavar="PATH",
                     help="Shared path made writable by --group (never by everyone; repeatable)."),
        click.option("--compress", type=click.Choice(COMPRESS_MODES), default="auto", show_default=True,
                     envvar="DEPLOYER_COMPRESS",
                     help="Upload stream codec. auto: zstd where the target has it (else gzip), plain tar"
                          " for incompressible content."),
        click.option("--compress-level", type=int, envvar="DEPLOYER_COMPRESS_LEVEL", metavar="N",
                     help="Fixed level (zstd 1-19, gzip 1-9; auto: 1-9). Default: zstd adapts its level to"
                          " the link while sending, gzip uses 1."),
        click.option("--no-delta", is_flag=True, envvar="DEPLOYER_NO_DELTA",
                     help="Send every file, even those unchanged since the live release."),
        click.option("--link-unchanged", is_flag=True, envvar="DEPLOYER_LINK_UNCHANGED",
                     help="Hard-link unchanged files from the live release instead of copying them"
                          " (faster, but a file changed in place changes in every release sharing it)."),
        click.option("--dry-run", is_flag=True, envvar="DEPLOYER_DRY_RUN",
                     help="Connect and check everything, print the plan, change nothing."),
        click.option("--parallel", type=click.IntRange(min=1), default=10, show_default=True,
                     envvar="DEPLOYER_PARALLEL", help="Targets worked on at the same time."),
        click.option("--batch", envvar="DEPLOYER_BATCH", metavar="N|P%",
                     help="Switch targets in rolling batches of N (or P% of them); default: all together."),
        click.option("--shard", envvar="DEPLOYER_SHARD", metavar="K/N|auto",
                     help="Deploy only every N-th target starting at K (auto: GitLab's CI_NODE_INDEX/CI_NODE_TOTAL)."),
        click.option("--ssh-client", type=click.Choice(CLIENT_CHOICES), default="auto", show_default=True,
                     envvar="DEPLOYER_SSH_CLIENT",
                     help="Who carries the push: openssh (ssh 8.5+, one master per hop, shared by a fleet),"
                          " paramiko, or auto (openssh for fleets and large artifacts over fast links)."),
    ]  # fmt: skip
    return apply(func, options)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path), envvar="DEPLOYER_ARTIFACT")
@route_options
@path_option
@hook_options
@env_option
@transfer_options
@transport_option
@webhook_options
def push(artifact: Path, route: RouteRequest, access: Access, path: str, as_json: bool,
         before: tuple[str, ...], after: tuple[str, ...], healthcheck: str | None, hook_timeout: float,
         healthcheck_retries: int, healthcheck_interval: float, healthcheck_delay: float,
         env: tuple[str, ...], keep: int, shared: tuple[str, ...],
         exclude: tuple[str, ...], group: str | None, writable: tuple[str, ...],
         compress: CompressMode, compress_level: int | None, no_delta: bool, link_unchanged: bool, dry_run: bool,
         parallel: int, batch: str | None, shard: str | None, ssh_client: ClientChoice, transport: Transport,
         webhook: WebhookOptions) -> None:  # fmt: skip
    """Upload ARTIFACT (dir, .tar, .tar.gz, .tgz or .zip) as a new release and switch to it."""
    from deployer.artifact.ignore import check_patterns
    from deployer.artifact.scan import open_artifact
    from deployer.deploy.hooks import HookSettings
    from deployer.deploy.outcome import Provenance
    from deployer.deploy.plan import describe_excluded
    from deployer.deploy.settings import PushSettings
    from deployer.deploy.upload import TransferSettings
    from deployer.push.fleet import FleetSettings, parse_batch, parse_shard, select_shard
    from deployer.remote.layout import validate_path, validate_shared
    from deployer.remote.permissions import validate_permissions
    from deployer.ssh.access import build_routes
    from deployer.ssh.clients import first_contact

    job = environment()
    reporter = render.reporter()
    variables = hook_variables(env, job, reporter)
    shared_entries = validate_shared(split_values(shared))
    settings = PushSettings(
        path=validate_path(path),
        keep=keep,
        shared=shared_entries,
        exclude=check_patterns(exclude),
        permissions=validate_permissions(group, split_values(writable), shared_entries),
        hooks=HookSettings(before=before, after=after, healthcheck=healthcheck or None, timeout=hook_timeout,
                           healthcheck_retries=healthcheck_retries, healthcheck_interval=healthcheck_interval,
                           healthcheck_delay=healthcheck_delay, env=variables),
        dry_run=dry_run,
        transfer=TransferSettings(delta=not no_delta, hardlink=link_unchanged, compresslevel=compress_level,
                                  compress=compress),
    )  # fmt: skip
    provenance = Provenance(**provenance_fields(job))
    if transport == "sftp":
        from deployer.deploy.sftp.target import refuse_hooks

        if webhook.mode != "ssh":
            raise ConfigError(f"--transport sftp works with --mode ssh only, not {webhook.mode}")
        if ssh_client == "openssh":
            raise ConfigError(
                "--transport sftp goes over paramiko (the OpenSSH client carries shell deploys)"
                " — drop --ssh-client openssh"
            )
        if compress in ("zstd", "gzip") or compress_level is not None:
            asked = (
                f"--compress {compress}"
                if compress_level is None
                else f"--compress-level {compress_level}"
            )
            raise ConfigError(
                f"{asked} with --transport sftp: SFTP writes the files one by one, with no stream to"
                " compress — drop it, or deploy to an account with a shell (--transport shell)"
            )
        refuse_hooks(settings, "--transport sftp")
    if webhook.mode != "ssh":
        from deployer.webhook.client import WebhookPush

        if dry_run:
            raise ConfigError(
                f"--dry-run works over SSH only — drop it or use --mode ssh, not {webhook.mode}"
            )
        if settings.permissions.group:
            # the receiver deploys as its own service user: which group may read or write is its
            # administrator's choice, not a request's
            raise ConfigError(
                f"--group and --writable work over SSH only — drop them or use --mode ssh, not"
                f" {webhook.mode}"
            )
        via_webhook = WebhookPush(webhook, artifact, settings.path, job)
    if webhook.mode == "webhook":
        outcomes, error = via_webhook.run(settings, provenance, reporter)
        render.finish("push", outcomes, as_json, error)
        return
    routes = select_shard(build_routes(route, access), parse_shard(shard, job))
    if webhook.mode == "auto" and len(routes) != 1:
        raise ConfigError("--mode auto deploys to one target (one --to and one --webhook-url)")
    if not routes:
        raise ConfigError(
            f"--shard {shard} selects no target out of {len(split_values(route.to))} — use fewer shards"
        )
    fleet = FleetSettings(parallel=parallel, batch=parse_batch(batch, len(routes)))
    # one target: its first hop is dialled now, while the SSH layer loads and the artifact is read
    contact = first_contact(routes[0], access.timeout_for(routes[0])) if len(routes) == 1 else None
    try:
        from deployer.deploy.payload import prepare_payload
        from deployer.push.service import push_over_ssh

        payload = prepare_payload(
            open_artifact(artifact, exclude=settings.exclude),
            targets=len(routes),
            sample=settings.transfer.compress == "auto" and transport != "sftp" and not dry_run,
        )
        if len(routes) > 1:
            reporter = render.reporter(bars=False)  # one bar cannot show several uploads
        reporter.line(
            f"deploying {artifact} ({payload.artifact.file_count} files) to {', '.join(str(r) for r in routes)}"
            + (" [dry run]" if dry_run else "")
        )
        if payload.artifact.cleared:
            reporter.line(payload.artifact.cleared_note())
        describe_excluded(reporter, payload.artifact, dry_run=dry_run)
        result = push_over_ssh(
            routes, access, payload, settings, provenance, reporter, fleet, transport, ssh_client,
            contact,
        )  # fmt: skip
    finally:
        if contact is not None:
            contact.close()  # unless the push took it
    outcomes, error = result.outcomes, result.error
    if webhook.mode == "auto" and isinstance(error, ConnectError) and not result.established:
        # nothing ran on the target: deploying through the receiver cannot double anything up
        reporter.line(
            f"SSH route to {routes[0]} cannot be established ({error});"
            f" falling back to the webhook at {webhook.webhook_url}"
        )
        outcomes, error = via_webhook.run(settings, provenance, reporter)
    render.summarize(reporter, outcomes)
    render.finish("push", outcomes, as_json, error)
