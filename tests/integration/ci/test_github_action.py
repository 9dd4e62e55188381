"""The GitHub Action's own step scripts, run with bash as the runner would, through the real topology.

A small stand-in for the runner: it evaluates the only expressions action.yml may use
(``inputs.*``, ``steps.*.outputs.*`` and ``github.action_path``) into each step's env, runs
``bash -eo pipefail`` on the step's script, and carries $GITHUB_ENV and $GITHUB_OUTPUT between
steps. GitHub's cache service cannot run here: ``actions/cache`` is played by a directory of saved
paths, restored by key when its step runs and saved at the end of a job that missed it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer import __version__
from tests.integration.helpers import live, make_app, releases

ROOT = Path(__file__).resolve().parents[3]
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
CACHE_ACTION = "actions/cache@"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@dataclass
class StepRun:
    """One step's exit status, output and the outputs it wrote."""

    status: int
    output: str
    outputs: dict[str, str]
    seconds: float = 0.0


class Runner:
    """Runs action.yml's composite steps with bound inputs, like a GitHub runner (one job)."""

    def __init__(self, work: Path, env: dict[str, str], shared: Path | None = None) -> None:
        self.action: dict[str, Any] = yaml.safe_load((ROOT / "action.yml").read_text())
        self.work = work
        self.temp = work / "runner-temp"
        self.temp.mkdir(parents=True)
        shared = shared or work
        self.tools = shared / "tool-cache"  # one path on every runner of a kind, as on GitHub's
        self.caches = shared / "caches"  # what the cache service holds, by key
        self.summary = work / "step-summary.md"
        self.summary.touch()
        self.env = {**os.environ, **env, "CI": "true", "GITHUB_ACTIONS": "true", "RUNNER_TEMP": str(self.temp),
                    "RUNNER_TOOL_CACHE": str(self.tools), "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64",
                    "GITHUB_STEP_SUMMARY": str(self.summary), "GITHUB_SHA": "0123456789abcdef",
                    "GITHUB_ACTOR": "octocat"}  # fmt: skip
        self.outputs: dict[str, dict[str, str]] = {}  # by step id
        self.to_save: list[tuple[Path, Path]] = []

    def index(self, name: str) -> int:
        """The position of the step with this name."""
        names = [step["name"] for step in self.action["runs"]["steps"]]
        return names.index(name)

    def step(self, index: int) -> dict[str, Any]:
        """The index-th step of the composite action."""
        step: dict[str, Any] = self.action["runs"]["steps"][index]
        return step

    def install(self, **given: str) -> list[StepRun]:
        """Run every step before `deployer push`: locate, restore and install deployer-ci."""
        return [self.run(index, **given) for index in range(self.index("deployer push"))]

    def push(self, **given: str) -> StepRun:
        """Run the `deployer push` step."""
        return self.run(self.index("deployer push"), **given)

    def finish(self) -> None:
        """End the job: save what actions/cache missed, as its post step does."""
        for path, saved in self.to_save:
            if path.is_dir() and not saved.exists():
                shutil.copytree(path, saved, symlinks=True)

    def _cache(self, step: dict[str, Any], inputs: dict[str, str]) -> StepRun:
        with_ = {k: self._expand(str(v), inputs) for k, v in step["with"].items()}
        assert set(with_) == {"path", "key"} and all(with_.values()), with_
        path, saved = Path(with_["path"]), self.caches / with_["key"]
        hit = saved.is_dir()
        if hit:
            shutil.copytree(saved, path, symlinks=True)
        else:
            self.to_save.append((path, saved))
        self.outputs[step.get("id", "")] = {"cache-hit": str(hit).lower()}
        return StepRun(
            0, f"cache {'hit' if hit else 'miss'}: {with_['key']}", {"cache-hit": str(hit).lower()}
        )

    def _expand(self, text: str, inputs: dict[str, str]) -> str:
        return EXPRESSION.sub(lambda m: self._evaluate(m.group(1), inputs), text)

    def run(self, index: int, **given: str) -> StepRun:
        """Run one step with inputs (defaults from action.yml, overridden by given)."""
        declared = self.action["inputs"]
        unknown = set(given) - set(declared)
        assert not unknown, f"inputs not declared in action.yml: {unknown}"
        inputs = {name: given.get(name, spec.get("default", "")) for name, spec in declared.items()}
        missing = [n for n, spec in declared.items() if spec.get("required") and not inputs[n]]
        assert not missing, f"required inputs missing: {missing}"
        step = self.step(index)
        if "uses" in step:
            assert step["uses"].startswith(CACHE_ACTION), (
                f"a step this runner cannot play: {step['uses']}"
            )
            return self._cache(step, inputs)
        assert step["shell"] == "bash"
        assert "${{" not in step["run"], "inputs must reach the script through env only"
        env = dict(self.env)
        for name, value in (step.get("env") or {}).items():
            env[name] = self._expand(str(value), inputs)
        output_file = self.work / f"output-{index}-{len(list(self.work.iterdir()))}"
        output_file.touch()
        github_env = self.work / "github-env"
        github_env.touch()
        env.update(GITHUB_OUTPUT=str(output_file), GITHUB_ENV=str(github_env))
        script = self.temp / f"step-{index}.sh"
        script.write_text(step["run"])
        started = time.monotonic()
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              env=env, cwd=self.work, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        seconds = time.monotonic() - started
        for line in github_env.read_text().splitlines():  # what later steps see
            name, _, value = line.partition("=")
            self.env[name] = value
        outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines())
        if "id" in step:
            self.outputs[step["id"]] = outputs
        return StepRun(done.returncode, done.stdout + done.stderr, outputs, seconds)

    def _evaluate(self, expression: str, inputs: dict[str, str]) -> str:
        if expression == "github.action_path":
            return str(ROOT)
        if expression.startswith("inputs."):
            return inputs[expression.removeprefix("inputs.")]
        if found := re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expression):
            return self.outputs[found.group(1)][found.group(2)]
        raise AssertionError(f"action.yml uses an expression this test does not know: {expression}")


def _route(topology) -> dict[str, str]:
    args = topology.route
    return {"to": args[args.index("--to") + 1], "jump": args[args.index("--jump") + 1]}


def test_action_steps_deploy_and_write_the_summary(topology, tmp_path: Path) -> None:
    runner = Runner(tmp_path, topology.env)
    route = _route(topology)
    target = topology.deploy_path(f"action-{tmp_path.name}")

    for step in runner.install(path=str(target), **route):
        assert step.status == 0, step.output
    venv = Path(runner.env["DEPLOYER_ACTION_VENV"])
    assert venv.parent == runner.tools / "deployer-ci"
    assert venv.name.startswith(f"deployer-ci-{__version__}-python")

    good = runner.push(artifact=str(make_app(tmp_path, "v1")), path=str(target),
                       healthcheck='test -f "$DEPLOYER_RELEASE_DIR/VERSION"', **route)  # fmt: skip
    assert good.status == 0, good.output
    release = live(target)
    assert good.outputs == {"release": release, "status": "success"}
    summary = runner.summary.read_text()
    assert "### deployer push: deployed" in summary
    assert f"| {route['to']} | ✅ deployed | {release} |  |" in summary

    dry = runner.push(
        artifact=str(make_app(tmp_path, "v2")), path=str(target), **{"dry-run": "true"}, **route
    )
    assert dry.status == 0, dry.output
    assert releases(target) == [release]
    assert "### deployer push: dry run" in runner.summary.read_text()

    bad = runner.push(artifact=str(make_app(tmp_path, "v3")), path=str(target), healthcheck="false",
                      args="--healthcheck-retries 0", **route)  # fmt: skip
    assert bad.status == 9, bad.output
    assert bad.outputs == {"release": "", "status": "failure"}
    assert live(target) == release and releases(target) == [release]
    summary = runner.summary.read_text()
    assert "### deployer push: failed" in summary
    assert "Exit 9 (hook): healthcheck `false`" in summary
    assert "SSH_PRIVATE_KEY" not in summary and "PRIVATE KEY" not in bad.output


def test_a_second_job_restores_deployer_from_the_cache(topology, tmp_path: Path) -> None:
    route = _route(topology)
    target = topology.deploy_path(f"action-cache-{tmp_path.name}")
    first = Runner(tmp_path / "first", topology.env, shared=tmp_path)
    locate, restore, install = first.install(path=str(target), **route)
    assert restore.outputs == {"cache-hit": "false"}
    assert "deployer: installing deployer-ci from" in install.output, install.output
    first.finish()

    shutil.rmtree(first.tools)  # the next job runs on a fresh machine
    second = Runner(tmp_path / "second", topology.env, shared=tmp_path)
    again = second.install(path=str(target), **route)
    assert again[0].outputs == locate.outputs  # the same key and path
    assert again[1].outputs == {"cache-hit": "true"}
    assert "deployer: reusing the cached virtualenv" in again[2].output, again[2].output
    assert again[2].seconds < install.seconds
    pushed = second.push(artifact=str(make_app(tmp_path, "v1")), path=str(target), **route)
    assert pushed.status == 0, pushed.output
    assert (target / "current" / "VERSION").read_text() == "v1\n"


def test_action_summary_when_push_stops_before_any_target(tmp_path: Path) -> None:
    runner = Runner(tmp_path, {})
    runner.env["DEPLOYER_ACTION_VENV"] = str(
        Path(sys.executable).parent.parent
    )  # deployer is installed here
    run = runner.push(artifact=str(make_app(tmp_path, "v1")), to="nobody@127.0.0.1:1", path="/srv/app",
                      args="--keep 0")  # fmt: skip
    assert run.status == 2, run.output
    assert "Invalid value for '--keep'" in run.output
    summary = runner.summary.read_text()
    assert "deployer stopped before reaching any target (exit 2, usage)" in summary
    assert run.outputs == {"release": "", "status": "failure"}
