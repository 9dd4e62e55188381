"""Shell completion (click's own): the README's lines produce a script, and bash completes with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent  # where the deployer console script of this install lives
SHELLS = {  # the line the README gives to enable completion, and what the script it loads holds
    "bash": ('eval "$(_DEPLOYER_COMPLETE=bash_source deployer)"', "complete -o nosort -F _deployer_completion deployer"),
    "zsh": ('eval "$(_DEPLOYER_COMPLETE=zsh_source deployer)"', "compdef _deployer_completion deployer"),
    "fish": ("_DEPLOYER_COMPLETE=fish_source deployer > ~/.config/fish/completions/deployer.fish",
             'complete --no-files --command deployer --arguments "(_deployer_completion)"'),
}  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _deployer(**extra: str) -> str:
    done = subprocess.run([str(BIN / "deployer")], env=_env(**extra), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_the_readme_line_loads_the_script_click_generates(shell: str) -> None:
    line, holds = SHELLS[shell]
    assert line in (ROOT / "README.md").read_text()
    variable = re.search(r"_DEPLOYER_COMPLETE=(\w+)", line)
    assert variable is not None
    assert holds in _deployer(_DEPLOYER_COMPLETE=variable.group(1))


def test_bash_completes_commands_and_options_with_that_script() -> None:
    line = SHELLS["bash"][0]
    script = f"""{line}
complete_words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=(); _deployer_completion deployer; printf '%s\\n' "${{COMPREPLY[@]}}"; }}
complete_words deployer rol
echo --
complete_words deployer push --health
"""  # fmt: skip
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    commands, options = done.stdout.split("--\n")
    assert commands.split() == ["rollback"]
    assert options.split() == [
        "--healthcheck", "--healthcheck-retries", "--healthcheck-interval", "--healthcheck-delay"
    ]  # fmt: skip


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_get_candidates_through_their_protocol(shell: str) -> None:
    # No zsh or fish here to load the scripts: ask deployer as they would.
    words = {"zsh": {"COMP_WORDS": "deployer rol", "COMP_CWORD": "1"},
             "fish": {"COMP_WORDS": "deployer rol", "COMP_CWORD": "rol"}}[shell]  # fmt: skip
    reply = _deployer(_DEPLOYER_COMPLETE=f"{shell}_complete", **words)
    assert "rollback" in reply
