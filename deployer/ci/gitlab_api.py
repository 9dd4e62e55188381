"""The GitLab API through python-gitlab: one client for `setup gitlab` and the webhook receiver.

python-gitlab (and the requests stack under it) is imported only when a client is made, so that
commands that never talk to GitLab do not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_GITLAB_URL = "https://gitlab.com"


def gitlab_client(url: str, token: str, *, timeout: float, ca_bundle: Path | None = None) -> Any:
    """A python-gitlab client for url with a private token (CA bundle: whom to trust for TLS)."""
    import gitlab

    return gitlab.Gitlab(
        url,
        private_token=token,
        timeout=timeout,
        ssl_verify=str(ca_bundle) if ca_bundle else True,
    )
