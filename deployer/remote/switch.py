"""Switching releases atomically, and pruning old ones (never the live one)."""

from __future__ import annotations

from collections.abc import Sequence

from deployer.remote.layout import RELEASE_ID, manifest_path, snapshot_path
from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus


def switch_script(path: str, release_id: str | None) -> str:
    """Point current at releases/<id> atomically (or remove it when release_id is None)."""
    if release_id is None:
        return f"rm -f -- {q(path)}/current\n"
    link = f"releases/{release_id}"
    tmp = f".deployer/current.{release_id}"
    return f"""set -e
cd -- {q(path)}
[ -d {q(link)} ] || {{ echo 'release {release_id} does not exist' >&2; exit {int(RemoteStatus.MISSING)}; }}
rm -f -- {q(tmp)}
ln -s -- {q(link)} {q(tmp)}
mv -fT -- {q(tmp)} current
"""


def switch_then_script(switch: str, then: str) -> str:
    """Switch, and only if that worked run `then`; a failure there exits RemoteStatus.FINISH_FAILED."""
    return f"(\n{switch}) || exit $?\n(\n{then}) || exit {int(RemoteStatus.FINISH_FAILED)}\n"


def remove_releases_script(path: str, release_ids: Sequence[str]) -> str:
    """Delete whole release directories (ids are validated: no path can sneak in).

    The releases are renamed into DIR/.deployer/trash at once (they vanish atomically) and deleted
    by a detached process, so that a deploy does not wait for thousands of unlinks.
    """
    for rid in release_ids:
        if not RELEASE_ID.match(rid):
            raise ValueError(f"not a release id: {rid!r}")
    if not release_ids:
        return "true\n"
    lines = [f"P={q(path)}", 'mkdir -p -- "$P/.deployer/trash"']
    for rid in release_ids:
        lines.append(
            f'[ ! -e "$P/releases/"{q(rid)} ] || mv -- "$P/releases/"{q(rid)} "$P/.deployer/trash/"{q(rid)}.$$'
        )
        lines.append(f"rm -f -- {q(manifest_path(path, rid))} {q(snapshot_path(path, rid))}")
    # fds closed: the SSH session ends without waiting for the deletion
    lines.append('(rm -rf -- "$P/.deployer/trash/"* </dev/null >/dev/null 2>&1 &)')
    return "\n".join(lines) + "\n"


def plan_prune(releases: Sequence[str], current: str, keep: int) -> list[str]:
    """Releases to delete so that `keep` remain, never the live one."""
    ordered = sorted(releases)
    excess = max(0, len(ordered) - keep)
    return [r for r in ordered[:excess] if r != current]
