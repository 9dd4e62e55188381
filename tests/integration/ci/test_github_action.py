"""The GitHub Action's own step scripts, run with bash as the runner would, through the real topology.

A small stand-in for the runner: it evaluates the only expressions action.yml may use
(``inputs.*`` and ``github.action_path``) into each step's env, runs ``bash -eo pipefail`` on the
step's script, and carries $GITHUB_ENV and $GITHUB_OUTPUT between steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helpers import live, make_app, releases

ROOT = Path(__file__).resolve().parents[3]
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@dataclass
class StepRun:
    """One step's exit status, output and the outputs it wrote."""

    status: int
    output: str
    outputs: dict[str, str]


class Runner:
    """Runs action.yml's composite steps with bound inputs, like a GitHub runner."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.action: dict[str, Any] = yaml.safe_load((ROOT / "action.yml").read_text())
        self.work = work
        self.temp = work / "runner-temp"
        self.temp.mkdir()
        self.summary = work / "step-summary.md"
        self.summary.touch()
        self.env = {**os.environ, **env, "CI": "true", "GITHUB_ACTIONS": "true", "RUNNER_TEMP": str(self.temp),
                    "GITHUB_STEP_SUMMARY": str(self.summary), "GITHUB_SHA": "0123456789abcdef",
                    "GITHUB_ACTOR": "octocat"}  # fmt: skip

    def step(self, index: int) -> dict[str, Any]:
        """The index-th step of the composite action."""
        step: dict[str, Any] = self.action["runs"]["steps"][index]
        return step

    def run(self, index: int, **given: str) -> StepRun:
        """Run one step with inputs (defaults from action.yml, overridden by given)."""
        declared = self.action["inputs"]
        unknown = set(given) - set(declared)
        assert not unknown, f"inputs not declared in action.yml: {unknown}"
        inputs = {name: given.get(name, spec.get("default", "")) for name, spec in declared.items()}
        missing = [n for n, spec in declared.items() if spec.get("required") and not inputs[n]]
        assert not missing, f"required inputs missing: {missing}"
        step = self.step(index)
        assert step["shell"] == "bash"
        assert "${{" not in step["run"], "inputs must reach the script through env only"
        env = dict(self.env)
        for name, value in (step.get("env") or {}).items():
            env[name] = EXPRESSION.sub(lambda m: self._evaluate(m.group(1), inputs), str(value))
        output_file = self.work / f"output-{index}-{len(list(self.work.iterdir()))}"
        output_file.touch()
        github_env = self.work / "github-env"
        github_env.touch()
        env.update(GITHUB_OUTPUT=str(output_file), GITHUB_ENV=str(github_env))
        script = self.temp / f"step-{index}.sh"
        script.write_text(step["run"])
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              env=env, cwd=self.work, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        for line in github_env.read_text().splitlines():  # what later steps see
            name, _, value = line.partition("=")
            self.env[name] = value
        outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines())
        return StepRun(done.returncode, done.stdout + done.stderr, outputs)

    @staticmethod
    def _evaluate(expression: str, inputs: dict[str, str]) -> str:
        if expression == "github.action_path":
            return str(ROOT)
        if expression.startswith("inputs."):
            return inputs[expression.removeprefix("inputs.")]
        raise AssertionError(f"action.yml uses an expression this test does not know: {expression}")


def test_action_steps_deploy_and_write_the_summary(topology, tmp_path: Path) -> None:
    runner = Runner(tmp_path, topology.env)
    args = topology.route
    route = {"to": args[args.index("--to") + 1], "jump": args[args.index("--jump") + 1]}
    target = topology.deploy_path(f"action-{tmp_path.name}")

    install = runner.run(0, path=str(target), **route)
    assert install.status == 0, install.output

    good = runner.run(1, artifact=str(make_app(tmp_path, "v1")), path=str(target),
                      healthcheck='test -f "$DEPLOYER_RELEASE_DIR/VERSION"', **route)  # fmt: skip
    assert good.status == 0, good.output
    release = live(target)
    assert good.outputs == {"release": release, "status": "success"}
    summary = runner.summary.read_text()
    assert "### deployer push: deployed" in summary
    assert f"| {route['to']} | ✅ deployed | {release} |  |" in summary

    dry = runner.run(
        1, artifact=str(make_app(tmp_path, "v2")), path=str(target), **{"dry-run": "true"}, **route
    )
    assert dry.status == 0, dry.output
    assert releases(target) == [release]
    assert "### deployer push: dry run" in runner.summary.read_text()

    bad = runner.run(1, artifact=str(make_app(tmp_path, "v3")), path=str(target), healthcheck="false",
                     args="--healthcheck-retries 0", **route)  # fmt: skip
    assert bad.status == 9, bad.output
    assert bad.outputs == {"release": "", "status": "failure"}
    assert live(target) == release and releases(target) == [release]
    summary = runner.summary.read_text()
    assert "### deployer push: failed" in summary
    assert "Exit 9 (hook): healthcheck `false`" in summary
    assert "SSH_PRIVATE_KEY" not in summary and "PRIVATE KEY" not in bad.output


def test_action_summary_when_push_stops_before_any_target(tmp_path: Path) -> None:
    runner = Runner(tmp_path, {})
    runner.env["DEPLOYER_ACTION_VENV"] = str(
        Path(sys.executable).parent.parent
    )  # deployer is installed here
    run = runner.run(1, artifact=str(make_app(tmp_path, "v1")), to="nobody@127.0.0.1:1", path="/srv/app",
                     args="--keep 0")  # fmt: skip
    assert run.status == 2, run.output
    assert "Invalid value for '--keep'" in run.output
    summary = runner.summary.read_text()
    assert "deployer stopped before reaching any target (exit 2, usage)" in summary
    assert run.outputs == {"release": "", "status": "failure"}
