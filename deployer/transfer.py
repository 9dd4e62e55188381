"""Getting a release onto a target: one tar stream, only what changed, verified, resumable.

Round trips per target: seed (copy unchanged files from the live release, on the target),
unpack (one tar stream: changed files + directories + symlinks), publish (verify every file's
sha256 against the manifest, link shared entries, rename the partial dir into place). A dropped
connection during unpack is retried with backoff; the retry asks the target what already
arrived intact and sends only the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from deployer.artifact import Artifact, write_tar
from deployer.errors import ConnectError, RemoteError, TransferError
from deployer.executor import Executor
from deployer.manifest import (
    DeltaPlan,
    FileDigest,
    choose_compression,
    compressibility,
    digest_files,
    manifest_text,
    parse_manifest,
    plan_delta,
)
from deployer.output import Reporter, human_size
from deployer.release import (
    VERIFY_FAILED_STATUS,
    Layout,
    inventory_script,
    publish_script,
    remove_partial_script,
    seed_script,
    unpack_script,
)

RETRY_DELAYS = (1.0, 3.0, 8.0)  # seconds before each new attempt after a dropped connection


@dataclass(frozen=True)
class Payload:
    """An artifact with its file digests, computed once for every target."""

    artifact: Artifact
    digests: dict[str, FileDigest]

    @property
    def manifest(self) -> str:
        """The manifest stored with each release."""
        return manifest_text(self.digests)


def prepare_payload(artifact: Artifact) -> Payload:
    """Hash every file of the artifact (streamed)."""
    return Payload(artifact, digest_files(artifact))


@dataclass(frozen=True)
class TransferSettings:
    """How to move bytes: delta or not, how to reuse unchanged files, gzip level (None: auto)."""

    delta: bool = True
    hardlink: bool = False
    compresslevel: int | None = None
    retries: int = len(RETRY_DELAYS)


@dataclass
class TransferReport:
    """What crossed the wire."""

    files_sent: int = 0
    files_reused: int = 0
    bytes_sent: int = 0  # uncompressed content
    wire_bytes: int = 0  # what the tar stream weighed
    attempts: int = 1
    compression: str = "none"


Reconnect = Callable[[], Executor]


class _Counting:
    """Counts what is written into the channel."""

    def __init__(self, out: BinaryIO, report: TransferReport) -> None:
        self._out = out
        self._report = report

    def write(self, data: bytes) -> int:
        self._report.wire_bytes += len(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


class Upload:
    """Uploads one release to one target; `executor` may be replaced after a reconnect."""

    def __init__(
        self,
        executor: Executor,
        payload: Payload,
        layout: Layout,
        previous: str,
        previous_manifest: tuple[str, ...],
        settings: TransferSettings,
        reporter: Reporter,
        reconnect: Reconnect | None = None,
        relock: Callable[[Executor], None] | None = None,
    ) -> None:
        self.executor = executor
        self.payload = payload
        self.layout = layout
        self.previous = previous
        self.previous_manifest = (
            parse_manifest(list(previous_manifest)) if previous and settings.delta else {}
        )
        self.settings = settings
        self.reporter = reporter
        self.reconnect = reconnect
        self.relock = relock
        self.report = TransferReport()

    def run(self, shared: tuple[str, ...]) -> TransferReport:
        """Seed, unpack (with retries) and publish; raise with the partial dir removed on failure."""
        label = self.executor.label
        started = time.monotonic()
        plan = plan_delta(self.payload.digests, self.previous_manifest)
        if plan.reuse:
            plan = self._seed(plan)
        ratio = compressibility(self.payload.artifact, plan.send)
        level = choose_compression(ratio, self.settings.compresslevel)
        self.report.compression = f"gzip -{level}" if level is not None else "none"
        self.report.files_reused, self.report.files_sent = len(plan.reuse), len(plan.send)
        self.report.bytes_sent = plan.send_bytes
        self._unpack_with_retries(set(plan.send), level)
        result = self.executor.run(publish_script(self.layout, shared), upload=self._send_manifest)
        if result.status != 0:
            self.executor.run(remove_partial_script(self.layout))
            what = (
                "verifying the uploaded tree"
                if result.status == VERIFY_FAILED_STATUS
                else "publishing the release"
            )
            raise RemoteError(
                f"{what} on {label} failed: {result.stderr_line or f'exit status {result.status}'}"
                " — nothing was switched; run the push again"
            )
        elapsed = time.monotonic() - started
        self.reporter.target(
            label,
            f"uploaded {self.report.files_sent} of {len(self.payload.digests)} files"
            f" ({human_size(self.report.bytes_sent)}; {self.report.files_reused} unchanged reused on the target)"
            f", {human_size(self.report.wire_bytes)} on the wire [{self.report.compression}] in {elapsed:.1f} s",
        )
        return self.report

    def _send_manifest(self, out: BinaryIO) -> None:
        out.write(self.payload.manifest.encode())

    def _seed(self, plan: DeltaPlan) -> DeltaPlan:
        """Copy unchanged files on the target; files that did not copy intact are sent instead."""
        lines = "".join(f"{self.payload.digests[p].sha256}  {p}\n" for p in plan.reuse).encode()
        script = seed_script(self.layout, self.previous, self.settings.hardlink)
        result = self.executor.run(script, upload=lambda out: out.write(lines))
        if result.status != 0:
            self.reporter.target(
                self.executor.label, f"could not reuse files from {self.previous}; sending all"
            )
            return plan_delta(self.payload.digests, {})
        damaged = {line for line in result.stdout.decode(errors="replace").splitlines() if line}
        if damaged:
            # the app changed files inside its live release: never copy those, send them again
            self.reporter.target(
                self.executor.label,
                f"{len(damaged)} file(s) changed in place in release {self.previous} (e.g. {sorted(damaged)[0]});"
                " sending them instead of reusing",
            )
        reuse = tuple(p for p in plan.reuse if p not in damaged)
        send = plan.send | (set(plan.reuse) - set(reuse))
        return DeltaPlan(reuse, frozenset(send), sum(self.payload.digests[p].size for p in send))

    def _unpack_with_retries(self, send: set[str], level: int | None) -> None:
        attempt = 0
        while True:
            try:
                self._unpack(send, level)
                return
            except (TransferError, ConnectError) as exc:
                if self.reconnect is None or attempt >= self.settings.retries:
                    raise
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                attempt += 1
                self.report.attempts += 1
                self.reporter.target(
                    self.executor.label, f"upload interrupted ({exc}); retrying in {delay:g} s"
                )
                time.sleep(delay)
                send = self._resume(send)

    def _resume(self, send: set[str]) -> set[str]:
        """Reconnect, check the lock is still ours, and drop from `send` what arrived intact."""
        assert self.reconnect is not None
        self.executor = self.reconnect()
        if self.relock is not None:
            self.relock(self.executor)
        result = self.executor.run(inventory_script(self.layout))
        arrived = {}
        for line in result.stdout.decode(errors="replace").splitlines():
            digest, _, path = line.partition("  ")
            arrived[path.removeprefix("./")] = digest
        remaining = {p for p in send if arrived.get(p) != self.payload.digests[p].sha256}
        self.reporter.target(
            self.executor.label,
            f"resuming: {len(send) - len(remaining)} files already arrived, {len(remaining)} to go",
        )
        return remaining

    def _unpack(self, send: set[str], level: int | None) -> None:
        total = sum(self.payload.digests[p].size for p in send)
        advance = self.reporter.progress(self.executor.label, "upload", total)

        def feed(out: BinaryIO) -> None:
            counting = _Counting(out, self.report)
            write_tar(
                self.payload.artifact, counting, compresslevel=level, on_progress=advance, only=send
            )

        result = self.executor.run(unpack_script(self.layout, level is not None), upload=feed)
        if result.status != 0:
            self.executor.run(remove_partial_script(self.layout))
            raise RemoteError(
                f"unpacking the release on {self.executor.label} failed:"
                f" {result.stderr_line or f'exit status {result.status}'}"
            )
