"""Hooks run for real with /bin/sh on this machine (LocalExecutor): variables, delay, the failing check's output."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from deployer.deploy.hooks import OUTPUT_LINES, HookRunner, HookSettings, run_healthcheck
from deployer.errors import ConfigError, HealthcheckError
from deployer.output import Masker, Reporter
from deployer.remote.local import LocalExecutor


def runner(settings: HookSettings, masker: Masker | None = None) -> tuple[HookRunner, io.StringIO]:
    log = io.StringIO()
    return HookRunner(
        LocalExecutor("t"), Reporter(log, tty=True, masker=masker), settings, True
    ), log


@pytest.mark.parametrize(("changes", "words"), [
    ({"env": {"DEPLOYER_RELEASE_DIR": "x"}}, "names starting with DEPLOYER_ are deployer's own"),
    ({"env": {"A-B": "x"}}, "'A-B' is not a variable name"),
    ({"healthcheck_delay": -1}, "--healthcheck-delay must be 0 or more"),
])  # fmt: skip
def test_settings_refuse_what_a_target_cannot_take(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        HookSettings(**changes)  # type: ignore[arg-type]


def test_a_hook_gets_the_variables_and_its_output_is_masked(tmp_path: Path) -> None:
    settings = HookSettings(env={"API_TOKEN": "t0ken-12345"})
    hooks, log = runner(settings, Masker(settings.env.values()))
    # the value comes out split over two writes a moment apart: masked once the line is whole
    command = 'printf %s "$API_TOKEN" | cut -c1-4; printf "%s" "${API_TOKEN%????}"; sleep 0.3; echo "${API_TOKEN#???????}"'
    result = hooks.run("before", command, str(tmp_path), {})
    assert result.status == 0
    assert log.getvalue().splitlines()[1:] == ["[t] before| t0ke", "[t] before| ***"]
    assert result.output == ("t0ke", "t0ken-12345")  # raw: masked where it is printed


def test_the_check_waits_then_says_what_its_last_attempt_printed(tmp_path: Path) -> None:
    count = tmp_path / "count"
    check = f"n=$(($(cat {count} 2>/dev/null || echo 0) + 1)); echo $n > {count}; seq 1 $((n * 40)); exit 3"
    settings = HookSettings(healthcheck=check, healthcheck_retries=1, healthcheck_interval=0,
                            healthcheck_delay=0.5)  # fmt: skip
    hooks, log = runner(settings)
    started = time.monotonic()
    with pytest.raises(HealthcheckError) as caught:
        run_healthcheck(hooks, settings, str(tmp_path), {})
    assert time.monotonic() - started >= 0.5
    error = caught.value
    assert error.attempts == 2 and "exited with status 3 after 2 attempt(s)" in str(error)
    assert error.output == tuple(str(n) for n in range(81 - OUTPUT_LINES, 81))  # the last attempt's
    lines = log.getvalue().splitlines()
    assert (
        lines[0] == "[t] healthcheck: waiting 0.5 s before the first attempt (--healthcheck-delay)"
    )
    header = lines.index(
        f"[t] healthcheck failed 2 time(s); what its last attempt printed (stdout and stderr, at"
        f" most the last {OUTPUT_LINES} lines):"
    )
    assert lines[header + 1 :] == [f"[t] | {n}" for n in error.output]
