"""The release layout on a target and the POSIX shell scripts that manage it (pure builders).

    DIR/releases/<id>/         immutable release trees (a partial upload lives in releases/.<id>.partial)
    DIR/current -> releases/<id>   the live release; switched by renaming a new symlink over it
    DIR/shared/                what survives releases, linked into each release
    DIR/.deployer/lock/        the deploy lock (mkdir is atomic); lock/info says who holds it
    DIR/.deployer/history      one JSON line per deploy, rollback or failure

The scripts need only a POSIX shell, tar, gzip and coreutils (``mv -T`` for the atomic switch).
They print ``key=value`` lines that ``parse_state`` reads back.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from deployer.errors import ConfigError, LockError, RemoteError

RELEASE_ID = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
LOCK_HELD_STATUS = 75  # EX_TEMPFAIL: the prepare script's "someone else holds the lock"


def q(value: str) -> str:
    """Quote one word for the remote POSIX shell."""
    return shlex.quote(value)


def new_release_id(now: datetime, existing: Sequence[str]) -> str:
    """A sortable UTC timestamp id, suffixed when a release with that id already exists."""
    base = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while candidate in existing:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def validate_shared(items: Sequence[str]) -> tuple[str, ...]:
    """Check shared entries are relative paths inside the release ('dir/' for directories)."""
    for item in items:
        bare = item.rstrip("/")
        parts = bare.split("/")
        if not bare or item.startswith("/") or ".." in parts or "." in parts or "" in parts:
            raise ConfigError(
                f"shared entry {item!r} must be a relative path inside the release, like 'storage/' or '.env'"
            )
    return tuple(items)


@dataclass(frozen=True)
class TargetState:
    """What the preflight script saw on a target."""

    path: str
    exists: bool = False
    is_dir: bool = True
    writable: bool = False
    writable_dir: str = ""
    free_bytes: int = 0
    has_tar: bool = False
    has_gzip: bool = False
    has_timeout: bool = False
    current: str = ""  # release id current points to ('' when none)
    current_is_symlink: bool = True
    releases: tuple[str, ...] = ()
    lock: str = ""  # lock/info content when the lock is held
    login: str = ""
    manifest: tuple[str, ...] = ()  # the live release's manifest lines
    locked: bool = False  # the probe took the lock for us

    @property
    def previous(self) -> str:
        """The newest release older than current (the rollback target), or ''."""
        older = [r for r in self.releases if self.current and r < self.current]
        return older[-1] if older else ""


def parse_state(path: str, text: str) -> TargetState:
    """Read the key=value lines of the preflight script."""
    values: dict[str, str] = {}
    releases: list[str] = []
    manifest: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "m":
            manifest.append(value)
        elif key == "release":
            if RELEASE_ID.match(value):
                releases.append(value)
        else:
            values[key] = value
    current = values.get("current", "")
    current_id = current.rsplit("/", 1)[-1] if current.startswith("releases/") else current
    return TargetState(
        path=values.get("abspath", path),
        exists=values.get("exists") == "yes",
        is_dir=values.get("is_dir", "yes") == "yes",
        writable=values.get("writable") == "yes",
        writable_dir=values.get("writable_dir", ""),
        free_bytes=int(values.get("free_kb", "0") or 0) * 1024,
        has_tar=values.get("tar") == "yes",
        has_gzip=values.get("gzip") == "yes",
        has_timeout=values.get("timeout") == "yes",
        current=current_id,
        current_is_symlink=values.get("current_kind", "symlink") == "symlink",
        releases=tuple(sorted(releases)),
        lock=values.get("lock", ""),
        login=values.get("login", ""),
        manifest=tuple(manifest),
        locked=values.get("locked") == "yes",
    )


def preflight_script(path: str, lock_info: str | None = None) -> str:
    """Probe the target: path, permissions, free space, tools, releases, lock (read-only), and with
    lock_info also create the layout and take the lock when the path is usable (saves a round trip)."""
    return f"""P={q(path)}
out() {{ printf '%s=%s\\n' "$1" "$2"; }}
d="$P"
while [ ! -e "$d" ] && [ "$d" != / ] && [ "$d" != . ]; do d=$(dirname -- "$d"); done
if [ -e "$P" ]; then out exists yes; else out exists no; fi
if [ -e "$P" ] && [ ! -d "$P" ]; then out is_dir no; fi
w=yes
for c in "$d" "$P/releases" "$P/.deployer"; do
  if [ -e "$c" ] && [ ! -w "$c" ]; then w=no; out writable_dir "$c"; break; fi
done
out writable "$w"
out abspath "$(cd -- "$d" 2>/dev/null && pwd -P)${{P#"$d"}}"
out free_kb "$(df -Pk -- "$d" 2>/dev/null | awk 'NR==2 {{print $4}}')"
for t in tar gzip timeout; do
  if command -v "$t" >/dev/null 2>&1; then out "$t" yes; else out "$t" no; fi
done
if [ -L "$P/current" ]; then out current "$(readlink -- "$P/current")"
elif [ -e "$P/current" ]; then out current_kind other; fi
if [ -d "$P/releases" ]; then
  for r in "$P"/releases/*; do [ -d "$r" ] && out release "${{r##*/}}"; done
fi
if [ -d "$P/.deployer/lock" ]; then out lock "$(head -n 1 -- "$P/.deployer/lock/info" 2>/dev/null)"; fi
c=$(readlink -- "$P/current" 2>/dev/null) && [ -f "$P/.deployer/manifests/${{c##*/}}.tsv" ] &&
  sed 's/^/m=/' -- "$P/.deployer/manifests/${{c##*/}}.tsv"
out login "$(id -un)"
{"exit 0" if lock_info is None else _lock_attempt(lock_info)}
"""


def _lock_attempt(lock_info: str) -> str:
    """Shell text run after the probe: lock only a writable directory whose current is a symlink."""
    return f"""if [ "$w" = yes ] && {{ [ ! -e "$P" ] || [ -d "$P" ]; }} &&
  {{ [ ! -e "$P/current" ] || [ -L "$P/current" ]; }}; then
  mkdir -p -- "$P/releases" "$P/shared" "$P/.deployer/manifests" 2>/dev/null
  if mkdir -- "$P/.deployer/lock" 2>/dev/null; then
    printf '%s\\n' {q(lock_info)} > "$P/.deployer/lock/info"
    rm -rf -- "$P"/releases/.*.partial
    out locked yes
  else
    out lock "$(head -n 1 -- "$P/.deployer/lock/info" 2>/dev/null)"
  fi
fi
exit 0"""


def check_ready(state: TargetState, label: str, needed_bytes: int) -> None:
    """Raise the one-line error for the first thing that would make a deploy fail."""
    where = f"{state.path} on {label}"
    if not state.is_dir:
        raise RemoteError(f"{where} exists but is not a directory — choose another --path")
    if not state.writable:
        blocker = state.writable_dir or state.path
        raise RemoteError(
            f"{blocker} on {label} is not writable by {state.login or 'the login user'}"
            f" — chown it to that user or choose another --path"
        )
    if not state.has_tar or not state.has_gzip:
        missing = " and ".join(
            t for t, ok in (("tar", state.has_tar), ("gzip", state.has_gzip)) if not ok
        )
        raise RemoteError(
            f"{missing} not found on {label} — install it there (deployer needs a POSIX shell, tar and gzip)"
        )
    if not state.current_is_symlink:
        raise RemoteError(
            f"{state.path}/current on {label} is not a symlink — move it aside so deployer can manage releases"
        )
    # room for the new tree plus a margin for filesystem overhead
    if state.free_bytes and needed_bytes and state.free_bytes < needed_bytes * 1.1 + 1024 * 1024:
        raise RemoteError(
            f"not enough space on {label}: {_size(state.free_bytes)} free in {state.path},"
            f" the release needs {_size(needed_bytes)} — free some space or lower --keep"
        )
    if state.lock:
        raise lock_error(state.lock, state.path, label)


def lock_error(info: str, path: str, label: str) -> LockError:
    """The message for a held lock, saying who holds it and how to clear a stale one."""
    return LockError(
        f"another deploy holds the lock on {path} on {label} ({info or 'no details'})"
        f" — wait for it, or if that deploy died run `deployer unlock` with the same route and --path {path}"
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n //= 1024
    return f"{n} B"  # unreachable: the loop returns at GiB


@dataclass(frozen=True)
class Layout:
    """Absolute paths of one deploy on a target."""

    path: str
    release_id: str

    @property
    def release_dir(self) -> str:
        """DIR/releases/<id>."""
        return f"{self.path}/releases/{self.release_id}"

    @property
    def partial_dir(self) -> str:
        """Where the upload lands before it is complete."""
        return f"{self.path}/releases/.{self.release_id}.partial"


def prepare_script(path: str, lock_info: str) -> str:
    """Create the layout, clean partial uploads of dead deploys and take the lock (atomic mkdir)."""
    return f"""set -e
P={q(path)}
mkdir -p -- "$P/releases" "$P/shared" "$P/.deployer/manifests"
if ! mkdir -- "$P/.deployer/lock" 2>/dev/null; then
  printf 'lock=%s\\n' "$(head -n 1 -- "$P/.deployer/lock/info" 2>/dev/null)"
  exit {LOCK_HELD_STATUS}
fi
printf '%s\\n' {q(lock_info)} > "$P/.deployer/lock/info"
rm -rf -- "$P"/releases/.*.partial
"""


def relock_script(path: str, token: str) -> str:
    """After a reconnect: succeed only if the lock is still ours."""
    return f"""L={q(path)}/.deployer/lock
grep -qF -- {q(token)} "$L/info" 2>/dev/null && exit 0
printf 'lock=%s\\n' "$(head -n 1 -- "$L/info" 2>/dev/null)"
exit {LOCK_HELD_STATUS}
"""


def unlock_script(path: str, token: str | None) -> str:
    """Release the lock; with a token, only if it is still ours."""
    guard = "" if token is None else f'grep -qF -- {q(token)} "$L/info" 2>/dev/null || exit 0\n'
    return f"""L={q(path)}/.deployer/lock
[ -d "$L" ] || exit 0
{guard}rm -rf -- "$L"
"""


def stage_script(
    layout: Layout,
    shared: Sequence[str],
    *,
    sections: tuple[int, int],
    previous_id: str,
    hardlink: bool,
    compressed: bool,
) -> str:
    """Build the release in one command: manifest, reuse list and tar stream arrive on stdin.

    stdin holds two gzip sections of exactly `sections` bytes (the manifest, and sha256sum lines
    of the files to copy from the previous release), then the tar stream up to EOF. The tree is
    verified against the manifest before it is published: every file sent is hashed, and so is
    every copied file unless its source still has the inode, size and times recorded in the
    previous release's stat snapshot (`snapshot_path`). Files that fail are printed on stdout
    (one path a line) and the command exits VERIFY_FAILED_STATUS, leaving the partial dir so that
    a second call can send just those files. On success it prints ``trusted=N``: the copies that
    the snapshot vouched for.
    """
    manifest_bytes, reuse_bytes = sections
    how = "-l" if hardlink else "-p --reflink=auto"
    work = f"{layout.path}/.deployer/stage.{layout.release_id}"
    lines = [
        "set -e",
        "export TZ=UTC0",  # stat's times compare as text
        f"P={q(layout.path)}",
        f"T={q(layout.partial_dir)}",
        f"M={q(manifest_path(layout.path, layout.release_id))}",
        f"S={q(snapshot_path(layout.path, layout.release_id))}",
        f"W={q(work)}",
        'mkdir -p -- "$P/.deployer/manifests" "$T"',
        # dd with fullblock reads exactly the section; what follows stays on stdin for tar
        f'dd bs={manifest_bytes} count=1 iflag=fullblock 2>/dev/null | gzip -dc > "$M.tmp"',
        f'dd bs={reuse_bytes} count=1 iflag=fullblock 2>/dev/null | gzip -dc > "$W.reuse"',
        f'tar -x{"z" if compressed else ""}f - -C "$T"',
        ': > "$W.trusted"',
    ]
    if previous_id:
        before = q(f"{layout.path}/releases/{previous_id}")
        snapshot = q(snapshot_path(layout.path, previous_id))
        copy = f'cp {how} --parents -t "$T" --'
        nul = "tr '\\n' '\\000'"
        # copies run COPY_JOBS at a time (creating files is latency-bound on a busy disk); the first
        # file of each directory goes first, alone, so that parallel cp's never race to mkdir it
        lines += [
            ': >"$W.first"; : >"$W.rest"',
            f'cut -c67- "$W.reuse" | awk -v first="$W.first" -v rest="$W.rest" {q(_FIRST_OF_DIR_AWK)}',
        ]
        # the stat is read after the copy: a change during the copy shows, one after it is not in it
        lines.append(
            f'if [ -s "$W.reuse" ] && (cd -- {before} && {nul} <"$W.first" | xargs -0 -r {copy} &&'
            f' {nul} <"$W.rest" | xargs -0 -r -P {COPY_JOBS} -n {COPY_BATCH} {copy})'
            f" 2>/dev/null && [ -s {snapshot} ]; then"
            f' (cd -- {before} && cat -- "$W.first" "$W.rest" | {nul} | xargs -0 -r stat -c {q(STAT_FORMAT)} --)'
            ' >"$W.now" 2>/dev/null &&'
            f" awk -v link={int(hardlink)} {q(_TRUSTED_AWK)}"
            f' {snapshot} "$W.now" >"$W.trusted" ||'
            ' : > "$W.trusted"; fi'
        )
    lines += [
        'cd -- "$T"',
        # hash the files that need it on every CPU (up to 8): split into lists of about equal bytes
        "n=$(nproc 2>/dev/null) || n=1",
        '[ "$n" -le 8 ] 2>/dev/null || n=8',
        f'awk -F \'\\t\' -v n="$n" -v out="$W.verify." {q(_VERIFY_SPLIT_AWK)} "$W.trusted" "$M.tmp"',
        "pids=",
        'for f in "$W".verify.*; do',
        '  [ -f "$f" ] || continue',
        '  sha256sum -c --quiet --strict "$f" >"$f.check" 2>/dev/null & pids="$pids $!"',
        "done",
        "ok=1",
        'for p in $pids; do wait "$p" || ok=0; done',
        'if [ "$ok" = 0 ]; then',
        '  cat -- "$W".verify.*.check | sed -n \'s/: FAILED.*$//p\'; rm -f -- "$W".*',
        f"  exit {VERIFY_FAILED_STATUS}",
        "fi",
    ]
    for item in shared:
        lines.append(_link_shared(item))
    lines += [
        # the stat snapshot lets the next deploy trust unchanged files without hashing them.
        # File times have the kernel's tick (up to 10 ms): wait one, so that every file written
        # above is older than the marker, and only later writers can make entries racy
        "sleep 0.02",
        ': > "$W.mark"',
        '{ printf \'#%s\\n\' "$(stat -c %z -- "$W.mark")" &&'
        f' find . -type f -exec stat -c {q(STAT_FORMAT)} -- {{}} +; }} >"$S.tmp" 2>/dev/null ||'
        ' rm -f -- "$S.tmp"',
        'printf \'trusted=%s\\n\' "$(wc -l < "$W.trusted")"',
        'rm -f -- "$W".*',
        f'mv -- "$T" {q(layout.release_dir)}',
        'mv -- "$M.tmp" "$M"',
        '[ ! -f "$S.tmp" ] || mv -- "$S.tmp" "$S"',
    ]
    return "\n".join(lines) + "\n"


def manifest_path(path: str, release_id: str) -> str:
    """DIR/.deployer/manifests/<id>.tsv: sha256, size, mode and path of every file."""
    return f"{path}/.deployer/manifests/{release_id}.tsv"


def snapshot_path(path: str, release_id: str) -> str:
    """DIR/.deployer/manifests/<id>.stat: every file's inode, size, mtime and ctime at publish."""
    return f"{path}/.deployer/manifests/{release_id}.stat"


STAT_FORMAT = "%i|%s|%y|%z|%n"

# Prints the reused files (read from stat lines of the previous release, taken after the copy)
# whose inode, size, mtime and ctime are those of the snapshot taken when that release was
# published, so their copies need no hashing. Any write sets ctime, and no one can set it back.
# Hard links (link=1) change the ctime of the shared inode, and so do other releases' links and
# prunes: there, ctime is not compared, and mtime (which writes set too) must do. Entries whose
# compared time is not older than the snapshot's marker are left out (racy: a write in the same
# clock tick would not show, as in git's index).
_TRUSTED_AWK = r"""
BEGIN { FS = "|" }
function name(  n) { n = substr($0, length($1 FS $2 FS $3 FS $4) + 2); sub(/^\.\//, "", n); return n }
function key() { return link ? $1 FS $2 FS $3 : $1 FS $2 FS $3 FS $4 }
FILENAME == ARGV[1] && FNR == 1 { mark = substr($0, 2); next }
NF < 5 || $1 !~ /^[0-9]+$/ { next }
FILENAME == ARGV[1] { if ((link ? $3 : $4) < mark) snap[name()] = key(); next }
(name() in snap) && snap[name()] == key() { print name() }
"""


def inventory_script(layout: Layout) -> str:
    """sha256 of every file already in the partial dir (what survived an interrupted upload)."""
    return f"""T={q(layout.partial_dir)}
[ -d "$T" ] || exit 0
cd -- "$T" && find . -type f -exec sha256sum -- {{}} +
"""


VERIFY_FAILED_STATUS = 5

# Unchanged files are copied (or linked) this many cp's at a time, each given up to COPY_BATCH
# names. Creating files waits on the filesystem's journal: on a busy disk 4 in parallel copied
# 3000 files in about half the time of one cp (README.md, Performance: Redeploys).
COPY_JOBS = 4
COPY_BATCH = 256

# Splits reuse-list names in two: the first file seen in each directory (copied alone first, so
# that every parent directory exists) and the rest (copied in parallel).
_FIRST_OF_DIR_AWK = r"""
{ d = $0; if (!sub(/\/[^\/]*$/, "", d)) d = "."; if (d in seen) print > rest; else { seen[d]; print > first } }
"""

# Writes sha256sum -c lines of the manifest's files that no stat vouched for (ARGV[1]: trusted
# names) into n lists, each file to the list with the fewest bytes so far (+4 KiB per file for
# the open and the read that even an empty file costs).
_VERIFY_SPLIT_AWK = r"""
FILENAME == ARGV[1] { trusted[$0]; next }
!($4 in trusted) {
    k = 0; for (i = 1; i < n; i++) if (load[i] < load[k]) k = i
    load[k] += $2 + 4096; print $1 "  " $4 > (out k)
}
"""


def _link_shared(item: str) -> str:
    """Replace release/<item> by a relative symlink to shared/<item>, seeding files on first use."""
    is_dir = item.endswith("/")
    rel = item.rstrip("/")
    depth = rel.count("/")
    # the link sits in DIR/releases/<id>/<rel>: climb to DIR, then into shared/
    target = "../" * (depth + 2) + "shared/" + rel
    s, t = f'"$P/shared/"{q(rel)}', f'"$T/"{q(rel)}'
    if is_dir:
        seed = f"[ -e {s} ] || mkdir -p -- {s}"
    else:
        seed = (
            f"if [ ! -e {s} ]; then"
            f' if [ -f {t} ]; then mkdir -p -- "$(dirname -- {s})" && cp -p -- {t} {s};'
            f" else echo {q(f'shared file {rel} is missing: create it in ')}\"$P/shared/\"' on the target' >&2;"
            " exit 4; fi; fi"
        )
    return f'{seed}\nrm -rf -- {t}\nmkdir -p -- "$(dirname -- {t})"\nln -s -- {q(target)} {t}'


def switch_script(path: str, release_id: str | None) -> str:
    """Point current at releases/<id> atomically (or remove it when release_id is None)."""
    if release_id is None:
        return f"rm -f -- {q(path)}/current\n"
    link = f"releases/{release_id}"
    tmp = f".deployer/current.{release_id}"
    return f"""set -e
cd -- {q(path)}
[ -d {q(link)} ] || {{ echo 'release {release_id} does not exist' >&2; exit 4; }}
rm -f -- {q(tmp)}
ln -s -- {q(link)} {q(tmp)}
mv -fT -- {q(tmp)} current
"""


FINISH_FAILED_STATUS = 98  # switched, but recording, pruning or unlocking failed


def switch_then_script(switch: str, then: str) -> str:
    """Switch, and only if that worked run `then`; a failure there exits FINISH_FAILED_STATUS."""
    return f"(\n{switch}) || exit $?\n(\n{then}) || exit {FINISH_FAILED_STATUS}\n"


def remove_partial_script(layout: Layout) -> str:
    """Remove an upload that did not complete."""
    return f"rm -rf -- {q(layout.partial_dir)}\n"


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


@dataclass(frozen=True)
class HistoryEntry:
    """One line of DIR/.deployer/history."""

    action: str  # deploy | rollback | failed
    release: str
    previous: str
    time: str
    by: str
    commit: str = ""
    ref: str = ""
    pipeline: str = ""
    detail: str = ""

    def to_json(self) -> str:
        """Compact JSON for the history file."""
        data = {k: v for k, v in self.__dict__.items() if v}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def append_history_script(path: str, entry: HistoryEntry) -> str:
    """Append one JSON line to the history."""
    return f"printf '%s\\n' {q(entry.to_json())} >> {q(path)}/.deployer/history\n"


def read_history_script(path: str, limit: int) -> str:
    """Print the newest history lines."""
    return f"tail -n {int(limit)} -- {q(path)}/.deployer/history 2>/dev/null || true\n"


def parse_history(text: str) -> list[dict[str, str]]:
    """Parse history lines, skipping any that are not JSON objects."""
    entries = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            entries.append({str(k): str(v) for k, v in value.items()})
    return entries
