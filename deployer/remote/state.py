"""What the probe saw on a target, parsed into TargetState, and the checks a deploy needs to pass."""

from __future__ import annotations

from dataclasses import dataclass

from deployer.errors import LockError, RemoteError
from deployer.output import human_size
from deployer.remote.layout import RELEASE_ID


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
            f"not enough space on {label}: {human_size(state.free_bytes)} free in {state.path},"
            f" the release needs {human_size(needed_bytes)} — free some space or lower --keep"
        )
    if state.lock:
        raise lock_error(state.lock, state.path, label)


def lock_error(info: str, path: str, label: str) -> LockError:
    """The message for a held lock, saying who holds it and how to clear a stale one."""
    return LockError(
        f"another deploy holds the lock on {path} on {label} ({info or 'no details'})"
        f" — wait for it, or if that deploy died run `deployer unlock` with the same route and --path {path}"
    )
