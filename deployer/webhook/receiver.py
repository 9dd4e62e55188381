"""The webhook receiver: signed deploy requests over HTTP(S), deployed on this machine.

``POST /deploys`` takes a signed JSON request (where to fetch the artifact, its sha256, the
deploy path), answers ``202`` with a deploy id, and queues the deploy: one worker per path, so
deploys to a path never overlap. ``GET /deploys/<id>`` (signed too) returns the log and the
state, or streams them as JSON lines with ``?follow=1``. Every answer is signed for the request
it answers (``webhook.signing``). The deploy itself is the same ``push_target`` that ``deployer
push`` runs over SSH, here through a ``LocalExecutor``, with the hooks configured on the receiver.

Before a signature is checked anyone may connect, so connections are bounded in number, per
client and in time (``webhook.limits``), client text reaches the log escaped, and nothing a
client sends ends in a traceback.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from deployer.errors import ConfigError
from deployer.webhook.deployments import Deployments, DeployRecord, ReceiverSettings
from deployer.webhook.limits import ConnectionLimiter, printable
from deployer.webhook.replay import open_replay_cache
from deployer.webhook.request import parse_request, with_receiver_hooks
from deployer.webhook.signing import (
    RESPONSE_SIGNATURE_HEADER,
    Rejected,
    StreamSigner,
    request_id_of,
    response_signature,
    verify,
)

DEFAULT_PORT = 8700
DEPLOY_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_NUMBER = re.compile(r"[0-9]{1,12}")  # ASCII digits: a Content-Length of '²' is no number


class Receiver(http.server.ThreadingHTTPServer):
    """The HTTP(S) server: one thread per admitted connection, deploys handed to `Deployments`."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        settings: ReceiverSettings,
        log: Callable[[str], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        # before listening: a receiver that cannot keep its replay record does not start
        if settings.replay_file is None:
            raise ConfigError("the receiver needs a replay file (--replay-file)")
        self.replays, self._journal = open_replay_cache(
            settings.replay_file, settings.window, time.time()
        )
        self.address_family = (
            socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        )  # an IPv6 literal needs an IPv6 socket
        self.request_queue_size = settings.limits.connections
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._journal.close()
            raise
        if tls is not None:
            # the handshake happens in the request's thread (see _Handler.setup), not in accept
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.settings = settings
        self.log = log
        self.tls = tls is not None
        self.limiter = ConnectionLimiter(settings.limits)
        self.deployments = Deployments(settings, log)
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        """Where clients reach this server."""
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        """Admit the connection within the limits, or answer 503/429 and close it at once."""
        client = str(client_address[0])
        refusal = self.limiter.acquire(client)
        if refusal is not None:
            self._turn_away(request, *refusal)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.limiter.release(client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection in its thread; it no longer counts once it is closed."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.limiter.release(str(client_address[0]))

    def _turn_away(self, request: socket.socket, status: HTTPStatus, reason: str) -> None:
        if not self.tls:  # over TLS there is no answer without a handshake: just close
            body = (json.dumps({"error": reason}) + "\n").encode()
            head = (
                f"HTTP/1.0 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                request.setblocking(False)  # the accept loop never waits for a client
                request.send(head.encode() + body)
        self.shutdown_request(request)
        count = self.limiter.turned_away()
        if count:
            self.log(f"turned away {count} connection(s) over the limits: {reason}")

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            return  # the client went away or broke TLS: said in _Handler.setup if worth saying
        self.log(
            f"internal error while serving {client_address[0]}:"
            f" {printable(f'{type(exc).__name__}: {exc}')} — please report it"
        )

    def server_close(self) -> None:
        """Stop listening and close the replay record."""
        super().server_close()
        self._journal.close()


def tls_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """A server TLS context from a certificate (chain) and its key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {cert}: {exc} — pass a PEM certificate and --tls-key"
        ) from exc
    return context


def exposure_warning(host: str, tls: bool) -> str | None:
    """A warning when plain HTTP listens beyond loopback (logs and requests readable on the way)."""
    if tls:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"WARNING: listening on {host} without TLS: deploy requests and logs cross the network in"
        " clear text (signatures still stop forgeries) — pass --tls-cert and --tls-key, or listen"
        " on 127.0.0.1 behind a TLS proxy or tunnel"
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver
    timeout = 30  # each read and write; the request head and body also share one deadline
    server_version = "deployer"
    sys_version = ""

    def setup(self) -> None:
        self._expired = False
        self._deadline = threading.Timer(self.server.settings.limits.request_seconds, self._expire)
        self._deadline.daemon = True
        self._deadline.start()
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                self._deadline.cancel()
                if not self._expired:
                    self.server.log(
                        f"TLS handshake with {self.client_address[0]} failed: {printable(str(exc))}"
                    )
                self.close_connection = True
                raise ConnectionAbortedError from exc

    def _expire(self) -> None:
        """The request head and body did not arrive in time: close the connection."""
        self._expired = True
        self.server.log(
            f"closed the connection from {self.client_address[0]}: the request was not complete"
            f" within {self.server.settings.limits.request_seconds:g} s"
        )
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._deadline.cancel()
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, ssl.SSLError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        if not self._expired:
            self.server.log(printable(f"{self.client_address[0]} {format % args}", 500))

    def _headers(self) -> Mapping[str, str]:
        return {k: v for k, v in self.headers.items()}

    def _json(self, status: HTTPStatus, document: Mapping[str, Any]) -> None:
        body = (json.dumps(document, sort_keys=True) + "\n").encode()
        signed = response_signature(
            self.server.settings.secret, int(status), request_id_of(self._headers()), body
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header(RESPONSE_SIGNATURE_HEADER, signed)
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, rejected: Rejected) -> None:
        self.close_connection = True
        if self._expired:
            return  # the connection is gone, and _expire said why
        self.server.log(
            printable(
                f"refused {self.command} {self.path} from {self.client_address[0]}: {rejected}", 500
            )
        )
        self._json(rejected.status, {"error": rejected.message})

    def do_POST(self) -> None:
        try:
            if urllib.parse.urlsplit(self.path).path != "/deploys":
                raise Rejected(HTTPStatus.NOT_FOUND, "POST deploy requests to /deploys")
            body = self._body()
            self._deadline.cancel()  # the whole request is in
            settings = self.server.settings
            verify(
                settings.secret, "POST", self.path, self._headers(), body,
                now=time.time(), window=settings.window, replays=self.server.replays,
            )  # fmt: skip
            request = parse_request(body, settings.paths)
            request = with_receiver_hooks(
                request, settings.hooks_for(request.path), settings.allow_request_hooks,
                settings.allow_env,
            )  # fmt: skip
            record, ahead = self.server.deployments.submit(request)
        except Rejected as rejected:
            self._refuse(rejected)
            return
        self._json(
            HTTPStatus.ACCEPTED,
            {
                "id": record.id,
                "status_url": f"/deploys/{record.id}",
                "state": record.state,
                "ahead": ahead,
            },
        )

    def _body(self) -> bytes:
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") or not lengths:
            raise Rejected(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        if len(lengths) > 1 or not _NUMBER.fullmatch(lengths[0].strip()):
            raise Rejected(HTTPStatus.BAD_REQUEST, "Content-Length is not one number")
        length, limit = int(lengths[0]), self.server.settings.max_body
        if length > limit:
            # not read: the connection is closed after the answer
            raise Rejected(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the request body is {length} bytes; the limit is {limit}",
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise Rejected(HTTPStatus.BAD_REQUEST, "the body ended before Content-Length bytes")
        return body

    def do_GET(self) -> None:
        self._deadline.cancel()  # a GET has no body: the whole request is in
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/healthz":
            self._json(HTTPStatus.OK, {"ok": True})
            return
        try:
            deploy_id = parts.path.removeprefix("/deploys/")
            if deploy_id == parts.path or not DEPLOY_ID.match(deploy_id):
                raise Rejected(HTTPStatus.NOT_FOUND, "GET /deploys/<id> (the id POST answered)")
            settings = self.server.settings
            verify(
                settings.secret, "GET", self.path, self._headers(), b"",
                now=time.time(), window=settings.window, replays=self.server.replays,
            )  # fmt: skip
            record = self.server.deployments.get(deploy_id)
            if record is None:
                raise Rejected(HTTPStatus.NOT_FOUND, f"no deploy {deploy_id} on this receiver")
            query = urllib.parse.parse_qs(parts.query)
            start = query.get("from", ["0"])[0]
            if not _NUMBER.fullmatch(start):
                raise Rejected(HTTPStatus.BAD_REQUEST, "'from' must be a line number")
        except Rejected as rejected:
            self._refuse(rejected)
            return
        if query.get("follow", ["0"])[0] not in ("1", "true", "yes"):
            self._json(HTTPStatus.OK, {**record.summary(), "log": record.lines})
            return
        self._stream(record, int(start))

    def _stream(self, record: DeployRecord, start: int) -> None:
        """JSON lines: {"line": ...} as the deploy goes, then the summary; close-delimited.

        Each line is signed for this request and chained to the line before (webhook.signing)."""
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        signer = StreamSigner(self.server.settings.secret, request_id_of(self._headers()))
        follow = record.follow(start, self.server.stopping, self.server.settings.follow_seconds)
        for line in follow:
            self.wfile.write(signer.line({} if line is None else {"line": line}))
            self.wfile.flush()
        self.wfile.write(signer.line(record.summary()))


def serve(
    host: str,
    port: int,
    settings: ReceiverSettings,
    log: Callable[[str], None],
    tls: ssl.SSLContext | None = None,
) -> None:
    """Run the receiver until KeyboardInterrupt (SIGTERM); then finish the running deploys."""
    try:
        server = Receiver((host, port), settings, log, tls)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} — pick a free port or address"
        ) from exc
    thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
    try:  # SIGTERM may arrive at any point from here on: always clean up
        warning = exposure_warning(host, tls is not None)
        if warning:
            log(warning)
        thread.start()
        log(f"receiving deploys for {', '.join(settings.paths)} on {server.url}")
        while thread.is_alive():
            thread.join(timeout=1.0)
    finally:
        server.stopping.set()
        if thread.ident is not None:
            server.shutdown()
        server.server_close()
        log("stopping: running deploys finish, queued ones are cancelled")
        server.deployments.stop("the receiver is shutting down")
        log("stopped")
