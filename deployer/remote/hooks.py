"""The remote side of a hook: the shell text that runs it in the release, with its environment and time limit."""

from __future__ import annotations

import math
from collections.abc import Mapping

from deployer.remote.executor import KILL_AFTER
from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus


def hook_script(
    command: str, cwd: str, env: Mapping[str, str], timeout: float, has_timeout: bool
) -> str:
    """Shell text that runs command in cwd with env, stopped by the target's timeout if present."""
    exports = "".join(f"{name}={q(value)}; export {name}\n" for name, value in env.items())
    enter = f"cd -- {q(cwd)} || exit {int(RemoteStatus.NO_RELEASE_DIR)}\n{exports}"
    if not has_timeout:
        return f"{enter}sh -c {q(command)}\n"
    limit = max(1, math.ceil(timeout))  # whole seconds, at least one: `timeout 0` means none
    timed_out = int(RemoteStatus.TIMED_OUT)
    # GNU timeout exits 124 when it stops the hook; BusyBox's timeout is the hook's own process,
    # killed with it (143 for TERM, 137 for KILL): a kill at the time limit is a timeout either way
    return (
        f"{enter}s=$(date +%s)\n"
        f"timeout -k {int(KILL_AFTER)} {limit} sh -c {q(command)}\n"
        "r=$?\n"
        f"case $r in {timed_out}|137|143) [ $(($(date +%s) - s)) -lt {limit} ] || r={timed_out} ;; esac\n"
        'exit "$r"\n'
    )
