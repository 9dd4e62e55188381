"""The GitLab template and component, run for real by gitlab-ci-local against the sshd + tunnel topology.

A job installs deployer-ci into a virtualenv kept in GitLab's cache and pushes through the jump
host and the reverse tunnel. The template's own requirement (``deployer-ci==VERSION``) is what
pip resolves: a wheel of this checkout stands where PyPI's would be (``PIP_FIND_LINKS``), and its
dependencies come from the index pip is configured with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer import __version__
from tests.integration.helpers import live, make_app, releases

ROOT = Path(__file__).resolve().parents[3]
GITLAB_CI_LOCAL = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "gitlab-ci-local"
PIPELINE_TIMEOUT = 240.0  # a first job creates a venv and installs deployer-ci (about 10 s here)
INSTALLING = f"deployer: installing deployer-ci=={__version__}, Python "
REUSING = f"deployer: reusing the cached virtualenv .deployer-ci/venv (deployer-ci=={__version__}, Python "
FINISHED = re.compile(r"deployer-deploy\s+finished in ([\d.]+) (ms|s|min)")

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


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding the wheel of this checkout, as PyPI would serve it."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder), str(ROOT)],
                   check=True, capture_output=True, timeout=180)  # fmt: skip
    assert [p.name for p in folder.iterdir()] == [f"deployer_ci-{__version__}-py3-none-any.whl"]
    yield folder


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


def _new_build(project: Path, app: Path) -> None:
    """Commit another dist/ (jobs in their own build directory see committed files only)."""
    shutil.rmtree(project / "dist")
    shutil.copytree(app, project / "dist", symlinks=True)
    _git(project, "add", "-A", "dist")
    _git(project, "commit", "-q", "-m", "next build")


def _job_env(
    env: dict[str, str], *, wheelhouse: Path | None = None, path: list[str] | None = None
) -> dict[str, str]:
    """The environment jobs see: no deployer on PATH unless given, this checkout's wheel findable."""
    dirs = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not os.access(Path(d) / "deployer", os.X_OK)
    ]
    job = {**env, "PATH": os.pathsep.join([*(path or []), *dirs])}
    if wheelhouse is not None:
        job["PIP_FIND_LINKS"] = " ".join(
            filter(None, [os.environ.get("PIP_FIND_LINKS", ""), str(wheelhouse)])
        )
    return job


def _run_pipeline(runner: Path, project: Path, env: dict[str, str],
                  *extra: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    # Jobs name python:...-slim as their image: --force-shell-executor runs them on this machine.
    tmp = project.parent / "job-tmp"
    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [str(runner), "--shell-executor-no-image", "--force-shell-executor", "--no-color",
         "--home", str(project.parent / "gcl-home"), *extra],
        cwd=project, env={**os.environ, **env, "TMPDIR": str(tmp)}, capture_output=True, text=True,
        timeout=PIPELINE_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _job_seconds(output: str) -> float:
    """How long gitlab-ci-local says the deploy job took."""
    found = FINISHED.search(output)
    assert found, output
    value, unit = float(found.group(1)), found.group(2)
    return value / 1000 if unit == "ms" else value * 60 if unit == "min" else value


def _route(topology) -> tuple[str, str]:
    args = topology.route
    return args[args.index("--to") + 1], args[args.index("--jump") + 1]


def _template_pipeline(topology, target: Path) -> str:
    """The include template, configured with pipeline-level variables as its docs say."""
    to, jump = _route(topology)
    # $$ keeps $DEPLOYER_RELEASE_DIR for the target's shell.
    return f"""
include:
  - local: deploy.gitlab-ci.yml
variables:
  DEPLOYER_TO: {to}
  DEPLOYER_JUMP: {jump}
  DEPLOYER_PATH: {target}
  DEPLOYER_HEALTHCHECK: test -f "$$DEPLOYER_RELEASE_DIR/VERSION"
"""


def test_included_template_deploys(
    topology, gitlab_ci_local: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    target = topology.deploy_path(f"gitlab-{tmp_path.name}")
    project, sha = _project(
        tmp_path, _template_pipeline(topology, target), make_app(tmp_path, "v1")
    )
    run = _run_pipeline(gitlab_ci_local, project, _job_env(topology.env, wheelhouse=wheelhouse))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "PASS  deployer-deploy" in output
    assert INSTALLING in output  # the template's own pin, resolved like a PyPI install
    assert f"deployer, version {__version__}" in output
    current = target / "current"
    assert (current / "VERSION").read_text() == "v1\n"
    history = [
        json.loads(line) for line in (target / ".deployer" / "history").read_text().splitlines()
    ]
    assert history[-1]["commit"] == sha  # provenance from GitLab's predefined variables


def test_second_pipeline_reuses_the_cached_virtualenv(topology, gitlab_ci_local: Path, wheelhouse: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    # --shell-isolation: each job runs in a fresh copy of the project, and GitLab's cache: is
    # copied in before it and out after it, as a runner does.
    target = topology.deploy_path(f"gitlab-cache-{tmp_path.name}")
    project, _ = _project(tmp_path, _template_pipeline(topology, target), make_app(tmp_path, "v1"))
    env = _job_env(topology.env, wheelhouse=wheelhouse)
    first = _run_pipeline(gitlab_ci_local, project, env, "--shell-isolation")
    first_output = first.stdout + first.stderr
    assert first.returncode == 0, first_output
    assert INSTALLING in first_output and REUSING not in first_output
    cache = project / ".gitlab-ci-local" / "cache" / f"deployer-ci-{__version__}-python3.12"
    assert (cache / ".deployer-ci" / "venv" / ".stamp").is_file()

    _new_build(project, make_app(tmp_path, "v2"))
    second = _run_pipeline(gitlab_ci_local, project, env, "--shell-isolation")
    second_output = second.stdout + second.stderr
    assert second.returncode == 0, second_output
    assert REUSING in second_output and INSTALLING not in second_output
    assert (target / "current" / "VERSION").read_text() == "v2\n"
    assert len(releases(target)) == 2
    assert _job_seconds(second_output) < _job_seconds(first_output)


def test_an_image_with_deployer_skips_the_install(
    topology, gitlab_ci_local: Path, tmp_path: Path
) -> None:
    target = topology.deploy_path(f"gitlab-image-{tmp_path.name}")
    project, _ = _project(tmp_path, _template_pipeline(topology, target), make_app(tmp_path, "v1"))
    installed = Path(sys.executable).parent  # this checkout's deployer, as a prebuilt image has it
    run = _run_pipeline(gitlab_ci_local, project, _job_env(topology.env, path=[str(installed)]))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert f"deployer: using {installed / 'deployer'} from the image" in output
    assert not (project / ".deployer-ci").exists()
    assert (target / "current" / "VERSION").read_text() == "v1\n"


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
    run = _run_pipeline(gitlab_ci_local, project, _job_env(topology.env))
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    # named by a digest: the value itself may hold a token
    assert "deployer: installing DEPLOYER_INSTALL sha256:" in output
    assert "FAIL 9" in output  # the job failed with deployer's hook exit code
    assert "switched back" in output
    assert (live(deployed), releases(deployed)) == before
