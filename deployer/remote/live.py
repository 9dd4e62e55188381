"""What is live on a target, read in one read-only round trip (`deployer status`).

The script reports the live release, the releases present, the lock, a digest of the live
release's manifest (equal digests: the same files, whatever the release ids) and the history
lines about the live release. It changes nothing and needs no scratch space.
"""

from __future__ import annotations

from dataclasses import dataclass

from deployer.remote.history import parse_history
from deployer.remote.layout import RELEASE_ID
from deployer.remote.shell import q

HISTORY_LINES = 20  # history lines about the live release read back (the newest ones)


def live_script(path: str) -> str:
    """Print key=value lines about path's live release, lock and history; change nothing."""
    return f"""P={q(path)}
out() {{ printf '%s=%s\\n' "$1" "$2"; }}
[ -d "$P" ] || {{ out exists no; exit 0; }}
out exists yes
out abspath "$(cd -- "$P" && pwd -P)"
if [ -L "$P/current" ]; then out current "$(readlink -- "$P/current")"
elif [ -e "$P/current" ]; then out current_kind other; fi
if [ -d "$P/releases" ]; then
  for r in "$P"/releases/*; do [ -d "$r" ] && out release "${{r##*/}}"; done
fi
if [ -d "$P/.deployer/lock" ]; then
  out locked yes
  out lock "$(head -n 1 -- "$P/.deployer/lock/info" 2>/dev/null)"
fi
c=$(readlink -- "$P/current" 2>/dev/null) || exit 0
c=${{c##*/}}
m="$P/.deployer/manifests/$c.tsv"
[ -f "$m" ] && out content "$(sha256sum < "$m" | cut -d ' ' -f 1)"
grep -F -- "\\"release\\":\\"$c\\"" "$P/.deployer/history" 2>/dev/null | tail -n {HISTORY_LINES} | sed 's/^/h=/'
exit 0
"""


@dataclass(frozen=True)
class LiveState:
    """What live_script saw under a deploy directory."""

    path: str
    exists: bool = False
    current: str = ""  # the live release id ('' when none)
    current_is_symlink: bool = True
    releases: tuple[str, ...] = ()
    locked: bool = False
    lock: str = ""  # lock/info's first line
    content: str = ""  # sha256 of the live release's manifest ('' when it has none)
    history: tuple[dict[str, str], ...] = ()  # entries about the live release, oldest first


def parse_live(path: str, text: str) -> LiveState:
    """Read live_script's lines."""
    values: dict[str, str] = {}
    releases: list[str] = []
    history: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "release":
            if RELEASE_ID.match(value):
                releases.append(value)
        elif key == "h":
            history.append(value)
        else:
            values[key] = value
    current = values.get("current", "")
    current_id = current.rsplit("/", 1)[-1]
    return LiveState(
        path=values.get("abspath", path),
        exists=values.get("exists") == "yes",
        current=current_id,
        current_is_symlink=values.get("current_kind", "symlink") == "symlink",
        releases=tuple(sorted(releases)),
        locked=values.get("locked") == "yes",
        lock=values.get("lock", ""),
        content=values.get("content", ""),
        history=tuple(
            entry
            for entry in parse_history("\n".join(history))
            if entry.get("release") == current_id
        ),
    )
