"""What the probe saw on a target, parsed into TargetState, and the checks a deploy needs to pass."""

from __future__ import annotations

from dataclasses import dataclass, field

from deployer.errors import LockError, RemoteError
from deployer.output import human_size
from deployer.remote.layout import RELEASE_ID
from deployer.remote.lock import parse_lock_info
from deployer.remote.tools import GROUP_TOOLS, Toolset, check_tools


@dataclass(frozen=True)
class TargetState:
    """What the preflight script saw on a target."""

    path: str
    exists: bool = False
    is_dir: bool = True
    writable: bool = False
    writable_dir: str = ""
    free_bytes: int = 0
    tools: Toolset = field(default_factory=Toolset)  # what its tools can do (nothing, unprobed)
    current: str = ""  # release id current points to ('' when none)
    current_is_symlink: bool = True
    current_bad: str = ""  # what current points at when that is not releases/<id> (sanitized)
    releases: tuple[str, ...] = ()
    failed: frozenset[str] = frozenset()  # releases here whose last history entry is "failed"
    lock: str = ""  # lock/info content when the lock is held
    login: str = ""
    manifest: tuple[str, ...] = ()  # the live release's manifest lines
    locked: bool = False  # the probe took the lock for us
    group: str = ""  # the --group asked for ('' when none)
    group_ok: bool = False  # the login may give files that group (chgrp worked)
    group_error: str = ""  # what chgrp said when it did not
    groups: tuple[str, ...] = ()  # the login's groups (id -Gn)

    @property
    def has_timeout(self) -> bool:
        """Hooks can be stopped by the target's own timeout."""
        return self.tools.timeout

    @property
    def previous(self) -> str:
        """The newest good release older than current (the rollback target), or ''."""
        older = [
            r for r in self.releases if self.current and r < self.current and r not in self.failed
        ]
        return older[-1] if older else ""


def parse_state(path: str, text: str) -> TargetState:
    """Read the key=value lines of the preflight script."""
    values: dict[str, str] = {}
    releases: list[str] = []
    manifest: list[str] = []
    have: set[str] = set()
    last_action: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "m":
            manifest.append(value)
        elif key == "have":
            have.add(value)
        elif key == "release":
            if RELEASE_ID.match(value):
                releases.append(value)
        elif key == "h":
            action, _, release = value.partition(" ")
            last_action[release] = action
        else:
            values[key] = value
    current = values.get("current", "")
    current_id = current.removeprefix("releases/")
    bad = values.get("current_bad", "")
    if current and (not current.startswith("releases/") or not RELEASE_ID.match(current_id)):
        current_id, bad = "", bad or current  # the probe checks the form too; so do we
    return TargetState(
        path=values.get("abspath", path),
        exists=values.get("exists") == "yes",
        is_dir=values.get("is_dir", "yes") == "yes",
        writable=values.get("writable") == "yes",
        writable_dir=values.get("writable_dir", ""),
        free_bytes=int(values.get("free_kb", "0") or 0) * 1024,
        tools=Toolset(
            frozenset(have),
            checked=values.get("scratch") != "no",
            extra=GROUP_TOOLS if values.get("group") else (),
        ),
        current=current_id,
        current_is_symlink=values.get("current_kind", "symlink") == "symlink",
        current_bad=bad,
        releases=tuple(sorted(releases)),
        failed=frozenset(r for r in releases if last_action.get(r) == "failed"),
        lock=values.get("lock", ""),
        login=values.get("login", ""),
        manifest=tuple(manifest),
        locked=values.get("locked") == "yes",
        group=values.get("group", ""),
        group_ok=values.get("group_ok") == "yes",
        group_error=values.get("group_error", ""),
        groups=tuple(values.get("groups", "").split()),
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
    check_tools(state.tools, label, state.path)
    if state.group and not state.group_ok:
        raise group_error(state, label)
    check_current(state, label)
    # room for the new tree plus a margin for filesystem overhead
    if state.free_bytes and needed_bytes and state.free_bytes < needed_bytes * 1.1 + 1024 * 1024:
        raise RemoteError(
            f"not enough space on {label}: {human_size(state.free_bytes)} free in {state.path},"
            f" the release needs {human_size(needed_bytes)} — free some space or lower --keep"
        )
    if state.lock:
        raise lock_error(state.lock, state.path, label)


def group_error(state: TargetState, label: str) -> RemoteError:
    """The deploy user may not give files the --group: not a member (or no such group)."""
    login = state.login or "the login user"
    groups = ", ".join(state.groups) or "none known"
    if state.group in state.groups:  # a member, and still chgrp failed: say what it said
        return RemoteError(
            f"{login} on {label} cannot give files group {state.group} ({state.group_error})"
            f" — check the group there, or choose another --group"
        )
    return RemoteError(
        f"{login} on {label} is not in group {state.group} (its groups: {groups}) — add it"
        f" there (as root: usermod -aG {state.group} {login}; it applies from the next login)"
        " or choose another --group; nothing was uploaded"
    )


def check_current(state: TargetState, label: str) -> None:
    """Refuse a current that is not a symlink to releases/<release id> (it is never used)."""
    if not state.current_is_symlink:
        raise RemoteError(
            f"{state.path}/current on {label} is not a symlink — move it aside so deployer can manage releases"
        )
    if state.current_bad:
        raise RemoteError(
            f"{state.path}/current on {label} points at {state.current_bad!r}, not at"
            " releases/<release id> — deployer will not use it: find out who changed it, then point"
            " it at a release or remove it"
        )


def lock_error(info: str, path: str, label: str) -> LockError:
    """The message for a held lock, saying who holds it and how to clear a stale one."""
    held = parse_lock_info(info)
    same = f"with the same route and --path {path}"
    if not held.switched_to:
        return LockError(
            f"another deploy holds the lock on {path} on {label} ({info or 'no details'})"
            f" — wait for it, or if that deploy died run `deployer unlock` {same}"
        )
    # a deploy switched and has not confirmed: it is still checking, or it lost the target
    if held.previous:
        then = (
            f"`deployer rollback --release {held.previous} --lock-token {held.token}`"
            f" (or `deployer unlock` to keep {held.switched_to}) {same}"
        )
    else:
        then = f"`deployer unlock` {same} (there is no earlier release to roll back to)"
    return LockError(
        f"another deploy holds the lock on {path} on {label} ({info}): it switched current to"
        f" {held.switched_to} (previous: {held.previous or 'none'}) and has not confirmed it"
        f" — wait for it; if that deploy died, check the site, then run {then}"
    )
