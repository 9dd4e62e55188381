"""Non-finite numbers (NaN, infinity) are refused where they come in: flags, deployer.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.errors import ExitCode
from tests.integration.helpers import make_app

pytestmark = pytest.mark.integration

ROUTE = ["--to", "deploy@127.0.0.1:9", "--path", "/srv/app"]  # never reached: refused before


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--hook-timeout", "nan"), ("--hook-timeout", "inf"), ("--healthcheck-interval", "NaN"),
     ("--connect-timeout", "inf"), ("--webhook-timeout", "nan")],
)  # fmt: skip
def test_a_non_finite_flag_is_a_usage_error(
    deployer, tmp_path: Path, flag: str, value: str
) -> None:
    run = deployer(["push", str(make_app(tmp_path, "n")), *ROUTE, flag, value])
    assert run.status == ExitCode.USAGE, run.output
    assert f"Invalid value for '{flag}': {value!r} is not a finite number" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_non_finite_environment_value_is_a_usage_error(deployer, tmp_path: Path) -> None:
    run = deployer(["push", str(make_app(tmp_path, "n")), *ROUTE],
                   env={"DEPLOYER_HOOK_TIMEOUT": "nan"})  # fmt: skip
    assert run.status == ExitCode.USAGE, run.output
    assert "'nan' is not a finite number" in run.stderr


@pytest.mark.parametrize("text", ["hook_timeout = nan", "healthcheck-interval = inf",
                                  "hook_timeout = -inf"])  # fmt: skip
def test_a_non_finite_number_in_deployer_toml_names_the_file(
    deployer, tmp_path: Path, text: str
) -> None:
    (tmp_path / "deployer.toml").write_text(text + "\n")
    run = deployer(["push", str(make_app(tmp_path, "n")), *ROUTE], cwd=tmp_path)
    assert run.status == ExitCode.USAGE, run.output
    key, _, value = text.partition(" = ")
    line = [x for x in run.stderr.splitlines() if x.startswith("deployer: error: ")]
    assert line == [
        f"deployer: error: {tmp_path / 'deployer.toml'}: {key.replace('-', '_')} = {value}"
        " is not a finite number — give a number like 300"
    ], run.stderr
