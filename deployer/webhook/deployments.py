"""The receiver's deploys: one queue and worker per path, each deploy's state and log."""

from __future__ import annotations

import getpass
import queue
import re
import secrets
import socket
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, TextIO, cast

from deployer.artifact.scan import open_artifact
from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Outcome, Provenance
from deployer.deploy.payload import prepare_payload
from deployer.deploy.plan import describe_excluded
from deployer.deploy.settings import PushSettings
from deployer.deploy.target import push_target
from deployer.errors import DeployerError
from deployer.output import Masker, Reporter, human_size
from deployer.remote.local import LocalExecutor
from deployer.webhook.limits import Limits
from deployer.webhook.request import MAX_BODY, DeployRequest
from deployer.webhook.signing import DEFAULT_WINDOW, Rejected
from deployer.webhook.sources import FetchSettings, Source, fetch

MAX_LOG_LINES = 20_000  # per deploy; older lines are dropped (and counted) beyond that


_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


RecordState = Literal["queued", "running", "deployed", "failed"]
FINAL_STATES: tuple[RecordState, ...] = ("deployed", "failed")


HEARTBEAT_SECONDS = 15.0


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
        # refuses unsafe archives, extracts nothing; leaves out what .deployignore and --exclude do
        payload = prepare_payload(open_artifact(file, exclude=settings.exclude))
        if payload.artifact.cleared:
            reporter.target(label, payload.artifact.cleared_note())
        describe_excluded(reporter, payload.artifact, dry_run=False)
        # how a person reaches this machine to roll back by hand, if switching back fails here
        route = f"--to {getpass.getuser()}@{label}"
        try:
            return push_target(LocalExecutor(label), payload, settings, provenance, reporter, route)
        finally:
            payload.close()  # a failed deploy stops reading the file before it is removed


class DeployRecord:
    """One deploy's state and log, written by its worker and read (or followed) over HTTP."""

    def __init__(self, request: DeployRequest, echo: Callable[[str], None]) -> None:
        self.id = secrets.token_urlsafe(18)
        self.request = request
        # the request's --env values never reach the log, its echo or the final state
        self._masker = Masker(request.settings.hooks.env.values())
        self.state: RecordState = "queued"
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
                line = self._masker.text(_STAMP.sub("", line, count=1))
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

    def set_state(self, state: RecordState, error: DeployerError | None = None) -> None:
        """Move to running, deployed or failed (with the error that failed it)."""
        with self._changed:
            self.state = state
            if state in FINAL_STATES:
                self.exit_code = int(error.exit_code) if error else 0
                self.error = self._masker.text(str(error)) if error else ""
                self.outcome = self._masker.data(self.outcome)
                self._forget_variables()
            self._changed.notify_all()

    def _forget_variables(self) -> None:
        """Once the deploy is over its variables are not kept (the log is masked already)."""
        hooks = replace(self.request.settings.hooks, env={})
        self.request = replace(self.request, settings=replace(self.request.settings, hooks=hooks))
        self._masker = Masker()

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
    hooks: Mapping[str, HookSettings] = field(default_factory=dict)  # per served path
    allow_request_hooks: bool = False  # run the hooks a request names (the secret runs commands)
    allow_env: tuple[str, ...] = ()  # variable names a request may pass to the hooks (--env)
    limits: Limits = field(default_factory=Limits)
    replay_file: Path | None = None  # accepted request ids, kept across restarts (required)

    def hooks_for(self, path: str) -> HookSettings:
        """The hooks configured on the receiver for one served path (none: no hooks)."""
        return self.hooks.get(path) or HookSettings()


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
