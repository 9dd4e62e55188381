"""The receiver's replay record on disk: request ids it accepted survive a restart.

A captured request stays valid for the timestamp window; a receiver that forgot every id when it
restarted would take it again. Each accepted id is appended (and fsynced) to one file before the
request is answered, as ``<unix time it may be forgotten> <id>`` per line; on start the file is
read back, ids past their time are dropped and the rest is rewritten. The file is opened without
following symlinks and kept private (0600).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from deployer.errors import ConfigError
from deployer.webhook.signing import ReplayCache

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def default_replay_file(env: Mapping[str, str], port: int) -> Path:
    """Where a receiver on port keeps its replay record: systemd's StateDirectory= when it runs
    as a service, else $XDG_STATE_HOME/deployer (~/.local/state/deployer)."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / f"webhook-requests-{port}"
    base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or "/", ".local", "state")
    return Path(base) / "deployer" / f"webhook-requests-{port}"


def parse_record(text: str, now: float) -> dict[str, float]:
    """The ids of a replay record still to be remembered at now (malformed lines are skipped)."""
    seen: dict[str, float] = {}
    for line in text.splitlines():
        expires, _, request_id = line.partition(" ")
        try:
            until = float(expires)
        except ValueError:
            continue
        if request_id and until > now:
            seen[request_id] = max(until, seen.get(request_id, 0.0))
    return seen


class ReplayJournal:
    """The append-only file behind a ReplayCache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._lock = threading.Lock()

    def load(self, now: float) -> dict[str, float]:
        """Read the record, rewrite it without expired ids, and open it for appending."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as stream:
                seen = parse_record(stream.read(), now)
            self._rewrite(seen)
            self._fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot keep the webhook replay record in {self.path}: {exc.strerror or exc}"
                " — pass --replay-file with a path the receiver's user may write"
            ) from exc
        return seen

    def _rewrite(self, seen: dict[str, float]) -> None:
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.writelines(
                    f"{until:.0f} {request_id}\n" for request_id, until in seen.items()
                )
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)  # replaces a symlink planted there, never follows it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def append(self, request_id: str, until: float) -> None:
        """Record one id durably (raises OSError when it cannot)."""
        with self._lock:
            os.write(self._fd, f"{until:.0f} {request_id}\n".encode())
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def open_replay_cache(path: Path, window: float, now: float) -> tuple[ReplayCache, ReplayJournal]:
    """A replay cache that remembers what the record at path holds and records every new id."""
    journal = ReplayJournal(path)
    seen = journal.load(now)
    return ReplayCache(window, seen=seen, journal=journal.append), journal
