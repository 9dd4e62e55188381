"""``releases``, ``rollback`` and ``unlock`` on an SFTP-only target (as ``deploy.manage`` does with
scripts): the same checks, the same history lines, the same outcomes."""

from __future__ import annotations

import hashlib
import time

from deployer.deploy.lock import utc_now
from deployer.deploy.manage import listing, rollback_to
from deployer.deploy.outcome import Outcome, Provenance, Status
from deployer.deploy.sftp.lock import FileLock, remove_lock
from deployer.deploy.sftp.state import MANIFEST_LIMIT, require_posix_rename, survey
from deployer.deploy.sftp.target import append_history, switch_over_sftp
from deployer.deploy.status import inspected
from deployer.errors import ConfigError
from deployer.output import Reporter
from deployer.remote.files import FileSession
from deployer.remote.history import HistoryEntry, parse_history
from deployer.remote.layout import manifest_path
from deployer.remote.live import HISTORY_LINES, LiveState
from deployer.remote.lock import parse_lock_info
from deployer.remote.state import check_current, lock_error

HISTORY_TAIL = 64 << 10  # bytes of the history read for `deployer releases`


def rollback_over_sftp(
    files: FileSession,
    path: str,
    release: str | None,
    after: tuple[str, ...],
    provenance: Provenance,
    reporter: Reporter,
    lock_token: str | None = None,
) -> Outcome:
    """Switch current to the previous release (or a named one) under the lock.

    With `lock_token`, the lock a deploy left when it lost the target after its switch is taken
    over (and the release it left live unconfirmed is recorded as failed), as on the shell path.
    """
    if after:
        raise ConfigError(
            f"{files.label} allows SFTP only: no commands run over SFTP, so --after cannot run there"
            " — drop it"
        )
    require_posix_rename(files)
    started = time.monotonic()
    state = survey(files, path)
    target = rollback_to(state, release, files.label)
    left = parse_lock_info(state.lock) if lock_token else None
    if left is not None:
        if left.token != lock_token:
            raise lock_error(state.lock, state.path, files.label)
        remove_lock(files, state.path)
    lock = FileLock(files, state.path, provenance, "rollback").acquire()
    try:
        switch_over_sftp(files, state.path, target)
        if left is not None and left.switched_to and left.switched_to != target:
            append_history(files, state.path, HistoryEntry(
                "failed", left.switched_to, left.previous, utc_now(), provenance.by, provenance.commit,
                provenance.ref, provenance.pipeline,
                f"live unconfirmed since {left.switched_at}, rolled back to {target}",
            ))  # fmt: skip
            reporter.target(files.label, f"took over the lock left by: {left.text}")
        reporter.target(
            files.label,
            f"rolled back: current -> releases/{target} (was {state.current or 'none'})",
        )
        entry = HistoryEntry(
            "rollback", target, state.current, utc_now(), provenance.by,
            provenance.commit, provenance.ref, provenance.pipeline,
        )  # fmt: skip
        append_history(files, state.path, entry)
    finally:
        lock.release()
    return Outcome(files.label, Status.ROLLED_BACK, release=target, previous=state.current,
                   seconds=time.monotonic() - started)  # fmt: skip


def list_over_sftp(files: FileSession, path: str, history_lines: int = 50) -> Outcome:
    """Releases with the live one marked, plus recent history."""
    state = survey(files, path)
    check_current(state, files.label)
    text = files.read(f"{state.path}/.deployer/history", HISTORY_TAIL, tail=True) or b""
    lines = text.decode(errors="replace").splitlines()
    if len(text) >= HISTORY_TAIL:
        lines = lines[1:]  # the first one may be cut
    return listing(files.label, state, parse_history("\n".join(lines[-history_lines:])))


def unlock_over_sftp(files: FileSession, path: str) -> Outcome:
    """Remove a stale deploy lock."""
    state = survey(files, path)
    if state.lock:
        remove_lock(files, state.path)
    return Outcome(files.label, Status.UNLOCKED, details={"was": state.lock})


def status_over_sftp(files: FileSession, path: str) -> Outcome:
    """What `deployer status` reports, read over SFTP: the live release, its provenance, the lock."""
    state = survey(files, path)
    if not state.exists:
        return inspected(files.label, LiveState(path))
    content = ""
    if state.current:
        manifest = files.read(manifest_path(state.path, state.current), MANIFEST_LIMIT)
        content = hashlib.sha256(manifest).hexdigest() if manifest is not None else ""
    text = files.read(f"{state.path}/.deployer/history", HISTORY_TAIL, tail=True) or b""
    about = [
        h for h in parse_history(text.decode(errors="replace")) if h.get("release") == state.current
    ]
    live = LiveState(
        state.path, exists=True, current=state.current, current_is_symlink=state.current_is_symlink,
        releases=state.releases, locked=bool(state.lock), lock=state.lock, content=content,
        history=tuple(about[-HISTORY_LINES:]) if state.current else (),
    )  # fmt: skip
    return inspected(files.label, live)
