"""The keeper's state for monitoring: the status document, the status file and the /healthz endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployer.errors import ConfigError
from deployer.tunnel.policy import State, transition

if TYPE_CHECKING:
    from deployer.tunnel.settings import TunnelSettings

HEALTHZ_TIMEOUT = 5.0  # seconds a /healthz client may take to send its request


def _utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Status:
    """The keeper's state as monitoring sees it."""

    state: State = State.STARTING
    since: float = field(default_factory=time.time)
    reason: str = ""
    attempt: int = 0
    connects: int = 0
    verified_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt_at: float | None = None

    def document(self, settings: TunnelSettings, now: float) -> dict[str, Any]:
        """The JSON document of the status file and /healthz."""
        return {
            "state": self.state.value,
            "healthy": self.state is State.UP,
            "since": _utc(self.since),
            "seconds_in_state": round(now - self.since, 1),
            "reason": self.reason,
            "jump": str(settings.jump),
            "forwards": [f.spec for f in settings.forwards],
            "attempt": self.attempt,
            "connects": self.connects,
            "verified_at": _utc(self.verified_at),
            "last_error": self.last_error,
            "last_error_at": _utc(self.last_error_at),
            "next_attempt_at": _utc(self.next_attempt_at),
            "pid": os.getpid(),
            "updated_at": _utc(now),
        }


class StatusBoard:
    """Holds the status; logs every state change; writes the status file; serves /healthz."""

    def __init__(self, settings: TunnelSettings, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.status = Status()
        self._log = log
        self._lock = threading.Lock()
        self._server: Any = None

    def set(self, state: State, reason: str = "") -> None:
        """Change state (validated against TRANSITIONS), log it, write the status file."""
        with self._lock:
            if state is not self.status.state:
                transition(self.status.state, state)
                self.status.state = state
                self.status.since = time.time()
            self.status.reason = reason
            if state is not State.BACKOFF:
                self.status.next_attempt_at = None
        self._log(f"tunnel: {state.value}" + (f" — {reason}" if reason else ""))
        self.write()

    def update(self, **changes: Any) -> None:
        """Change fields other than the state (no log line)."""
        with self._lock:
            for name, value in changes.items():
                setattr(self.status, name, value)
        self.write()

    def document(self) -> dict[str, Any]:
        """A consistent snapshot."""
        with self._lock:
            return self.status.document(self.settings, time.time())

    def write(self) -> None:
        """Atomically replace the status file (when one was asked for).

        The new text goes into a fresh file of an unpredictable name (created exclusively, so a
        symlink planted in the directory is never followed), then is renamed over the path
        (which replaces a symlink there rather than writing through it).
        """
        path = self.settings.status_file
        if path is None:
            return
        text = json.dumps(self.document(), indent=2, sort_keys=True) + "\n"
        temporary = ""
        try:
            fd, temporary = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
            )
            with os.fdopen(fd, "w") as stream:
                os.fchmod(stream.fileno(), 0o644)  # not secret; monitoring may run as another user
                stream.write(text)
            os.replace(temporary, path)
        except OSError as exc:
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            self._log(f"tunnel: cannot write the status file {path}: {exc.strerror or exc}")

    def serve(self) -> None:
        """Start the /healthz endpoint (200 when up, 503 otherwise) if one was asked for."""
        if self.settings.healthz is None:
            return
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        board = self

        class Handler(BaseHTTPRequestHandler):
            timeout = HEALTHZ_TIMEOUT  # a client that sends nothing does not keep a thread

            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/healthz", "/status"):
                    self.send_error(404)
                    return
                document = board.document()
                body = (json.dumps(document, sort_keys=True) + "\n").encode()
                self.send_response(200 if document["healthy"] else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # monitoring polls; do not fill the log

            def handle(self) -> None:
                with contextlib.suppress(OSError):  # a timed-out or vanished client: nothing to say
                    super().handle()

        host, port = self.settings.healthz
        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"--healthz {host}:{port}: cannot listen there ({exc.strerror or exc})"
            ) from exc
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="deployer-healthz", daemon=True
        ).start()

    def close(self) -> None:
        """Stop serving /healthz."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def read_status_file(path: Path) -> tuple[dict[str, Any], bool]:
    """A keeper's status document and whether it says up (a keeper that is gone is not up)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the status file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"the status file {path} does not hold a status document")
    healthy = bool(document.get("healthy"))
    pid = document.get("pid")
    if healthy and isinstance(pid, int) and not _alive(pid):
        healthy = False
        document["state"], document["healthy"] = "dead", False
        document["reason"] = f"the keeper (pid {pid}) is not running"
    return document, healthy


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
