"""The webhook receiver: signed deploy requests over HTTP(S), deployed on this machine.

``POST /deploys`` takes a signed JSON request (where to fetch the artifact, its sha256, the
deploy path and hooks), answers ``202`` with a deploy id, and queues the deploy: one worker per
path, so deploys to a path never overlap. ``GET /deploys/<id>`` (signed too) returns the log and
the state, or streams them as JSON lines with ``?follow=1``. The deploy itself is the same
``push_target`` that ``deployer push`` runs over SSH, here through a ``LocalExecutor``.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from deployer.errors import ConfigError
from deployer.webhook.deployments import Deployments, DeployRecord, ReceiverSettings
from deployer.webhook.request import parse_request
from deployer.webhook.signing import Rejected, ReplayCache, verify

DEFAULT_PORT = 8700
DEPLOY_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


# ---------------------------------------------------------------------------- the request


# ---------------------------------------------------------------------------- one deploy


# ---------------------------------------------------------------------------- the queue


# ---------------------------------------------------------------------------- HTTP


class Receiver(http.server.ThreadingHTTPServer):
    """The HTTP(S) server: one thread per request, deploys handed to `Deployments`."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        settings: ReceiverSettings,
        log: Callable[[str], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address_family = (
            socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        )  # an IPv6 literal needs an IPv6 socket
        super().__init__(address, _Handler)
        if tls is not None:
            # the handshake happens in the request's thread (see _Handler.setup), not in accept
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.settings = settings
        self.log = log
        self.tls = tls is not None
        self.replays = ReplayCache(settings.window)
        self.deployments = Deployments(settings, log)
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        """Where clients reach this server."""
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"


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
    timeout = 30  # seconds a client may take to send its request
    server_version = "deployer"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                self.server.log(f"TLS handshake with {self.client_address[0]} failed: {exc}")
                self.close_connection = True
                raise ConnectionAbortedError from exc

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, ssl.SSLError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.client_address[0]} {format % args}")

    def _headers(self) -> Mapping[str, str]:
        return {k: v for k, v in self.headers.items()}

    def _json(self, status: HTTPStatus, document: Mapping[str, Any]) -> None:
        body = (json.dumps(document, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, rejected: Rejected) -> None:
        self.server.log(
            f"refused {self.command} {self.path} from {self.client_address[0]}: {rejected}"
        )
        self.close_connection = True
        self._json(rejected.status, {"error": rejected.message})

    def do_POST(self) -> None:
        try:
            if urllib.parse.urlsplit(self.path).path != "/deploys":
                raise Rejected(HTTPStatus.NOT_FOUND, "POST deploy requests to /deploys")
            body = self._body()
            verify(
                self.server.settings.secret, "POST", self.path, self._headers(), body,
                now=time.time(), window=self.server.settings.window, replays=self.server.replays,
            )  # fmt: skip
            request = parse_request(body, self.server.settings.paths)
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
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None:
            raise Rejected(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        if not length.isdigit():
            raise Rejected(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
        limit = self.server.settings.max_body
        if int(length) > limit:
            # not read: the connection is closed after the answer
            raise Rejected(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the request body is {length} bytes; the limit is {limit}",
            )
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            raise Rejected(HTTPStatus.BAD_REQUEST, "the body ended before Content-Length bytes")
        return body

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/healthz":
            self._json(HTTPStatus.OK, {"ok": True})
            return
        try:
            deploy_id = parts.path.removeprefix("/deploys/")
            if deploy_id == parts.path or not DEPLOY_ID.match(deploy_id):
                raise Rejected(HTTPStatus.NOT_FOUND, "GET /deploys/<id> (the id POST answered)")
            verify(
                self.server.settings.secret, "GET", self.path, self._headers(), b"",
                now=time.time(), window=self.server.settings.window,
            )  # fmt: skip
            record = self.server.deployments.get(deploy_id)
            if record is None:
                raise Rejected(HTTPStatus.NOT_FOUND, f"no deploy {deploy_id} on this receiver")
            query = urllib.parse.parse_qs(parts.query)
            start = int(query.get("from", ["0"])[0])
        except ValueError:
            self._refuse(Rejected(HTTPStatus.BAD_REQUEST, "'from' must be a line number"))
            return
        except Rejected as rejected:
            self._refuse(rejected)
            return
        if query.get("follow", ["0"])[0] not in ("1", "true", "yes"):
            self._json(HTTPStatus.OK, {**record.summary(), "log": record.lines})
            return
        self._stream(record, start)

    def _stream(self, record: DeployRecord, start: int) -> None:
        """JSON lines: {"line": ...} as the deploy goes, then the summary; close-delimited."""
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        follow = record.follow(start, self.server.stopping, self.server.settings.follow_seconds)
        for line in follow:
            self.wfile.write((json.dumps({} if line is None else {"line": line}) + "\n").encode())
            self.wfile.flush()
        self.wfile.write((json.dumps(record.summary(), sort_keys=True) + "\n").encode())


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
