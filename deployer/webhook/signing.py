"""Signed webhook requests and answers: HMAC-SHA256 with the one shared secret, both ways.

A request is signed over method, path, timestamp, a unique id and the body. The receiver refuses
a request whose signature does not match (constant-time comparison), whose timestamp is outside
the tolerance window, or whose id it has already seen within that window (the replay cache only
records ids of correctly signed requests, so forgeries cannot fill it; ``webhook.replay`` keeps
it on disk across restarts).

The receiver signs what it answers, bound to the id of the request it answers: a JSON answer in
a header over its status and body, each line of a status stream in the line itself, chained to
the line before it. The pipeline side believes nothing else, so the answer that decides whether
a job passes cannot be forged, replayed from another request, reordered or cut short unnoticed.
Pure apart from the clock the caller passes in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from deployer.errors import ConfigError

TIMESTAMP_HEADER = "X-Deployer-Timestamp"
ID_HEADER = "X-Deployer-Request-Id"
SIGNATURE_HEADER = "X-Deployer-Signature"
RESPONSE_SIGNATURE_HEADER = "X-Deployer-Response-Signature"
LINE_MAC = "mac"  # the key of a status stream line that holds its signature
SCHEME = "v1"
DEFAULT_WINDOW = 300.0  # seconds of clock difference tolerated between CI and the receiver
MIN_SECRET_BYTES = 16
MAX_ID_LENGTH = 128
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII digits only: '²'.isdigit() is true
_REQUEST_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID_LENGTH}}}")


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


def request_id_of(headers: Mapping[str, str]) -> str:
    """The request's id when it is well formed (safe to sign an answer with and to log), else ''."""
    request_id = headers.get(ID_HEADER, "")
    return request_id if _REQUEST_ID.fullmatch(request_id) else ""


def response_signature(secret: bytes, status: int, request_id: str, body: bytes) -> str:
    """The receiver's signature of a JSON answer: 'v1=' + HMAC over status, request id and body."""
    canonical = f"{SCHEME}-response\n{status}\n{request_id}\n".encode() + body
    return f"{SCHEME}=" + hmac.new(secret, canonical, hashlib.sha256).hexdigest()


def _line_mac(secret: bytes, request_id: str, previous: str, payload: bytes) -> str:
    canonical = f"{SCHEME}-stream\n{request_id}\n{previous}\n".encode() + payload
    return f"{SCHEME}=" + hmac.new(secret, canonical, hashlib.sha256).hexdigest()


def _canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes a stream line's signature covers: the line's JSON object without its mac."""
    return json.dumps({k: v for k, v in document.items() if k != LINE_MAC}, sort_keys=True).encode()


class StreamSigner:
    """Signs the lines of one status stream, each chained to the one before (receiver side)."""

    def __init__(self, secret: bytes, request_id: str) -> None:
        self._secret, self._request_id, self._previous = secret, request_id, ""

    def line(self, document: Mapping[str, Any]) -> bytes:
        """One JSON line carrying its signature under 'mac'."""
        self._previous = _line_mac(
            self._secret, self._request_id, self._previous, _canonical(document)
        )
        return (json.dumps({**document, LINE_MAC: self._previous}, sort_keys=True) + "\n").encode()


class StreamVerifier:
    """Checks the lines of one status stream in order (pipeline side); False for a bad line."""

    def __init__(self, secret: bytes, request_id: str) -> None:
        self._secret, self._request_id, self._previous = secret, request_id, ""

    def check(self, document: Mapping[str, Any]) -> bool:
        """Whether this line was signed by the receiver for our request, right after the last one."""
        given = document.get(LINE_MAC)
        expected = _line_mac(self._secret, self._request_id, self._previous, _canonical(document))
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected.encode()):
            return False
        self._previous = expected
        return True


def answer_is_signed(
    secret: bytes, status: int, request_id: str, body: bytes, given: str | None
) -> bool:
    """Whether given (the answer's RESPONSE_SIGNATURE_HEADER) signs this answer to this request."""
    expected = response_signature(secret, status, request_id, body)
    return hmac.compare_digest((given or "").encode(), expected.encode())


class ReplayCache:
    """Request ids seen within the window; thread-safe, bounded in size.

    seen: ids already recorded (id -> time after which it can be forgotten); journal: called
    with each new id and that time before the request is accepted (webhook.replay writes them
    to disk); if it raises, the request is refused.
    """

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        capacity: int = 100_000,
        *,
        seen: Mapping[str, float] | None = None,
        journal: Callable[[str, float], None] | None = None,
    ) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: dict[str, float] = dict(seen or {})
        self._journal = journal
        self._lock = threading.Lock()

    def snapshot(self, now: float) -> dict[str, float]:
        """The ids still remembered at now (to compact a journal)."""
        with self._lock:
            return {k: t for k, t in self._seen.items() if t > now}

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
            expires = now + 2 * self.window
            if self._journal is not None:
                try:
                    self._journal(request_id, expires)
                except OSError as exc:
                    raise Rejected(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        f"the receiver cannot record request ids ({exc.strerror or exc}) — see its log",
                    ) from exc
            self._seen[request_id] = expires


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
    if not _TIMESTAMP.fullmatch(timestamp) or not _REQUEST_ID.fullmatch(request_id):
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
