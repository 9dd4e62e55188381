"""Signed webhook requests: HMAC-SHA256 over method, path, timestamp, a unique id and the body.

The receiver refuses a request whose signature does not match (constant-time comparison), whose
timestamp is outside the tolerance window, or whose id it has already seen within that window
(the replay cache only records ids of correctly signed requests, so forgeries cannot fill it).
Pure apart from the clock the caller passes in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping
from http import HTTPStatus

from deployer.errors import ConfigError

TIMESTAMP_HEADER = "X-Deployer-Timestamp"
ID_HEADER = "X-Deployer-Request-Id"
SIGNATURE_HEADER = "X-Deployer-Signature"
SCHEME = "v1"
DEFAULT_WINDOW = 300.0  # seconds of clock difference tolerated between CI and the receiver
MIN_SECRET_BYTES = 16
MAX_ID_LENGTH = 128


class Rejected(Exception):
    """A request the receiver refuses: the HTTP status to answer with and a one-line reason."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def load_secret(value: str | None, source: str = "DEPLOYER_WEBHOOK_SECRET") -> bytes:
    """The shared secret as bytes; refuses a missing or short one (naming where it came from)."""
    text = (value or "").strip()
    if not text:
        raise ConfigError(
            f"no webhook secret — set {source} (the same value on the receiver and in CI;"
            " e.g. `openssl rand -hex 32`)"
        )
    if len(text.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the webhook secret in {source} is shorter than {MIN_SECRET_BYTES} bytes"
            " — use a random one, e.g. `openssl rand -hex 32`"
        )
    return text.encode()


def signature(
    secret: bytes, method: str, path: str, timestamp: str, request_id: str, body: bytes
) -> str:
    """The signature header value: 'v1=' + hex HMAC-SHA256 of the canonical request."""
    canonical = f"{SCHEME}\n{method.upper()}\n{path}\n{timestamp}\n{request_id}\n".encode() + body
    return f"{SCHEME}=" + hmac.new(secret, canonical, hashlib.sha256).hexdigest()


def sign_headers(secret: bytes, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
    """Headers that make a request verifiable: timestamp, fresh unique id, signature."""
    timestamp = str(int(now))
    request_id = secrets.token_hex(16)
    return {
        TIMESTAMP_HEADER: timestamp,
        ID_HEADER: request_id,
        SIGNATURE_HEADER: signature(secret, method, path, timestamp, request_id, body),
    }


class ReplayCache:
    """Request ids seen within the window; thread-safe, bounded in size."""

    def __init__(self, window: float = DEFAULT_WINDOW, capacity: int = 100_000) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: dict[str, float] = {}  # id -> time after which it can be forgotten
        self._lock = threading.Lock()

    def remember(self, request_id: str, now: float) -> None:
        """Record an id, or raise Rejected if it was already used (or the cache is full)."""
        with self._lock:
            if len(self._seen) >= self.capacity:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            if request_id in self._seen and self._seen[request_id] > now:
                raise Rejected(
                    HTTPStatus.CONFLICT,
                    "this request id was already used (a replayed request) — send a freshly signed one",
                )
            if len(self._seen) >= self.capacity:
                raise Rejected(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "too many signed requests within the replay window — retry later",
                )
            # a timestamp may be up to `window` in the future: keep ids for twice that long
            self._seen[request_id] = now + 2 * self.window


def verify(
    secret: bytes,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    window: float = DEFAULT_WINDOW,
    replays: ReplayCache | None = None,
) -> None:
    """Check a request's signature, freshness and (with a cache) uniqueness; raise Rejected."""
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    request_id = headers.get(ID_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not (timestamp and request_id and given):
        raise Rejected(
            HTTPStatus.UNAUTHORIZED,
            f"unsigned request — send {TIMESTAMP_HEADER}, {ID_HEADER} and {SIGNATURE_HEADER}"
            " (deployer push --mode webhook does)",
        )
    if not timestamp.isdigit() or len(request_id) > MAX_ID_LENGTH:
        raise Rejected(HTTPStatus.UNAUTHORIZED, "malformed signature headers")
    expected = signature(secret, method, path, timestamp, request_id, body)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise Rejected(
            HTTPStatus.UNAUTHORIZED,
            "bad signature — check that DEPLOYER_WEBHOOK_SECRET is the same in CI and on the receiver",
        )
    skew = now - int(timestamp)
    if abs(skew) > window:
        raise Rejected(
            HTTPStatus.UNAUTHORIZED,
            f"request timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'in the future'}"
            f" (more than {window:g} s) — a stale or replayed request, or clocks out of sync (use NTP)",
        )
    if replays is not None:
        replays.remember(request_id, now)
