"""How `deployer push` reaches a target (--mode) and what it tells the receiver, as plain values.

Kept light (no HTTP client) so that the command line can import it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

PushMode = Literal["ssh", "webhook", "auto"]
MODES: tuple[str, ...] = get_args(PushMode)


@dataclass(frozen=True)
class WebhookOptions:
    """push's --mode, --webhook-url and where the receiver fetches the artifact from."""

    mode: PushMode = "ssh"
    webhook_url: str | None = None
    webhook_ca_bundle: Path | None = None
    webhook_timeout: float = 3600.0
    webhook_allow_http: bool = False  # plain http:// to a host other than this machine
    artifact_url: str | None = None
    gitlab_job: int | None = None
    gitlab_ref: str | None = None
    gitlab_job_name: str | None = None
    gitlab_project: str | None = None
