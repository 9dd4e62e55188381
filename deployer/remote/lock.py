"""The deploy lock: an atomic mkdir of DIR/.deployer/lock holding who took it and a token.

The first line of lock/info says who holds the lock; once a deploy switched ``current`` it also
says to which release and from which, until the deploy is confirmed (``switched_info``). A deploy
that loses its target after the switch leaves exactly that behind for the next push, ``deployer
unlock`` and ``deployer rollback --lock-token`` to read (``parse_lock_info``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deployer.remote.layout import RELEASE_ID
from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus

_TOKEN = re.compile(r"\btoken ([0-9a-f]+)\b")
_SWITCHED = re.compile(
    r"; switched current to releases/(?P<release>\S+) at (?P<when>\S+)"
    r" \(previous: (?P<previous>\S+)\), not confirmed yet$"
)


@dataclass(frozen=True)
class LockInfo:
    """What the first line of lock/info says."""

    text: str
    token: str = ""
    switched_to: str = ""  # the release current was switched to, not confirmed ('' if none)
    previous: str = ""  # the release that was live before that switch ('' for none)
    switched_at: str = ""


def parse_lock_info(text: str) -> LockInfo:
    """Read the holder's token and, if it switched without confirming, the releases involved."""
    token = _TOKEN.search(text)
    switched = _SWITCHED.search(text)
    if switched is None or not RELEASE_ID.match(switched["release"]):
        return LockInfo(text, token[1] if token else "")
    previous = switched["previous"]
    return LockInfo(
        text,
        token[1] if token else "",
        switched["release"],
        previous if RELEASE_ID.match(previous) else "",
        switched["when"],
    )


def switched_info(info: str, release: str, previous: str, when: str) -> str:
    """The lock info of a deploy that switched current to `release` and has not confirmed it."""
    return (
        f"{info}; switched current to releases/{release} at {when}"
        f" (previous: {previous or 'none'}), not confirmed yet"
    )


def prepare_script(path: str, lock_info: str, adopt: str | None = None) -> str:
    """Create the layout, clean partial uploads of dead deploys and take the lock (atomic mkdir).

    With `adopt` (the token of a lock a dead deploy left), a lock holding that token is taken over.
    """
    held = '! mkdir -- "$P/.deployer/lock" 2>/dev/null'
    if adopt is not None:
        held += f' && ! grep -qF -- {q("token " + adopt)} "$P/.deployer/lock/info" 2>/dev/null'
    return f"""set -e
P={q(path)}
mkdir -p -- "$P/releases" "$P/shared" "$P/.deployer/manifests"
if {held}; then
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


def while_locked_script(path: str, token: str, script: str) -> str:
    """Run script only while the lock is ours (else exit RemoteStatus.LOCK_HELD, `lock=` on stdout)."""
    return f"(\n{relock_script(path, token)}) || exit $?\n{script}"


def rewrite_info_script(path: str, token: str, info: str) -> str:
    """Replace lock/info (atomically, by rename) while the lock is ours; a failure here is not fatal."""
    return f"""L={q(path)}/.deployer/lock
if grep -qF -- {q(token)} "$L/info" 2>/dev/null; then
  printf '%s\\n' {q(info)} > "$L/info.new" && mv -f -- "$L/info.new" "$L/info" || true
fi
"""


def unlock_script(path: str, token: str | None) -> str:
    """Release the lock; with a token, only if it is still ours."""
    guard = "" if token is None else f'grep -qF -- {q(token)} "$L/info" 2>/dev/null || exit 0\n'
    return f"""L={q(path)}/.deployer/lock
[ -d "$L" ] || exit 0
{guard}rm -rf -- "$L"
"""
