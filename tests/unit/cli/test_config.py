"""Configuration files and CI metadata (flags > env > file > defaults is exercised via the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.ci.environment import is_ci, provenance_fields
from deployer.config import build_default_map, find_config_file, nest_default_map, read_config_file
from deployer.errors import ConfigError


def test_deployer_toml_wins_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.deployer]\npath = "/from/pyproject"\n')
    assert find_config_file(tmp_path, None) == tmp_path / "pyproject.toml"
    assert read_config_file(tmp_path / "pyproject.toml") == {"path": "/from/pyproject"}
    (tmp_path / "deployer.toml").write_text('path = "/srv/app"\nhook-timeout = 30\n')
    assert find_config_file(tmp_path, None) == tmp_path / "deployer.toml"
    assert read_config_file(tmp_path / "deployer.toml") == {"path": "/srv/app", "hook_timeout": 30}


def test_pyproject_without_section_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config_file(tmp_path, None) is None


def test_explicit_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        find_config_file(tmp_path, tmp_path / "nope.toml")
    bad = tmp_path / "deployer.toml"
    bad.write_text("path = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_config_file(bad)


def test_default_map_per_command_and_unknown_keys(tmp_path: Path) -> None:
    commands = {
        "push": {"to": True, "path": False, "keep": False},
        "releases": {"to": True, "path": False},
    }
    result = build_default_map({"to": "a@b", "keep": 3}, commands, tmp_path / "deployer.toml")
    assert result == {"push": {"to": ["a@b"], "keep": 3}, "releases": {"to": ["a@b"]}}
    with pytest.raises(ConfigError, match="unknown setting 'kep'"):
        build_default_map({"kep": 3}, commands, tmp_path / "deployer.toml")


def test_a_groups_commands_get_their_values_nested() -> None:
    flat = {
        "push": {"path": "/srv/app"},
        "serve run": {"before": ["x"]},
        "serve install-service": {"before": ["x"]},
    }
    assert nest_default_map(flat) == {"push": {"path": "/srv/app"},
                                      "serve": {"run": {"before": ["x"]}, "install-service": {"before": ["x"]}}}  # fmt: skip


def test_provenance_from_gitlab_and_github() -> None:
    gitlab = provenance_fields({"GITLAB_CI": "true", "GITLAB_USER_LOGIN": "alice", "CI_COMMIT_SHA": "abc",
                                "CI_COMMIT_REF_NAME": "main", "CI_PIPELINE_URL": "https://g/p/1"})  # fmt: skip
    assert gitlab == {"by": "alice", "commit": "abc", "ref": "main", "pipeline": "https://g/p/1"}
    github = provenance_fields({"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "bob", "GITHUB_SHA": "def",
                                "GITHUB_REF_NAME": "main", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "7"})  # fmt: skip
    assert github["pipeline"] == "https://github.com/o/r/actions/runs/7" and github["by"] == "bob"
    assert is_ci({"CI": "true"}) and not is_ci({})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("-inf")]])
def test_non_finite_numbers_in_the_file_are_refused_by_name(tmp_path: Path, value: object) -> None:
    commands = {"push": {"hook_timeout": False, "after": True}}
    with pytest.raises(
        ConfigError, match=r"deployer\.toml: hook_timeout = -?(nan|inf) is not a finite"
    ):
        build_default_map({"hook_timeout": value}, commands, tmp_path / "deployer.toml")
