"""The GitLab template and component, run for real by gitlab-ci-local against the sshd + tunnel topology.

Each pipeline's job creates a virtualenv, pip-installs deployer from this checkout (the template's
install input/variable, overridden here) and pushes through the jump host and the reverse tunnel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import live, make_app, releases

ROOT = Path(__file__).resolve().parents[3]
GITLAB_CI_LOCAL = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "gitlab-ci-local"
PIPELINE_TIMEOUT = 240.0  # a job creates a venv and installs deployer (about 20 s here)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def gitlab_ci_local() -> Path:
    """The pinned gitlab-ci-local that ./dev setup installs (4.60.1 runs on Node 20)."""
    if not os.access(GITLAB_CI_LOCAL, os.X_OK) or shutil.which("node") is None:
        message = f"gitlab-ci-local is not installed at {GITLAB_CI_LOCAL} — run ./dev setup"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return GITLAB_CI_LOCAL


def _git(project: Path, *args: str) -> str:
    identity = ["-c", "user.name=ci", "-c", "user.email=ci@example.com"]
    done = subprocess.run(["git", *identity, *args], cwd=project, check=True, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    return done.stdout.strip()


def _project(tmp_path: Path, pipeline: str, app: Path) -> tuple[Path, str]:
    """A git project holding the templates (as a component project would), dist/ and a pipeline.

    The pipeline text may name ``{sha}``: the component form refers to this project at its HEAD
    commit, which is how GitLab (and gitlab-ci-local) resolve a component of the same project.
    """
    project = tmp_path / "project"
    shutil.copytree(ROOT / "gitlab-templates", project)
    shutil.copytree(app, project / "dist", symlinks=True)
    _git(project, "init", "-q", "-b", "main")
    _git(project, "remote", "add", "origin", "git@gitlab.example.com:acme/app.git")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "templates and build")
    sha = _git(project, "rev-parse", "HEAD")
    (project / ".gitlab-ci.yml").write_text(
        pipeline.replace("{sha}", sha)
    )  # read from the work tree
    return project, sha


def _run_pipeline(
    runner: Path, project: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    # Jobs name python:3.12-slim as their image: --force-shell-executor runs them on this machine.
    tmp = project.parent / "job-tmp"
    tmp.mkdir()
    return subprocess.run(
        [str(runner), "--shell-executor-no-image", "--force-shell-executor", "--no-color",
         "--home", str(project.parent / "gcl-home")],
        cwd=project, env={**os.environ, **env, "TMPDIR": str(tmp)}, capture_output=True, text=True,
        timeout=PIPELINE_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _route(topology) -> tuple[str, str]:
    args = topology.route
    return args[args.index("--to") + 1], args[args.index("--jump") + 1]


def test_included_template_deploys(topology, gitlab_ci_local: Path, tmp_path: Path) -> None:
    to, jump = _route(topology)
    target = topology.deploy_path(f"gitlab-{tmp_path.name}")
    # Pipeline-level variables configure the template; $$ keeps $DEPLOYER_RELEASE_DIR for the target.
    pipeline = f"""
include:
  - local: deploy.gitlab-ci.yml
variables:
  DEPLOYER_TO: {to}
  DEPLOYER_JUMP: {jump}
  DEPLOYER_PATH: {target}
  DEPLOYER_INSTALL: {ROOT}
  DEPLOYER_HEALTHCHECK: test -f "$$DEPLOYER_RELEASE_DIR/VERSION"
"""
    project, sha = _project(tmp_path, pipeline, make_app(tmp_path, "v1"))
    run = _run_pipeline(gitlab_ci_local, project, topology.env)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "PASS  deployer-deploy" in output
    current = target / "current"
    assert (current / "VERSION").read_text() == "v1\n"
    history = [
        json.loads(line) for line in (target / ".deployer" / "history").read_text().splitlines()
    ]
    assert history[-1]["commit"] == sha  # provenance from GitLab's predefined variables


def test_component_failing_healthcheck_fails_the_job(topology, gitlab_ci_local: Path, tmp_path: Path,
                                                     deployed: Path) -> None:  # fmt: skip
    to, jump = _route(topology)
    before = (live(deployed), releases(deployed))
    pipeline = f"""
include:
  - component: gitlab.example.com/acme/app/deploy@{{sha}}
    inputs:
      to: {to}
      jump: {jump}
      path: {deployed}
      install: {ROOT}
      healthcheck: test -f "$$DEPLOYER_RELEASE_DIR/no-such-file"
      args: --healthcheck-retries 0
"""
    project, _ = _project(tmp_path, pipeline, make_app(tmp_path, "broken"))
    run = _run_pipeline(gitlab_ci_local, project, topology.env)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "FAIL 9" in output  # the job failed with deployer's hook exit code
    assert "switched back" in output
    assert (live(deployed), releases(deployed)) == before
