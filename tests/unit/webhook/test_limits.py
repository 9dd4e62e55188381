"""What an unauthenticated client may hold, and how its text reaches the log."""

from __future__ import annotations

from http import HTTPStatus

from deployer.webhook.limits import ConnectionLimiter, Limits, printable


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("GET /deploys/x HTTP/1.1") == "GET /deploys/x HTTP/1.1"
    assert printable("/\x1b]0;owned\x07\r\n\u202e\\x") == "/\\x1b]0;owned\\x07\\r\\n\\u202e\\\\x"
    assert printable("a" * 300, limit=10) == "a" * 10 + "…"


def test_limiter_counts_in_all_and_per_client() -> None:
    limiter = ConnectionLimiter(Limits(connections=3, per_client=2))
    assert limiter.acquire("10.0.0.1") is None and limiter.acquire("10.0.0.1") is None
    status, reason = limiter.acquire("10.0.0.1") or (None, "")
    assert status == HTTPStatus.TOO_MANY_REQUESTS and "10.0.0.1" in reason
    assert limiter.acquire("10.0.0.2") is None
    status, reason = limiter.acquire("10.0.0.3") or (None, "")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE and "busy (3 connections open)" in reason
    assert limiter.turned_away() == 2 and limiter.turned_away() == 0  # one report, then quiet
    limiter.release("10.0.0.1")
    assert limiter.acquire("10.0.0.3") is None
