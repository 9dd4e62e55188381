"""The remote side of a hook: the shell text that runs it in the release, with its environment and time limit.

Variables given with ``--env`` never appear in a script's text (which the target's ``ps`` shows
as sshd's and the shell's command line): they follow the script on its stdin as shell
assignments, which a subshell evaluates just before it execs the hook. Only the hook and what it
starts have them in their environment; no file on the target ever holds them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import BinaryIO

from deployer.remote.executor import KILL_AFTER
from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus

# reads the assignments send_variables() wrote on stdin; `cat` reads them through a pipe, so the
# values are in no process's arguments
_FROM_STDIN = 'eval "$(cat)"'


def exports(variables: Mapping[str, str]) -> str:
    """Shell text exporting each variable (its value quoted)."""
    return "".join(f"{name}={q(value)}; export {name}\n" for name, value in variables.items())


def send_variables(variables: Mapping[str, str]) -> Callable[[BinaryIO], object] | None:
    """The upload (Executor.run's stdin) that hands variables to a script run with
    stdin_variables; None when there are none (the script then reads no stdin)."""
    if not variables:
        return None
    text = exports(variables).encode()
    return lambda stdin: stdin.write(text)


def _run_hook(command: str, limit: int | None, stdin_variables: bool) -> str:
    """The command line that runs command with `sh -c` (under `timeout` with a limit).

    With stdin_variables it runs in a subshell that first takes the variables on stdin: timeout
    and sh are looked up before (a PATH among the variables is the hook's, not the script's)
    and kept in $1 and $2, which no variable can change; and in the subshell, a variable named
    IFS or PATH changes nothing in the script around it.
    """
    limits = f" -k {int(KILL_AFTER)} {limit}" if limit is not None else ""
    if not stdin_variables:
        return (f"timeout{limits} " if limits else "") + f"sh -c {q(command)}"
    # $1: timeout (or nothing), $2: sh -- both found before the variables are set
    found = '"$(command -v timeout)"' if limits else '""'
    start = f'"$1"{limits} "$2"' if limits else '"$2"'
    return f'( set -- {found} "$(command -v sh)"; {_FROM_STDIN} && exec {start} -c {q(command)} )'


def hook_script(
    command: str,
    cwd: str,
    env: Mapping[str, str],
    timeout: float,
    has_timeout: bool,
    stdin_variables: bool = False,
) -> str:
    """Shell text that runs command in cwd with env, stopped by the target's timeout if present.

    With stdin_variables, the hook also gets the variables send_variables() wrote on stdin.
    """
    enter = f"cd -- {q(cwd)} || exit {int(RemoteStatus.NO_RELEASE_DIR)}\n{exports(env)}"
    limit = max(1, math.ceil(timeout))  # whole seconds, at least one: `timeout 0` means none
    run = _run_hook(command, limit if has_timeout else None, stdin_variables)
    if not has_timeout:
        return f"{enter}{run}\n"
    timed_out = int(RemoteStatus.TIMED_OUT)
    # GNU timeout exits 124 when it stops the hook; BusyBox's timeout is the hook's own process,
    # killed with it (143 for TERM, 137 for KILL): a kill at the time limit is a timeout either way
    return (
        f"{enter}s=$(date +%s)\n"
        f"{run}\n"
        "r=$?\n"
        f"case $r in {timed_out}|137|143) [ $(($(date +%s) - s)) -lt {limit} ] || r={timed_out} ;; esac\n"
        'exit "$r"\n'
    )


def command_script(command: str, stdin_variables: bool) -> str:
    """`deployer exec`'s script: command for the shell, with the variables on stdin if any."""
    return _run_hook(command, None, True) if stdin_variables else command
