"""Switching releases atomically, and pruning old ones (never the live one)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from deployer.remote.layout import RELEASE_ID, manifest_path, snapshot_path
from deployer.remote.lock import relock_script
from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus


def _checked(release_ids: Sequence[str]) -> Sequence[str]:
    """Release ids, validated: no path or shell text can ride along into a script."""
    for rid in release_ids:
        if not RELEASE_ID.match(rid):
            raise ValueError(f"not a release id: {rid!r}")
    return release_ids


def switch_script(path: str, release_id: str | None) -> str:
    """Point current at releases/<id> atomically (or remove it when release_id is None)."""
    if release_id is None:
        return f"rm -f -- {q(path)}/current\n"
    _checked([release_id])
    link = f"releases/{release_id}"
    tmp = f".deployer/current.{release_id}"
    return f"""set -e
cd -- {q(path)}
[ -d {q(link)} ] || {{ echo {q(f"release {release_id} does not exist")} >&2; exit {int(RemoteStatus.MISSING)}; }}
rm -f -- {q(tmp)}
ln -s -- {q(link)} {q(tmp)}
mv -fT -- {q(tmp)} current
"""


def switch_then_script(switch: str, then: str) -> str:
    """Switch, and only if that worked run `then`; a failure there exits RemoteStatus.FINISH_FAILED."""
    return f"(\n{switch}) || exit $?\n(\n{then}) || exit {int(RemoteStatus.FINISH_FAILED)}\n"


def landing_script(path: str, token: str, release: str) -> str:
    """Where a command that builds and switches `release` got to, when its reply was lost.

    Prints `current=` (the release current points at), `published=yes|no` (whether the
    release directory exists) and `lock=ours`, else `lock=` and the first line of the holder's
    info (empty when nobody holds the lock).
    """
    _checked([release])
    return f"""P={q(path)}
c=$(readlink -- "$P/current" 2>/dev/null) || c=
c=${{c%/}}
printf 'current=%s\\n' "${{c##*/}}"
if [ -d "$P/releases/"{q(release)} ]; then echo published=yes; else echo published=no; fi
(
{relock_script(path, token)}) && echo lock=ours || :
"""


def remove_releases_script(path: str, release_ids: Sequence[str]) -> str:
    """Delete whole release directories, never the one current points at.

    The releases are renamed into DIR/.deployer/trash at once (they vanish atomically) and deleted
    by a detached process, so that a deploy does not wait for thousands of unlinks. A release
    current points at is left alone, and the script then exits RemoteStatus.LIVE_RELEASE.
    """
    if not _checked(release_ids):
        return "true\n"
    lines = [
        f"P={q(path)}",
        'mkdir -p -- "$P/.deployer/trash"',
        # whatever form the link has (relative, absolute, a trailing slash), its last name counts
        'c=$(readlink -- "$P/current" 2>/dev/null) || c=',
        "c=${c%/}; c=${c##*/}",
        "s=0",
    ]
    for rid in release_ids:
        lines += [
            f'if [ "$c" = {q(rid)} ]; then',
            f"  echo {q(f'release {rid} is live: not removing it')} >&2; s={int(RemoteStatus.LIVE_RELEASE)}",
            "else",
            f'  [ ! -e "$P/releases/"{q(rid)} ] || mv -- "$P/releases/"{q(rid)} "$P/.deployer/trash/"{q(rid)}.$$',
            f"  rm -f -- {q(manifest_path(path, rid))} {q(snapshot_path(path, rid))}",
            "fi",
        ]
    # fds closed: the SSH session ends without waiting for the deletion
    lines.append('(rm -rf -- "$P/.deployer/trash/"* </dev/null >/dev/null 2>&1 &)')
    lines.append('exit "$s"')
    # a subshell: scripts composed after this one (history, unlock) still run
    return "(\n" + "\n".join(lines) + "\n)\n"


def plan_prune(
    releases: Sequence[str], current: str, keep: int, failed: Collection[str] = ()
) -> list[str]:
    """Releases to delete so that `keep` remain, never the live one.

    Failed releases (those that never were, or no longer are, a good live release) do not count
    toward `keep` and go whenever they are not live.
    """
    good = sorted(r for r in releases if r not in failed or r == current)
    excess = good[: max(0, len(good) - keep)]
    return sorted({*excess, *(r for r in releases if r in failed)} - {current})
