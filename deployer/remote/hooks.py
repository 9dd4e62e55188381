"""The remote side of a hook: the shell text that runs it in the release, with its environment and time limit."""

from __future__ import annotations

from collections.abc import Mapping

from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus


def hook_script(
    command: str, cwd: str, env: Mapping[str, str], timeout: float, has_timeout: bool
) -> str:
    """Shell text that runs command in cwd with env, stopped by coreutils timeout if present."""
    exports = "".join(f"{name}={q(value)}; export {name}\n" for name, value in env.items())
    limit = f"timeout -k 5 {int(timeout)} " if has_timeout else ""
    return f"cd -- {q(cwd)} || exit {int(RemoteStatus.NO_RELEASE_DIR)}\n{exports}{limit}sh -c {q(command)}\n"
