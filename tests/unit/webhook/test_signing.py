"""Signing and verification of webhook requests (pure: the clock is passed in)."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from deployer.errors import ConfigError
from deployer.webhook.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Rejected,
    ReplayCache,
    StreamSigner,
    StreamVerifier,
    answer_is_signed,
    load_secret,
    request_id_of,
    response_signature,
    sign_headers,
    signature,
    verify,
)

SECRET = b"0123456789abcdef0123456789abcdef"
BODY = b'{"path": "/srv/app"}'
NOW = 1_800_000_000.0


def rejected(
    headers: dict[str, str], *, body: bytes = BODY, now: float = NOW, **kwargs: object
) -> Rejected:
    with pytest.raises(Rejected) as caught:
        verify(SECRET, "POST", "/deploys", headers, body, now=now, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_a_signed_request_verifies_once() -> None:
    headers = sign_headers(SECRET, "POST", "/deploys", BODY, NOW)
    assert headers[SIGNATURE_HEADER].startswith("v1=") and len(headers[ID_HEADER]) == 32
    cache = ReplayCache()
    verify(SECRET, "POST", "/deploys", headers, BODY, now=NOW + 10, replays=cache)
    again = rejected(headers, now=NOW + 11, replays=cache)
    assert again.status == HTTPStatus.CONFLICT and "replayed" in again.message


def test_everything_signed_is_covered() -> None:
    headers = sign_headers(SECRET, "POST", "/deploys", BODY, NOW)
    assert rejected(headers, body=BODY + b" ").status == HTTPStatus.UNAUTHORIZED
    with pytest.raises(Rejected):
        verify(SECRET, "GET", "/deploys", headers, BODY, now=NOW)
    with pytest.raises(Rejected):
        verify(SECRET, "POST", "/deploys?x=1", headers, BODY, now=NOW)
    with pytest.raises(Rejected):
        verify(b"another-secret-of-enough-length", "POST", "/deploys", headers, BODY, now=NOW)
    moved = {**headers, TIMESTAMP_HEADER: str(int(NOW) + 1)}
    assert "bad signature" in rejected(moved).message
    renamed = {**headers, ID_HEADER: "f" * 32}
    assert "bad signature" in rejected(renamed).message


def test_stale_future_unsigned_and_malformed() -> None:
    stale = sign_headers(SECRET, "POST", "/deploys", BODY, NOW - 301)
    assert "301 s old" in rejected(stale).message
    future = sign_headers(SECRET, "POST", "/deploys", BODY, NOW + 400)
    assert "in the future" in rejected(future).message
    verify(SECRET, "POST", "/deploys", stale, BODY, now=NOW, window=600.0)
    assert "unsigned request" in rejected({}).message
    bad_time = {**sign_headers(SECRET, "POST", "/deploys", BODY, NOW), TIMESTAMP_HEADER: "soon"}
    assert rejected(bad_time).message == "malformed signature headers"


def test_forged_requests_do_not_fill_the_replay_cache() -> None:
    cache = ReplayCache(capacity=2)
    for _ in range(5):
        forged = {
            **sign_headers(SECRET, "POST", "/deploys", BODY, NOW),
            SIGNATURE_HEADER: "v1=" + "0" * 64,
        }
        rejected(forged, replays=cache)
    for _ in range(2):
        verify(SECRET, "POST", "/deploys", sign_headers(SECRET, "POST", "/deploys", BODY, NOW), BODY,
               now=NOW, replays=cache)  # fmt: skip
    full = rejected(sign_headers(SECRET, "POST", "/deploys", BODY, NOW), replays=cache)
    assert full.status == HTTPStatus.TOO_MANY_REQUESTS
    # ids expire after twice the window; then there is room again
    verify(SECRET, "POST", "/deploys", sign_headers(SECRET, "POST", "/deploys", BODY, NOW + 700), BODY,
           now=NOW + 700, replays=cache)  # fmt: skip


def test_signature_is_stable() -> None:
    assert signature(b"k" * 16, "post", "/deploys", "1", "id", b"") == signature(
        b"k" * 16, "POST", "/deploys", "1", "id", b""
    )


def test_secret_must_be_present_and_long_enough() -> None:
    with pytest.raises(ConfigError, match="no webhook secret — set DEPLOYER_WEBHOOK_SECRET"):
        load_secret("  ")
    with pytest.raises(ConfigError, match="shorter than 16 bytes") as caught:
        load_secret("short", "/etc/deployer/webhook.secret")
    assert "/etc/deployer/webhook.secret" in str(caught.value)
    assert load_secret(" " + SECRET.decode() + "\n") == SECRET


@pytest.mark.parametrize("timestamp", ["²", "١٢٣", "12 ", "-1", "1e9", ""])
def test_only_ascii_digits_make_a_timestamp(timestamp: str) -> None:
    headers = {**sign_headers(SECRET, "POST", "/deploys", BODY, NOW), TIMESTAMP_HEADER: timestamp}
    assert rejected(headers).status == HTTPStatus.UNAUTHORIZED  # never a ValueError


def test_request_ids_are_plain_tokens() -> None:
    headers = sign_headers(SECRET, "POST", "/deploys", BODY, NOW)
    assert request_id_of(headers) == headers[ID_HEADER]
    assert request_id_of({ID_HEADER: "x\x1b[2J"}) == "" and request_id_of({}) == ""
    odd = {**headers, ID_HEADER: "a b"}
    assert rejected(odd).message == "malformed signature headers"


def test_answers_are_signed_for_the_request_they_answer() -> None:
    answer = b'{"id": "abc"}\n'
    given = response_signature(SECRET, 202, "req-1", answer)
    assert answer_is_signed(SECRET, 202, "req-1", answer, given)
    assert not answer_is_signed(SECRET, 202, "req-2", answer, given)  # another request's answer
    assert not answer_is_signed(SECRET, 200, "req-1", answer, given)
    assert not answer_is_signed(SECRET, 202, "req-1", answer + b" ", given)
    assert not answer_is_signed(b"another-secret-of-enough-length", 202, "req-1", answer, given)
    assert not answer_is_signed(SECRET, 202, "req-1", answer, None)


def test_stream_lines_are_chained_to_their_request() -> None:
    import json

    signer = StreamSigner(SECRET, "req-1")
    lines = [
        json.loads(signer.line(doc))
        for doc in ({"line": "a"}, {}, {"state": "deployed", "exit_code": 0})
    ]
    good = StreamVerifier(SECRET, "req-1")
    assert all(good.check(line) for line in lines)
    assert not StreamVerifier(SECRET, "req-2").check(lines[0])  # replayed into another request
    skipping = StreamVerifier(SECRET, "req-1")
    assert skipping.check(lines[0]) and not skipping.check(lines[2])  # a line left out
    assert not StreamVerifier(SECRET, "req-1").check({**lines[0], "line": "b"})  # altered
    assert not StreamVerifier(SECRET, "req-1").check(
        {"state": "deployed", "exit_code": 0}
    )  # unsigned
