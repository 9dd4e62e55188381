"""The receiver under hostile traffic, and the pipeline side against a receiver that lies.

Everything is sent for real over loopback sockets to a real receiver: idle and trickling
connections, odd headers, control characters, captured and replayed requests, and answers that
were never signed by the receiver.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import ConfigError, ExitCode
from deployer.webhook.client import WebhookClient
from deployer.webhook.deployments import ReceiverSettings
from deployer.webhook.limits import Limits
from deployer.webhook.receiver import Receiver
from deployer.webhook.signing import sign_headers
from deployer.webhook.sources import FetchSettings
from tests.integration.webhook_kit import SECRET, request, running_receiver, serving, tarball

pytestmark = pytest.mark.integration

DEPLOY_ID = "A" * 24


def address(receiver: Receiver) -> tuple[str, int]:
    return str(receiver.server_address[0]), int(receiver.server_address[1])


def connect(receiver: Receiver, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(address(receiver), timeout=10, source_address=(source, 0))
    sock.settimeout(10)
    return sock


def answer_of(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded in time)."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0


def healthy(receiver: Receiver) -> bool:
    status, answer = request(receiver, "GET", "/healthz", sign=False)
    return status == 200 and answer == {"ok": True}


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "srv" / "app"


# ---------------------------------------------------------------------------- connections


def test_connections_beyond_the_bound_get_503_and_the_rest_still_work(target: Path) -> None:
    limits = Limits(connections=4, per_client=100, request_seconds=30)
    with running_receiver((str(target),), FetchSettings(), limits=limits) as receiver:
        idle = [connect(receiver) for _ in range(4)]  # connected, sending nothing
        try:
            time.sleep(0.3)
            extra = connect(receiver)
            started = time.monotonic()
            raw = answer_of(extra)
            assert status_of(raw) == 503 and b"busy (4 connections open)" in raw, raw
            assert time.monotonic() - started < 3  # at once, not after the idle ones time out
            extra.close()
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while not healthy(receiver):  # the idle ones are gone: there is room again
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert any("turned away 1 connection(s)" in line for line in receiver.log_lines)  # type: ignore[attr-defined]


def test_one_client_cannot_take_every_connection(target: Path) -> None:
    limits = Limits(connections=100, per_client=3, request_seconds=30)
    with running_receiver((str(target),), FetchSettings(), limits=limits) as receiver:
        hogging = [connect(receiver, "127.0.0.1") for _ in range(3)]
        try:
            time.sleep(0.3)
            more = connect(receiver, "127.0.0.1")
            raw = answer_of(more)
            assert status_of(raw) == 429 and b"too many connections from 127.0.0.1" in raw, raw
            more.close()
            other = connect(receiver, "127.0.0.2")  # another client is still served
            other.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert status_of(answer_of(other)) == 200
            other.close()
        finally:
            for sock in hogging:
                sock.close()


def test_a_trickling_client_is_cut_off_at_the_request_deadline(target: Path) -> None:
    """A byte now and then keeps every single read alive; the deadline is for the whole request."""
    limits = Limits(request_seconds=2)
    with running_receiver((str(target),), FetchSettings(), limits=limits) as receiver:
        sock = connect(receiver)
        sock.sendall(b"POST /deploys HTTP/1.1\r\nX-Slow: ")
        started = time.monotonic()
        closed_after = None
        while closed_after is None and time.monotonic() - started < 8:
            sock.settimeout(0.5)
            try:
                sock.sendall(b"a")  # one more byte of the header, every half second
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
            except TimeoutError:
                continue
            except OSError:  # reset: the server closed it
                closed_after = time.monotonic() - started
        sock.close()
        assert closed_after is not None and closed_after < 4, closed_after
        assert any("the request was not complete within 2 s" in line for line in receiver.log_lines)  # type: ignore[attr-defined]
        assert healthy(receiver)


# ---------------------------------------------------------------------------- what clients send


def test_odd_headers_get_a_clear_answer_and_never_a_traceback(
    target: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    body = b"{}"
    with running_receiver((str(target),), FetchSettings()) as receiver:
        for length, status in (
            ("²", 400),
            ("1_0", 400),
            (" 2", 200),
            ("99999999999999999999", 400),
        ):
            sock = connect(receiver)
            sock.sendall(
                # latin-1: the byte 0xb2 is what the server decodes as '²' ('²'.isdigit() is true)
                f"POST /deploys HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode("latin-1")
                + body
            )
            raw = answer_of(sock)
            sock.close()
            if status == 400:
                assert status_of(raw) == 400 and b"Content-Length is not one number" in raw, (
                    length,
                    raw,
                )
            else:
                assert status_of(raw) == 401, raw  # a number: read, then the signature is checked
        sock = connect(receiver)
        sock.sendall(b"POST /deploys HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}")
        assert status_of(answer_of(sock)) == 400
        sock.close()
        headers = {
            **sign_headers(SECRET, "POST", "/deploys", body, time.time()),
            "X-Deployer-Timestamp": "²",
        }
        status, answer = request(receiver, "POST", "/deploys", body, headers=headers)
        assert status == 401 and answer["error"] == "malformed signature headers"
        assert healthy(receiver)
        log = "\n".join(receiver.log_lines)  # type: ignore[attr-defined]
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out + log


def test_client_text_reaches_the_log_escaped(target: Path) -> None:
    with running_receiver((str(target),), FetchSettings()) as receiver:
        sock = connect(receiver)
        sock.sendall(b"GET /deploys/\x1b]0;owned\x07\x1b[2J HTTP/1.0\r\n\r\n")
        assert status_of(answer_of(sock)) == 404
        sock.close()
        log = list(receiver.log_lines)  # type: ignore[attr-defined]
    assert log and not any(ch in line for line in log for ch in "\x1b\x07\r\n")
    assert any("/deploys/\\x1b]0;owned\\x07\\x1b[2J" in line for line in log), log


# ---------------------------------------------------------------------------- replays


def test_a_captured_request_is_refused_after_a_restart(target: Path, tmp_path: Path) -> None:
    replay_file = tmp_path / "state" / "webhook-requests"
    body = json.dumps({"path": str(target), "sha256": "0" * 64, "source": {"type": "https",
                       "url": "https://127.0.0.1:9/app.tar.gz"}}).encode()  # fmt: skip
    captured = sign_headers(SECRET, "POST", "/deploys", body, time.time())
    status_get = f"/deploys/{DEPLOY_ID}"
    captured_get = sign_headers(SECRET, "GET", status_get, b"", time.time())
    with running_receiver((str(target),), FetchSettings(), replay_file=replay_file) as first:
        status, _ = request(first, "POST", "/deploys", body, headers=captured)
        assert status == 202
        status, _ = request(first, "GET", status_get, headers=captured_get)
        assert status == 404  # no such deploy, but the signed request was taken
        status, answer = request(first, "GET", status_get, headers=captured_get)
        assert status == 409 and "replayed" in answer["error"]  # signed GETs are replay-checked too
    assert (replay_file.stat().st_mode & 0o777) == 0o600
    with running_receiver((str(target),), FetchSettings(), replay_file=replay_file) as second:
        status, answer = request(second, "POST", "/deploys", body, headers=captured)
        assert status == 409 and "replayed" in answer["error"]
        assert not second.deployments.records  # nothing queued
        status, _ = request(second, "GET", status_get, headers=captured_get)
        assert status == 409


def test_the_replay_record_is_never_written_through_a_symlink(target: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "webhook-requests").symlink_to(victim)
    replay_file = state / "webhook-requests"
    with pytest.raises(ConfigError, match="cannot keep the webhook replay record"):
        Receiver(
            ("127.0.0.1", 0),
            ReceiverSettings(SECRET, (str(target),), replay_file=replay_file),
            print,
        )
    assert victim.read_text() == "precious\n"


# ---------------------------------------------------------------------------- answers that lie


class _Forger(http.server.BaseHTTPRequestHandler):
    """Says "deployed" to everything, as something between CI and the receiver could."""

    stream: bytes = b""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send(
            202, json.dumps({"id": DEPLOY_ID, "status_url": f"/deploys/{DEPLOY_ID}"}).encode()
        )

    def do_GET(self) -> None:
        outcome = {"target": "receiver", "status": "deployed", "release": "20261130T000000Z"}
        final = {"state": "deployed", "exit_code": 0, "error": None, "outcome": outcome}
        self._send(200, self.stream or (json.dumps(final) + "\n").encode(), "application/x-ndjson")


def forger(stream: bytes = b"") -> contextlib.AbstractContextManager[str]:
    """A loopback server answering like _Forger (its follow stream: stream, when given)."""
    handler = type("Forger", (_Forger,), {"stream": stream})
    return serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))


def test_an_unsigned_deployed_does_not_pass_the_job(deployer, tmp_path: Path) -> None:
    artifact = tarball(tmp_path, "app.tar.gz", {"VERSION": "v1\n"})
    with forger() as url:
        run = deployer(["push", str(artifact), "--mode", "webhook", "--webhook-url", url, "--path", "/srv/app",
                        "--artifact-url", "https://example.com/app.tar.gz"],
                       env={"DEPLOYER_WEBHOOK_SECRET": SECRET.decode(), "CI": "true"})  # fmt: skip
    assert run.status == ExitCode.WEBHOOK, run.output
    errors = [line for line in run.stderr.splitlines() if line.startswith("deployer: error: ")]
    assert (
        len(errors) == 1
        and "is not signed with DEPLOYER_WEBHOOK_SECRET for this request" in errors[0]
    )
    assert "Traceback" not in run.stderr


def test_a_status_stream_replayed_from_another_request_is_refused(target: Path) -> None:
    """Signed lines captured from one follow, served to another: the chain names the request."""
    with running_receiver((str(target),), FetchSettings()) as receiver:
        body = json.dumps({"path": str(target), "sha256": "0" * 64, "source": {"type": "https",
                           "url": "https://127.0.0.1:9/app.tar.gz"}}).encode()  # fmt: skip
        status, answer = request(receiver, "POST", "/deploys", body)
        assert status == 202
        path = f"/deploys/{answer['id']}?follow=1&from=0"
        host, port = address(receiver)
        sock = socket.create_connection((host, port), timeout=30)
        headers = sign_headers(SECRET, "GET", path, b"", time.time())
        sock.sendall((f"GET {path} HTTP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                      + "\r\n").encode())  # fmt: skip
        recorded = answer_of(sock, 60).split(b"\r\n\r\n", 1)[1]
        sock.close()
    assert b'"state": "failed"' in recorded and b'"mac": "v1=' in recorded  # genuinely signed
    with forger(recorded) as url:
        client = WebhookClient(url, SECRET)
        with pytest.raises(
            Exception, match="is not signed with DEPLOYER_WEBHOOK_SECRET for this request"
        ):
            client.follow(answer["id"], lambda line: None, time.monotonic() + 30)


def test_plain_http_goes_to_this_machine_only_unless_asked() -> None:
    for url in (
        "http://127.0.0.1:8700",
        "http://localhost:8700",
        "http://[::1]:8700",
        "https://app:8700",
    ):
        WebhookClient(url, SECRET)
    with pytest.raises(ConfigError, match="plain http:// only goes to this machine"):
        WebhookClient("http://app.example.com:8700", SECRET)
    with pytest.raises(ConfigError, match="--webhook-allow-http"):
        WebhookClient("http://10.0.0.7:8700", SECRET)
    WebhookClient("http://app.example.com:8700", SECRET, allow_http=True)
