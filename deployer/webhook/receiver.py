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
import queue
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO, cast

from deployer.artifact.scan import open_artifact
from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Outcome, Provenance
from deployer.deploy.payload import prepare_payload
from deployer.deploy.settings import PushSettings
from deployer.deploy.target import push_target
from deployer.deploy.upload import TransferSettings
from deployer.errors import ConfigError, DeployerError
from deployer.output import Reporter, human_size
from deployer.remote.layout import validate_shared
from deployer.remote.local import LocalExecutor
from deployer.webhook.signing import DEFAULT_WINDOW, Rejected, ReplayCache, verify
from deployer.webhook.sources import FetchSettings, Source, fetch, parse_source

DEFAULT_PORT = 8700
MAX_BODY = 64 << 10  # a deploy request is a few hundred bytes of JSON
MAX_LOG_LINES = 20_000  # per deploy; older lines are dropped (and counted) beyond that
DEPLOY_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
FINAL_STATES = ("deployed", "failed")
HEARTBEAT_SECONDS = 15.0


# ---------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class DeployRequest:
    """What a signed request asks for: the same settings as a push, plus where the artifact is."""

    path: str
    source: Source
    sha256: str
    settings: PushSettings
    provenance: Provenance

    def to_document(self) -> dict[str, Any]:
        """The JSON body the pipeline side signs and sends."""
        hooks = self.settings.hooks
        return {
            "path": self.path,
            "sha256": self.sha256,
            "source": self.source.document(),
            "keep": self.settings.keep,
            "shared": list(self.settings.shared),
            "hooks": {
                "before": list(hooks.before),
                "after": list(hooks.after),
                "healthcheck": hooks.healthcheck,
                "timeout": hooks.timeout,
                "healthcheck_retries": hooks.healthcheck_retries,
                "healthcheck_interval": hooks.healthcheck_interval,
            },
            "transfer": {
                "delta": self.settings.transfer.delta,
                "hardlink": self.settings.transfer.hardlink,
            },
            "provenance": asdict(self.provenance),
        }


def _bad(message: str) -> Rejected:
    return Rejected(HTTPStatus.BAD_REQUEST, message)


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"'{name}' must be a list of strings")
    return tuple(value)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{name}' must be a number")
    return float(value)


def parse_request(body: bytes, paths: tuple[str, ...]) -> DeployRequest:
    """Validate a request body against the paths this receiver serves; raise Rejected."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object")
    path = data.get("path") or (paths[0] if len(paths) == 1 else "")
    if not isinstance(path, str) or not path:
        raise _bad("'path' is missing and this receiver serves several paths")
    path = path.rstrip("/") or "/"
    if path not in paths:
        raise Rejected(
            HTTPStatus.FORBIDDEN,
            f"this receiver does not deploy to {path} — it serves {', '.join(paths)}"
            " (add --path to `deployer serve`, or fix --path in CI)",
        )
    sha256 = data.get("sha256")
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        raise _bad("'sha256' must be the artifact's sha256 as 64 lowercase hex digits")
    try:
        source = parse_source(data.get("source"))
    except ValueError as exc:
        raise _bad(str(exc)) from None
    hooks = data.get("hooks", {})
    transfer = data.get("transfer", {})
    origin = data.get("provenance", {})
    if not all(isinstance(v, dict) for v in (hooks, transfer, origin)):
        raise _bad("'hooks', 'transfer' and 'provenance' must be objects")
    keep = data.get("keep", 5)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise _bad("'keep' must be a positive integer")
    healthcheck = hooks.get("healthcheck")
    if healthcheck is not None and not isinstance(healthcheck, str):
        raise _bad("'hooks.healthcheck' must be a string or null")
    retries = hooks.get("healthcheck_retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise _bad("'hooks.healthcheck_retries' must be an integer")
    if not all(isinstance(origin.get(k, ""), str) for k in ("by", "commit", "ref", "pipeline")):
        raise _bad("'provenance' values must be strings")
    try:
        settings = PushSettings(
            path=path,
            keep=keep,
            shared=validate_shared(_strings(data.get("shared", []), "shared")),
            hooks=HookSettings(
                before=_strings(hooks.get("before", []), "hooks.before"),
                after=_strings(hooks.get("after", []), "hooks.after"),
                healthcheck=healthcheck or None,
                timeout=_number(hooks.get("timeout", 300), "hooks.timeout"),
                healthcheck_retries=retries,
                healthcheck_interval=_number(
                    hooks.get("healthcheck_interval", 3), "hooks.healthcheck_interval"
                ),
            ),
            transfer=TransferSettings(
                delta=bool(transfer.get("delta", True)), hardlink=bool(transfer.get("hardlink"))
            ),
        )
    except ConfigError as exc:
        raise _bad(str(exc)) from None
    provenance = Provenance(
        by=origin.get("by", "") or "webhook",
        commit=origin.get("commit", ""),
        ref=origin.get("ref", ""),
        pipeline=origin.get("pipeline", ""),
    )
    return DeployRequest(path, source, sha256, settings, provenance)


# ---------------------------------------------------------------------------- one deploy


def deploy_from_source(
    source: Source,
    sha256: str | None,
    settings: PushSettings,
    provenance: Provenance,
    fetching: FetchSettings,
    reporter: Reporter,
    label: str,
) -> Outcome:
    """Fetch, verify and validate the artifact, then deploy it here exactly as a push would."""
    with tempfile.TemporaryDirectory(prefix="deployer-artifact-") as folder:
        reporter.target(label, f"fetching {source.describe()}")
        started = time.monotonic()
        file = fetch(source, fetching, Path(folder), sha256)
        reporter.target(
            label,
            f"fetched {human_size(file.stat().st_size)} in {time.monotonic() - started:.1f} s"
            + ("; sha256 matches the signed request" if sha256 else ""),
        )
        payload = prepare_payload(open_artifact(file))  # refuses unsafe archives, extracts nothing
        return push_target(LocalExecutor(label), payload, settings, provenance, reporter)


class DeployRecord:
    """One deploy's state and log, written by its worker and read (or followed) over HTTP."""

    def __init__(self, request: DeployRequest, echo: Callable[[str], None]) -> None:
        self.id = secrets.token_urlsafe(18)
        self.request = request
        self.state = "queued"
        self.exit_code: int | None = None
        self.error = ""
        self.outcome: dict[str, Any] = {}
        self._echo = echo
        self._lines: list[str] = []
        self._dropped = 0
        self._pending = ""
        self._changed = threading.Condition()

    # Reporter writes here (a file-like object); lines are kept without the Reporter's timestamp,
    # the reader adds its own
    def write(self, text: str) -> int:
        """Append text; complete lines become log lines."""
        with self._changed:
            self._pending += text
            *complete, self._pending = self._pending.split("\n")
            for line in complete:
                line = _STAMP.sub("", line, count=1)
                self._lines.append(line)
                self._echo(f"[{self.id}] {line}")
            if len(self._lines) > MAX_LOG_LINES:
                excess = len(self._lines) - MAX_LOG_LINES
                del self._lines[:excess]
                self._dropped += excess
            self._changed.notify_all()
        return len(text)

    def flush(self) -> None:
        """Nothing buffered beyond partial lines."""

    def set_state(self, state: str, error: DeployerError | None = None) -> None:
        """Move to running, deployed or failed (with the error that failed it)."""
        with self._changed:
            self.state = state
            if state in FINAL_STATES:
                self.exit_code = int(error.exit_code) if error else 0
                self.error = str(error) if error else ""
            self._changed.notify_all()

    def summary(self) -> dict[str, Any]:
        """The state without the log."""
        return {
            "id": self.id,
            "path": self.request.path,
            "state": self.state,
            "exit_code": self.exit_code,
            "error": self.error or None,
            "outcome": self.outcome,
        }

    def follow(self, start: int, stopping: threading.Event, wait: float) -> Iterator[str | None]:
        """Yield log lines from number `start` on as they come, until the deploy is finished;
        None now and then while nothing happens (a heartbeat that keeps proxies and clients patient)."""
        position = start
        deadline = time.monotonic() + wait
        quiet_since = time.monotonic()
        while True:
            with self._changed:
                if position < self._dropped:
                    yield f"({self._dropped - position} earlier log lines were dropped)"
                    position = self._dropped
                fresh = self._lines[position - self._dropped :]
                finished = self.state in FINAL_STATES
                if not fresh and not finished:
                    self._changed.wait(timeout=1.0)
                    fresh = self._lines[position - self._dropped :]
                    finished = self.state in FINAL_STATES
            yield from fresh
            position += len(fresh)
            if fresh:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > HEARTBEAT_SECONDS:
                quiet_since = time.monotonic()
                yield None
            if (finished and not fresh) or stopping.is_set() or time.monotonic() > deadline:
                return

    @property
    def lines(self) -> list[str]:
        """A copy of the kept log lines."""
        with self._changed:
            return list(self._lines)


# ---------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class ReceiverSettings:
    """Everything `deployer serve` needs except where it listens."""

    secret: bytes = field(repr=False)
    paths: tuple[str, ...]
    fetching: FetchSettings = field(default_factory=FetchSettings)
    window: float = DEFAULT_WINDOW
    max_body: int = MAX_BODY
    queue_size: int = 10  # deploys waiting per path beyond the running one
    keep_finished: int = 200  # finished deploys still answered on GET
    follow_seconds: float = 3600.0  # longest a GET ?follow=1 stays open
    label: str = field(default_factory=socket.gethostname)


class Deployments:
    """The status store and one worker thread per path, so deploys to a path run one at a time."""

    def __init__(self, settings: ReceiverSettings, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.log = log
        self.records: OrderedDict[str, DeployRecord] = OrderedDict()
        self.queues: dict[str, queue.Queue[DeployRecord | None]] = {}
        self.workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, request: DeployRequest) -> tuple[DeployRecord, int]:
        """Queue a deploy; return its record and how many deploys run or wait before it."""
        record = DeployRecord(request, self.log)
        with self._lock:
            waiting = self.queues.get(request.path)
            if waiting is None:
                waiting = self.queues[request.path] = queue.Queue(self.settings.queue_size)
                worker = threading.Thread(
                    target=self._work, args=(waiting,), name=f"deploy {request.path}", daemon=True
                )
                self.workers.append(worker)
                worker.start()
            ahead = sum(
                1 for r in self.records.values() if r.request.path == request.path
                and r.state in ("queued", "running")
            )  # fmt: skip
            try:
                waiting.put_nowait(record)
            except queue.Full:
                raise Rejected(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"{self.settings.queue_size} deploys to {request.path} are already waiting — retry later",
                ) from None
            self.records[record.id] = record
            self._forget_old()
        record.write(
            f"queued deploy {record.id} of {request.source.describe()} to {request.path}"
            + (f" ({ahead} ahead of it)" if ahead else "")
            + "\n"
        )
        return record, ahead

    def get(self, deploy_id: str) -> DeployRecord | None:
        """A deploy by id (None once forgotten or never known)."""
        with self._lock:
            return self.records.get(deploy_id)

    def _forget_old(self) -> None:
        finished = [k for k, r in self.records.items() if r.state in FINAL_STATES]
        for key in finished[: max(0, len(finished) - self.settings.keep_finished)]:
            del self.records[key]

    def _work(self, waiting: queue.Queue[DeployRecord | None]) -> None:
        while (record := waiting.get()) is not None:
            self.run(record)

    def run(self, record: DeployRecord) -> None:
        """Deploy one request, recording every line and the final state; never raises."""
        record.set_state("running")
        reporter = Reporter(cast(TextIO, record), tty=False)
        request = record.request
        try:
            outcome = deploy_from_source(
                request.source, request.sha256, request.settings, request.provenance,
                self.settings.fetching, reporter, self.settings.label,
            )  # fmt: skip
        except DeployerError as exc:
            reporter.line(f"deploy failed: {exc}")
            record.set_state("failed", exc)
        except Exception as exc:  # a bug: keep serving, say so, keep the stack in the server log
            self.log(traceback.format_exc())
            error = DeployerError(f"internal error in the receiver ({type(exc).__name__}: {exc})")
            reporter.line(f"deploy failed: {error}")
            record.set_state("failed", error)
        else:
            record.outcome = asdict(outcome)
            record.set_state("deployed")

    def stop(self, reason: str) -> None:
        """Fail what is still queued, let running deploys finish, and end the workers."""
        with self._lock:
            queues = list(self.queues.values())
        for waiting in queues:
            while True:
                try:
                    record = waiting.get_nowait()
                except queue.Empty:
                    break
                if record is not None:
                    record.write(f"not started: {reason}\n")
                    record.set_state("failed", DeployerError(f"not started: {reason}"))
            waiting.put(None)
        for worker in self.workers:
            worker.join()


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
