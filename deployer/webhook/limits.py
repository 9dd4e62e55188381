"""What the receiver allows an unauthenticated client: a few connections, briefly, logged safely.

Anyone who can reach the port can open connections before a single signature is checked, so the
receiver bounds them: a total number of connections (503 beyond it), a number per client address
(429 beyond it), and a deadline for the whole request head and body (not per read: a client
sending a byte every few seconds cannot hold a thread for long). What a client sends reaches the
log only through ``printable``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus

MAX_LOGGED = 200  # characters of client-supplied text kept in a log line


def _escaped(ch: str) -> str:
    if ch == "\\":
        return "\\\\"  # so that an escape in the log always means an escaped character
    return ch if ch.isprintable() else ascii(ch)[1:-1]  # '\x1b', '\n', '\u202e'


def printable(text: str, limit: int = MAX_LOGGED) -> str:
    """text fit for a log line: unprintable characters and backslashes escaped, cut at limit."""
    escaped = "".join(_escaped(ch) for ch in text[:limit])
    return escaped if len(text) <= limit else escaped + "…"


@dataclass(frozen=True)
class Limits:
    """How much the receiver lets clients hold."""

    connections: int = 64  # open connections in all (a following CI job holds one)
    per_client: int = 16  # open connections from one address
    request_seconds: float = 10.0  # to send the whole request head and body


class ConnectionLimiter:
    """Counts open connections in all and per client address; thread-safe."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._turned_away = 0
        self._reported = float("-inf")  # the first refusal is reported at once

    def acquire(self, client: str) -> tuple[HTTPStatus, str] | None:
        """Admit a connection from client (None), or say why not: (status, reason)."""
        with self._lock:
            if sum(self._open.values()) >= self.limits.connections:
                self._turned_away += 1
                return HTTPStatus.SERVICE_UNAVAILABLE, (
                    f"the receiver is busy ({self.limits.connections} connections open) — retry later"
                )
            if self._open[client] >= self.limits.per_client:
                self._turned_away += 1
                return HTTPStatus.TOO_MANY_REQUESTS, (
                    f"too many connections from {client} ({self.limits.per_client} open) — retry later"
                )
            self._open[client] += 1
            return None

    def release(self, client: str) -> None:
        """A connection from client ended."""
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def turned_away(self, every: float = 10.0) -> int:
        """How many connections were refused since the last report, at most once per `every`
        seconds (0 otherwise): one log line, not one per refused connection."""
        with self._lock:
            if not self._turned_away or time.monotonic() - self._reported < every:
                return 0
            count, self._turned_away, self._reported = self._turned_away, 0, time.monotonic()
            return count
