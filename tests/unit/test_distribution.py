"""The distribution is deployer-ci, its version has one source, and everything that installs pins it.

PyPI's ``deployer`` is an unrelated project (versions 0.1.2-0.3.10): a pin by that name fails today
and installs a stranger's code the day the numbers meet, so no file may install it. Every version
a user copies (the tool's pins, the component and template refs, image tags) is the one in
``deployer/__init__.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from deployer import __version__
from deployer.cli.main import cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PINNED = ["README.md", "action.yml", "Dockerfile", "Dockerfile.tunnel", "gitlab-templates", "docs"]
OTHER_TOOLS = ("gitlab-ci-local", "actions/cache")  # lines where another tool's version may stand
VERSION = re.compile(r"(?<![\w.])v?(\d+\.\d+\.\d+)(?![\w.]*\d)")
OLD_NAME = re.compile(
    r"(?<![\w./])(?<!\w-)deployer(?:\s*(?:==|~=|>=|<=|!=|===|@\s)|\[\w[\w,]*\])"  # a requirement
    r"|\b(?:pip3?|pipx|uv pip|uv tool|uvx)\s+(?:install\s+)?(?:-\S+\s+)*['\"]?deployer(?![\w-])"  # a command
)


def _files(*names: str) -> list[Path]:
    found: list[Path] = []
    for name in names:
        path = ROOT / name
        found.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return found


def _repository_files() -> list[Path]:
    """Every file git tracks or would add (what a clean clone or the next commit holds)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, check=True, timeout=30).stdout  # fmt: skip
    return [ROOT / name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]


def test_the_distribution_is_deployer_ci_and_reads_its_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "deployer-ci"
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "deployer.__version__"}
    assert project["project"]["scripts"] == {"deployer": "deployer.cli:main"}


def test_deployer_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"deployer, version {__version__}\n"


@pytest.mark.parametrize("example", [
    "pip install deployer", "pip install -q deployer", 'python -m pip install "deployer==1.0"',
    "deployer==0.1.0", "deployer>=0.1", "deployer @ file:///src", "uvx deployer push", "pipx install deployer",
    "uv tool install deployer", "deployer[gitlab]", '"${DEPLOYER_INSTALL:-deployer==${DEPLOYER_VERSION:-1.0}}"',
])  # fmt: skip
def test_the_old_name_pattern_finds_installs(example: str) -> None:
    assert OLD_NAME.search(example)


@pytest.mark.parametrize("example", [
    "pip install deployer-ci", "pipx install deployer-ci", "uvx --from deployer-ci deployer push",
    "deployer-ci==0.1.0", "deployer push dist/", "python -m deployer", "import deployer",
    "my-deployer==1.0", "uses: OWNER/deployer@v1.0",
])  # fmt: skip
def test_the_old_name_pattern_spares_the_new_one(example: str) -> None:
    assert not OLD_NAME.search(example)


def test_no_file_installs_deployer_by_its_old_name() -> None:
    found = []
    for path in _repository_files():
        if path == Path(__file__):  # the examples above
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OLD_NAME.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_pin_users_copy_is_this_version() -> None:
    found, wrong = 0, []
    for path in _files(*PINNED):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in VERSION.finditer(line):
                found += 1
                if match.group(1) != __version__ and not any(tool in line for tool in OTHER_TOOLS):
                    wrong.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found >= 10  # the README, templates, component, action and docs all pin it
    assert not wrong, f"pins other than {__version__}:\n" + "\n".join(wrong)


def test_installs_name_deployer_ci_pinned_to_this_version() -> None:
    template = (ROOT / "gitlab-templates" / "deploy.gitlab-ci.yml").read_text()
    component = (ROOT / "gitlab-templates" / "templates" / "deploy.yml").read_text()
    action = (ROOT / "action.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    assert f'DEPLOYER_VERSION: "{__version__}"' in template
    assert f'version:\n      default: "{__version__}"' in component
    for text in (template, component):
        assert 'deployer_requirement="deployer-ci==${DEPLOYER_VERSION' in text
    assert '"deployer-ci @ $source"' in action  # the action's own checkout, by name
    assert f"pip install deployer-ci=={__version__}" in readme
    assert "pipx install deployer-ci" in readme and "uvx --from deployer-ci deployer " in readme
