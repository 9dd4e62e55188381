"""What the shell probe reports, read over SFTP: the path, current, releases, the lock, the live
manifest and free space, as the same ``remote.state.TargetState``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from deployer.errors import RemoteError
from deployer.remote.files import POSIX_RENAME, FileSession, FileStat
from deployer.remote.history import parse_history
from deployer.remote.layout import RELEASE_ID, manifest_path
from deployer.remote.state import TargetState, check_ready, parse_state
from deployer.remote.tools import REQUIRED, Toolset

MANIFEST_LIMIT = 256 << 20  # a manifest line is ~100 bytes: millions of files
HISTORY_TAIL = 256 << 10  # the newest history lines (which releases failed last)


def require_posix_rename(files: FileSession) -> None:
    """Refuse a server that cannot rename a symlink over current atomically."""
    if not files.offers(POSIX_RENAME):
        raise RemoteError(
            f"{files.label} does not offer {POSIX_RENAME} on SFTP: without it `current` cannot be"
            " switched atomically, so deployer will not deploy there — use an OpenSSH sftp-server"
            " (4.8 or newer, without -P posix-rename) or give the account a shell"
        )


def survey(files: FileSession, path: str) -> TargetState:
    """Read the target's state under path (nothing is changed), parsed as the probe's output is."""
    found: dict[str, FileStat | None] = {}
    names: list[tuple[str, FileStat]] = []
    batch = files.batch()
    for what in ("", "/current", "/.deployer/lock"):
        batch.lstat(path + what, keep(found, what))
    batch.listdir(f"{path}/releases", names.extend)
    batch.wait()
    top = found[""]
    if top is not None and top.kind == "symlink":
        top = files.lstat(files.realpath(path))
    lines = [f"exists={'yes' if top else 'no'}", "writable=yes"]  # taking the lock (mkdir) tests it
    lines += [] if top is None or top.kind == "dir" else ["is_dir=no"]
    if top is not None:
        lines.append(f"abspath={files.realpath(path)}")
    free = files.free_bytes(path) if top is not None else _free(files, path)
    lines.append(f"free_kb={(free or 0) // 1024}")
    link = found["/current"]
    current = ""
    if link is not None and link.kind == "symlink":
        current = (files.readlink(f"{path}/current") or "").rstrip("/")
        lines.append(f"current={current}")
    elif link is not None:
        lines.append("current_kind=other")
    lines += [f"release={n}" for n, stat in names if stat.kind == "dir"]
    if found["/.deployer/lock"] is not None:
        info = files.read(f"{path}/.deployer/lock/info", 4096) or b""
        lines.append("lock=" + (info.decode(errors="replace").partition("\n")[0] or "no details"))
    live = current.removeprefix("releases/")
    if current.startswith("releases/") and RELEASE_ID.match(live):
        text = files.read(manifest_path(path, live), MANIFEST_LIMIT) or b""
        lines += [f"m={line}" for line in text.decode(errors="replace").splitlines()]
    history = files.read(f"{path}/.deployer/history", HISTORY_TAIL, tail=True) or b""
    for entry in parse_history(history.decode(errors="replace")):
        if entry.get("action") and entry.get("release"):
            lines.append(f"h={entry['action']} {entry['release']}")
    return parse_state(path, "\n".join(lines))


def keep(into: dict[str, FileStat | None], key: str) -> Callable[[FileStat | None], None]:
    """An lstat handler that stores the answer under key."""

    def handle(stat: FileStat | None) -> None:
        into[key] = stat

    return handle


def _free(files: FileSession, path: str) -> int | None:
    """Free bytes at path or, before the first deploy, at its nearest existing parent."""
    probe = path
    while probe not in ("", "/", ".") and files.lstat(probe) is None:
        probe = (probe.rsplit("/", 1)[0] or "/") if "/" in probe else "."
    return files.free_bytes(probe or ".")


def check_sftp_ready(state: TargetState, label: str, needed_bytes: int) -> None:
    """Raise the one-line error for the first thing that would make the deploy fail: what the
    shell path checks, but tools (SFTP needs none of them)."""
    check_ready(
        replace(state, tools=Toolset(frozenset(n.name for n in REQUIRED))), label, needed_bytes
    )
