"""Health checks people can debug: a readiness delay, and the failing check's output before the switch back."""

from __future__ import annotations

import json

import pytest

from deployer.errors import ExitCode
from tests.integration.helpers import live, make_app, releases

pytestmark = pytest.mark.integration


def test_the_first_attempt_waits_for_the_delay(topology, deployer, deployed, tmp_path) -> None:
    times = deployed / "shared" / f"times-{tmp_path.name}"
    run = deployer(
        ["push", str(make_app(tmp_path, "slow-start")), *topology.route, "--path", str(deployed),
         "--after", f"date +%s.%N > {times}", "--healthcheck", f"date +%s.%N >> {times}",
         "--healthcheck-delay", "2"],
        env=topology.env,
    )  # fmt: skip
    assert run.status == 0, run.output
    switched, checked = (float(t) for t in times.read_text().split())
    assert checked - switched >= 2.0  # measured on the target, between the after hook and the check
    assert "healthcheck: waiting 2 s before the first attempt" in run.stderr
    lines = run.stderr.splitlines()
    waited = next(i for i, line in enumerate(lines) if "waiting 2 s" in line)
    assert any("after: $ date" in line for line in lines[:waited])  # after the after hooks


def test_a_failing_check_shows_its_last_output_before_the_switch_back(
    topology, deployer, deployed, tmp_path
) -> None:
    before, kept = live(deployed), releases(deployed)
    attempt = deployed / "shared" / f"attempt-{tmp_path.name}"
    # each attempt says which one it is: only the last one's output is repeated at the end
    check = (
        f"n=$(($(cat {attempt} 2>/dev/null || echo 0) + 1)); echo $n > {attempt};"
        ' echo "attempt $n: GET /up"; echo "curl: (7) Failed to connect on attempt $n" >&2; exit 7'
    )
    run = deployer(
        ["push", str(make_app(tmp_path, "sick")), *topology.route, "--path", str(deployed),
         "--healthcheck", check, "--healthcheck-retries", "1", "--healthcheck-interval", "0", "--json"],
        env=topology.env,
    )  # fmt: skip
    assert run.status == ExitCode.HOOK, run.output
    lines = run.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if "what its last attempt printed" in line)
    back = next(i for i, line in enumerate(lines) if "switched current back" in line)
    assert header < back
    block = [line.split("] | ", 1)[1] for line in lines[header + 1 : back] if "] | " in line]
    assert sorted(block) == ["attempt 2: GET /up", "curl: (7) Failed to connect on attempt 2"]
    (outcome,) = json.loads(run.stdout)["targets"]
    check_json = outcome["details"]["healthcheck"]
    assert check_json["attempts"] == 2 and check_json["command"] == check
    assert sorted(check_json["output"]) == block and outcome["status"] == "failed"
    assert live(deployed) == before and releases(deployed) == kept


def test_the_output_kept_is_bounded_and_silence_is_said(
    topology, deployer, deployed, tmp_path
) -> None:
    run = deployer(
        ["push", str(make_app(tmp_path, "chatty")), *topology.route, "--path", str(deployed),
         "--healthcheck", "seq 1 500; exit 1", "--healthcheck-retries", "0", "--json"],
        env=topology.env,
    )  # fmt: skip
    assert run.status == ExitCode.HOOK, run.output
    (outcome,) = json.loads(run.stdout)["targets"]
    assert outcome["details"]["healthcheck"]["output"] == [str(n) for n in range(471, 501)]
    assert "at most the last 30 lines" in run.stderr
    quiet = deployer(
        ["push", str(make_app(tmp_path, "quiet")), *topology.route, "--path", str(deployed),
         "--healthcheck", "exit 1", "--healthcheck-retries", "0"],
        env=topology.env,
    )  # fmt: skip
    assert quiet.status == ExitCode.HOOK
    lines = quiet.stderr.splitlines()
    silent = next(i for i, line in enumerate(lines) if "its last attempt printed nothing" in line)
    assert silent < next(i for i, line in enumerate(lines) if "switched current back" in line)
