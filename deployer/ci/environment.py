"""What the CI job's environment says: are we in CI, and who deploys which commit from which pipeline."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on Python 3.10 only
    pass


def is_ci(env: Mapping[str, str]) -> bool:
    """True in GitLab CI, GitHub Actions and anything else that sets CI=true."""
    return (
        env.get("CI", "").lower() in ("1", "true", "yes")
        or "GITLAB_CI" in env
        or "GITHUB_ACTIONS" in env
    )


def provenance_fields(env: Mapping[str, str]) -> dict[str, str]:
    """Who deploys which commit from which pipeline, as CI describes it (GitLab, GitHub, local)."""
    if "GITLAB_CI" in env:
        return {
            "by": env.get("GITLAB_USER_LOGIN", "")
            or env.get("GITLAB_USER_NAME", "")
            or "gitlab-ci",
            "commit": env.get("CI_COMMIT_SHA", ""),
            "ref": env.get("CI_COMMIT_REF_NAME", ""),
            "pipeline": env.get("CI_PIPELINE_URL", "") or env.get("CI_JOB_URL", ""),
        }
    if "GITHUB_ACTIONS" in env:
        run = ""
        if env.get("GITHUB_RUN_ID"):
            server = env.get("GITHUB_SERVER_URL", "https://github.com")
            run = f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env['GITHUB_RUN_ID']}"
        return {
            "by": env.get("GITHUB_ACTOR", "") or "github-actions",
            "commit": env.get("GITHUB_SHA", ""),
            "ref": env.get("GITHUB_REF_NAME", ""),
            "pipeline": run,
        }
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.geteuid())
    return {"by": user, "commit": env.get("DEPLOYER_COMMIT", ""), "ref": "", "pipeline": ""}
