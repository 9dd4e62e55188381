"""Getting a release onto a target: one tar stream, only what changed, verified, resumable.

One command per target builds the release: it receives the manifest, the list of unchanged
files and a tar stream of the changed ones, copies the unchanged files from the live release
(on the target), verifies the tree against the manifest (every file sent is hashed; a copied
file only when its source changed since its release was published, by a stat snapshot taken
then), links shared entries and renames the partial dir into place. Files that fail
verification (the app changed its live release in place, or a byte went wrong) are sent again
in a second command. A dropped connection is retried with backoff; the retry asks the target
what already arrived intact and sends only the rest. A push that may switch at once passes the
switch as `then`: the same command runs it once the release is published (``switched``).
"""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from deployer.artifact.compression import (
    Compression,
    CompressMode,
    check_compression,
    zstd_available,
)
from deployer.artifact.manifest import (
    parse_manifest,
    plan_delta,
)
from deployer.deploy.payload import Payload
from deployer.deploy.spool import Spool
from deployer.errors import ConfigError, ConnectError, RemoteError, TransferError
from deployer.output import Reporter, human_size
from deployer.remote.executor import Executor, RunResult
from deployer.remote.layout import Layout
from deployer.remote.permissions import AS_CREATED, Permissions
from deployer.remote.stage import (
    PUBLISHED,
    inventory_script,
    remove_partial_script,
    stage_script,
)
from deployer.remote.status import RemoteStatus
from deployer.remote.tools import Toolset

RETRY_DELAYS = (1.0, 3.0, 8.0)  # seconds before each new attempt after a dropped connection


@dataclass(frozen=True)
class TransferSettings:
    """How to move bytes: delta or not, how to reuse unchanged files, the codec and its level
    (None: zstd adapts it, gzip uses 1)."""

    delta: bool = True
    hardlink: bool = False
    compresslevel: int | None = None
    retries: int = len(RETRY_DELAYS)
    compress: CompressMode = "auto"

    def __post_init__(self) -> None:
        check_compression(self.compress, self.compresslevel)
        if self.compress == "zstd" and not zstd_available():
            raise ConfigError(
                "--compress zstd needs the zstandard package, which is not installed here"
                " — pip install zstandard (deployer-ci depends on it), or use --compress gzip"
            )


@dataclass
class TransferReport:
    """What crossed the wire."""

    files_sent: int = 0
    files_reused: int = 0
    files_trusted: int = 0  # reused files vouched for by the stat snapshot, not hashed again
    bytes_sent: int = 0  # uncompressed content
    wire_bytes: int = 0  # what the tar stream weighed
    attempts: int = 1
    compression: str = "none"
    levels: list[int] = field(default_factory=list)  # zstd: every level used, in order
    wire_waited: float = 0.0  # zstd: seconds the connection waited for the compressor
    shared_stream: bool = False  # the stream was encoded once for several targets


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
        tools: Toolset | None = None,
        then: str = "",
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
        # what the probe found; unprobed, only what GNU coreutils and BusyBox both have
        self.tools = tools or Toolset()
        self.permissions = AS_CREATED
        self.report = TransferReport()
        self.then = then  # shell text run by the stage command once the release is published
        self.switched: RunResult | None = None  # what `then` did (its status, what it printed)
        self.sent_whole = False  # the last stage command got its whole stream: `then` may have run

    def run(self, shared: tuple[str, ...], permissions: Permissions = AS_CREATED) -> TransferReport:
        """Build and publish the release on the target (with `permissions`), or raise.

        A failed build or verification removes the partial dir; after a broken stream it stays
        (hidden, never live) for the retry to resume, and the next push's lock step clears it.
        """
        started = time.monotonic()
        self.permissions = permissions
        plan = plan_delta(self.payload.digests, self.previous_manifest)
        compression = self._compression(plan.send)
        self.report.compression = compression.label
        self.report.files_reused, self.report.files_sent = len(plan.reuse), len(plan.send)
        self.report.bytes_sent = plan.send_bytes
        spool = self.payload.shared_stream(plan.send, compression)
        self.report.shared_stream = spool is not None
        failed = self._stage_with_retries(shared, set(plan.send), plan.reuse, compression, spool)
        if failed:
            self._explain(failed, set(plan.reuse))
            self.report.files_reused -= len(failed & set(plan.reuse))
            self.report.files_sent += len(failed & set(plan.reuse))
            self.report.bytes_sent += sum(self.payload.digests[p].size for p in failed)
            failed = self._stage_with_retries(shared, failed, (), compression)
        if failed:
            self.executor.run(remove_partial_script(self.layout))
            raise RemoteError(
                f"verifying the uploaded tree on {self.executor.label} failed: {len(failed)} file(s)"
                f" do not match the manifest (e.g. {sorted(failed)[0]}) although sent twice"
                " — nothing was switched; check the target's disk and what writes into its releases"
            )
        elapsed = time.monotonic() - started
        self.reporter.target(
            self.executor.label,
            f"uploaded {self.report.files_sent} of {len(self.payload.digests)} files"
            f" ({human_size(self.report.bytes_sent)}; {self.report.files_reused} unchanged reused on the"
            f" target, {self.report.files_trusted} of them not hashed again)"
            f", {human_size(self.report.wire_bytes)} on the wire [{self.report.compression}"
            f"{self._levels()}{', shared stream' if self.report.shared_stream else ''}]"
            f" in {elapsed:.1f} s",
        )
        return self.report

    def _compression(self, send: frozenset[str]) -> Compression:
        """The codec for this target: as asked, zstd only where both ends have it."""
        mode = self.settings.compress
        if mode == "zstd" and not self.tools.zstd:
            raise RemoteError(
                f"{self.executor.label} lacks zstd -dc, which --compress zstd needs — install zstd"
                " there, or use --compress auto (zstd where the target has it, else gzip)"
            )
        zstd_ok = self.tools.zstd and zstd_available()
        return self.payload.compression(send, mode, self.settings.compresslevel, zstd_ok)

    def _levels(self) -> str:
        """', level 3→4→5' when zstd adapted its level."""
        if len(self.report.levels) < 2:
            return ""
        return ", level " + "→".join(map(str, self.report.levels))

    def _explain(self, failed: set[str], reused: set[str]) -> None:
        """Say why files are sent a second time."""
        damaged = failed & reused
        if damaged:
            self.reporter.target(
                self.executor.label,
                f"{len(damaged)} file(s) changed in place in release {self.previous}"
                f" (e.g. {sorted(damaged)[0]}); sending them instead of reusing",
            )
        if failed - damaged:
            self.reporter.target(
                self.executor.label,
                f"{len(failed - damaged)} file(s) arrived damaged (e.g. {sorted(failed - damaged)[0]});"
                " sending them again",
            )

    def _stage_with_retries(
        self,
        shared: tuple[str, ...],
        send: set[str],
        reuse: tuple[str, ...],
        compression: Compression,
        spool: Spool | None = None,
    ) -> set[str]:
        """Run the stage command, resuming after dropped connections; return the files that failed.

        `spool` holds the stream of `send` if it is shared with other targets; a resumed upload
        sends fewer files, and encodes its own stream.
        """
        attempt = 0
        while True:
            try:
                return self._stage(shared, send, reuse, compression, spool)
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
                send, spool = self._resume(send), None

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

    def _stage(
        self,
        shared: tuple[str, ...],
        send: set[str],
        reuse: tuple[str, ...],
        compression: Compression,
        spool: Spool | None,
    ) -> set[str]:
        """One stage command: manifest + reuse list + tar stream; the files that failed verification."""
        digests = self.payload.digests
        manifest = gzip.compress(self.payload.manifest.encode(), compresslevel=1)
        reuse_lines = "".join(f"{digests[p].sha256}  {p}\n" for p in reuse)
        reused = gzip.compress(reuse_lines.encode(), compresslevel=1)
        script = stage_script(
            self.layout,
            shared,
            sections=(len(manifest), len(reused)),
            previous_id=self.previous if reuse else "",
            hardlink=self.settings.hardlink,
            codec=compression.codec,
            tools=self.tools,
            permissions=self.permissions,
            then=self.then,
        )
        advance = self.reporter.progress(
            self.executor.label, "upload", sum(digests[p].size for p in send)
        )

        def feed(out: BinaryIO) -> None:
            counting = _Counting(out, self.report)
            counting.write(manifest)
            counting.write(reused)
            if spool is not None:
                spool.copy_to(counting, on_progress=advance)
            else:
                log = self.payload.encode(send, compression, counting, advance)
                if log is not None:
                    self.report.levels = list(log.levels)
                    self.report.wire_waited = round(log.empty_seconds, 2)
            self.sent_whole = True

        self.sent_whole = False
        result = self.executor.run(script, upload=feed)
        built, published, switched = result.stdout.partition(PUBLISHED + b"\n")
        if published:
            self.switched = RunResult(result.status, switched, result.stderr)
            result = RunResult(0, built, b"")
        if result.status == RemoteStatus.VERIFY_FAILED:
            failed = {line for line in result.stdout.decode(errors="replace").splitlines() if line}
            if failed and failed <= digests.keys():
                return failed
        if result.status != 0:
            self.executor.run(remove_partial_script(self.layout))
            what = "verifying" if result.status == RemoteStatus.VERIFY_FAILED else "building"
            raise RemoteError(
                f"{what} the release on {self.executor.label} failed:"
                f" {result.detail}"
                " — nothing was switched; fix what the target reported, then push again"
            )
        trusted = re.search(rb"^trusted=\s*(\d+)", result.stdout, re.MULTILINE)
        self.report.files_trusted = int(trusted[1]) if trusted else 0
        return set()
