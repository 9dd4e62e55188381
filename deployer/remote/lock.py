"""The deploy lock: an atomic mkdir of DIR/.deployer/lock holding who took it and a token."""

from __future__ import annotations

from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus


def prepare_script(path: str, lock_info: str) -> str:
    """Create the layout, clean partial uploads of dead deploys and take the lock (atomic mkdir)."""
    return f"""set -e
P={q(path)}
mkdir -p -- "$P/releases" "$P/shared" "$P/.deployer/manifests"
if ! mkdir -- "$P/.deployer/lock" 2>/dev/null; then
  printf 'lock=%s\\n' "$(head -n 1 -- "$P/.deployer/lock/info" 2>/dev/null)"
  exit {int(RemoteStatus.LOCK_HELD)}
fi
printf '%s\\n' {q(lock_info)} > "$P/.deployer/lock/info"
rm -rf -- "$P"/releases/.*.partial
"""


def relock_script(path: str, token: str) -> str:
    """After a reconnect: succeed only if the lock is still ours."""
    return f"""L={q(path)}/.deployer/lock
grep -qF -- {q(token)} "$L/info" 2>/dev/null && exit 0
printf 'lock=%s\\n' "$(head -n 1 -- "$L/info" 2>/dev/null)"
exit {int(RemoteStatus.LOCK_HELD)}
"""


def unlock_script(path: str, token: str | None) -> str:
    """Release the lock; with a token, only if it is still ours."""
    guard = "" if token is None else f'grep -qF -- {q(token)} "$L/info" 2>/dev/null || exit 0\n'
    return f"""L={q(path)}/.deployer/lock
[ -d "$L" ] || exit 0
{guard}rm -rf -- "$L"
"""
