"""How `deployer push` reaches a target: --mode ssh|webhook|auto and the webhook's options.

Kept apart from the webhook client so that the command line imports only click here
(``deployer --help`` stays fast); the client is imported when a push actually uses it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from deployer.cli.options import F, apply

MODES = ("ssh", "webhook", "auto")


def webhook_options(func: F) -> F:
    """push's --mode, --webhook-url and where the receiver fetches the artifact from."""
    options = [
        click.option("--mode", type=click.Choice(MODES), default="ssh", show_default=True, envvar="DEPLOYER_MODE",
                     help="ssh; webhook (a signed request to `deployer serve`); auto (webhook only when the"
                          " SSH route cannot be established)."),
        click.option("--webhook-url", envvar="DEPLOYER_WEBHOOK_URL", metavar="URL",
                     help="Base URL of `deployer serve` (secret: DEPLOYER_WEBHOOK_SECRET)."),
        click.option("--webhook-ca-bundle", type=click.Path(dir_okay=False, path_type=Path),
                     envvar="DEPLOYER_WEBHOOK_CA_BUNDLE", help="CA certificates to trust for --webhook-url."),
        click.option("--webhook-timeout", type=click.FloatRange(min=1), default=3600.0, show_default=True,
                     envvar="DEPLOYER_WEBHOOK_TIMEOUT", help="Seconds to follow a webhook deploy."),
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
    return apply(func, options)


@dataclass(frozen=True)
class WebhookOptions:
    """The values of webhook_options."""

    mode: str = "ssh"
    webhook_url: str | None = None
    webhook_ca_bundle: Path | None = None
    webhook_timeout: float = 3600.0
    artifact_url: str | None = None
    gitlab_job: int | None = None
    gitlab_ref: str | None = None
    gitlab_job_name: str | None = None
    gitlab_project: str | None = None


def pop_webhook_options(kwargs: dict[str, Any]) -> WebhookOptions:
    """Take webhook_options' values out of a command's kwargs."""
    return WebhookOptions(
        **{f.name: kwargs.pop(f.name) for f in dataclasses.fields(WebhookOptions)}
    )
