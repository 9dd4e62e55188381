"""One SFTP-only target's push, in the phases of ``deploy.target.TargetDeploy`` (stage, activate,
finish; abort and revert), so that ``push.fleet`` drives it the same way.

No hooks run here (asking for them is refused before anything happens). The switch is a new
symlink renamed over ``current`` with posix-rename@openssh.com, while the lock is ours. Before the
switch every failure leaves the live release untouched and the lock released; after it, a deploy
that cannot finish says so in one line: which release is live, which one was, and what to run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone

from deployer.artifact.manifest import parse_manifest, plan_delta
from deployer.deploy.lock import utc_now
from deployer.deploy.outcome import Outcome, Provenance, Status
from deployer.deploy.payload import Payload
from deployer.deploy.plan import describe_plan
from deployer.deploy.settings import PushSettings
from deployer.deploy.sftp.build import SftpBuild, cleanup_partial
from deployer.deploy.sftp.lock import FileLock
from deployer.deploy.sftp.state import check_sftp_ready, require_posix_rename, survey
from deployer.deploy.sftp.tree import empty_trash, trash_releases
from deployer.errors import ConfigError, ConnectError, DeployerError
from deployer.output import Reporter
from deployer.remote.files import FileSession
from deployer.remote.history import HistoryEntry
from deployer.remote.layout import Layout, new_release_id
from deployer.remote.state import TargetState
from deployer.remote.switch import plan_prune

ReconnectFiles = Callable[[], FileSession]


def refuse_hooks(settings: PushSettings, where: str) -> None:
    """Hooks and healthchecks need a shell: asking for them over SFTP is a usage error (exit 2)."""
    hooks = settings.hooks
    named = [
        *(["--before"] if hooks.before else []),
        *(["--after"] if hooks.after else []),
        *(["--healthcheck"] if hooks.healthcheck else []),
    ]
    if named:
        raise ConfigError(
            f"{where}: no commands run over SFTP, so {', '.join(named)} cannot run there"
            " — drop them, or deploy to an account with a shell (--transport shell)"
        )


def switch_over_sftp(files: FileSession, path: str, release_id: str | None) -> None:
    """Point current at releases/<id> by renaming a new symlink over it (or remove current)."""
    if release_id is None:
        files.remove(f"{path}/current")
        return
    temporary = f"{path}/.deployer/current.{release_id}"
    files.remove(temporary)
    files.symlink(f"releases/{release_id}", temporary)
    files.rename(temporary, f"{path}/current")


def append_history(files: FileSession, path: str, entry: HistoryEntry) -> None:
    """Append one JSON line to DIR/.deployer/history."""
    files.write(f"{path}/.deployer/history", (entry.to_json() + "\n").encode(), append=True)


class SftpDeploy:
    """One SFTP-only target's push: stage, activate, finish (abort and revert undo them)."""

    def __init__(
        self,
        files: FileSession,
        payload: Payload,
        settings: PushSettings,
        provenance: Provenance,
        reporter: Reporter,
        reconnect: ReconnectFiles | None = None,
    ) -> None:
        self.files = files
        self.payload = payload
        self.settings = settings
        self.provenance = provenance
        self.reporter = reporter
        self.reconnect = reconnect
        self.label = files.label
        self.started = time.monotonic()
        self.outcome = Outcome(self.label, Status.PENDING)
        self._lock: FileLock | None = None
        self._state: TargetState | None = None
        self._layout: Layout | None = None
        self._history: HistoryEntry | None = None

    def _say(self, text: str) -> None:
        self.reporter.target(self.label, text)

    @property
    def layout(self) -> Layout:
        """The new release (once stage got that far)."""
        assert self._layout is not None, "stage() has not surveyed the target yet"
        return self._layout

    @property
    def previous(self) -> str:
        """The release that was live when the deploy began ('' for none)."""
        assert self._state is not None
        return self._state.current

    def stage(self) -> None:
        """Check the target, take the lock and upload the release (nothing live changes)."""
        refuse_hooks(self.settings, f"{self.label} allows SFTP only")
        require_posix_rename(self.files)
        state = survey(self.files, self.settings.path)
        check_sftp_ready(state, self.label, self.payload.artifact.total_size)
        self._state = state
        release_id = new_release_id(datetime.now(timezone.utc), state.releases)
        self._layout = Layout(state.path, release_id)
        self._history = HistoryEntry(
            "deploy", release_id, state.current, utc_now(), self.provenance.by,
            self.provenance.commit, self.provenance.ref, self.provenance.pipeline,
        )  # fmt: skip
        self.outcome.release, self.outcome.previous = release_id, state.current
        self.outcome.pruned = plan_prune(
            [*state.releases, release_id], release_id, self.settings.keep
        )
        if self.settings.dry_run:
            previous = parse_manifest(list(state.manifest)) if self.settings.transfer.delta else {}
            delta = plan_delta(self.payload.digests, previous)
            describe_plan(
                self.reporter,
                self.label,
                self.payload.artifact,
                self.settings,
                state,
                release_id,
                delta,
            )
            self._say("dry run: the target allows SFTP only; the release would be built over SFTP")
            self.outcome.status = Status.PLANNED
            return
        lock = FileLock(self.files, state.path, self.provenance, "deploy")
        lock.acquire()
        self._lock = lock
        try:
            taken = self.files.lstat(lock.directory)  # its mtime: the target's clock, now
            marker = taken.mtime if taken is not None else int(time.time())
            build = SftpBuild(
                self.files, self.payload, self.layout, state.current, state.manifest,
                self.settings.transfer, self.reporter, marker,
            )  # fmt: skip
            report = build.run(self.settings.shared)
            self.outcome.uploaded_bytes = report.wire_bytes
            self.outcome.details["transfer"] = {**asdict(report), "transport": "sftp"}
        except KeyboardInterrupt:
            self._abort_quietly("interrupted")
            raise
        except Exception as exc:
            with contextlib.suppress(DeployerError):
                cleanup_partial(self.files, self.layout)
            self._abort_quietly(str(exc) or type(exc).__name__)
            raise
        self.outcome.status = Status.STAGED

    def activate(self, *, last: bool = False) -> None:
        """Switch current to the staged release (nothing runs after it over SFTP)."""
        if self.settings.dry_run:
            return
        assert self._lock is not None
        try:
            self._lock.check()
        except DeployerError as exc:
            self._abort_quietly(str(exc))
            raise
        release = self.layout.release_id
        try:
            switch_over_sftp(self.files, self.layout.path, release)
        except ConnectError as exc:
            if not self._switched_meanwhile():
                raise
            self._say(f"the reply of the switch was lost ({exc}); current points at {release}")
        except DeployerError as exc:
            self._abort_quietly(f"switching failed: {exc}")
            raise
        self.outcome.status = Status.SWITCHED
        self._say(f"switched current -> releases/{release}")

    def _switched_meanwhile(self) -> bool:
        """After a lost reply: reconnect and read where current points (False: it never moved)."""
        if self.reconnect is None:
            raise self._unconfirmed("the connection was lost during the switch")
        try:
            self._use(self.reconnect())
            live = (self.files.readlink(f"{self.layout.path}/current") or "").rsplit("/", 1)[-1]
        except DeployerError as exc:
            raise self._unconfirmed(
                f"the connection was lost during the switch, and then {exc}"
            ) from exc
        if live != self.layout.release_id:
            self._abort_quietly("the connection was lost during the switch")
        return live == self.layout.release_id

    def _unconfirmed(self, why: str) -> ConnectError:
        return ConnectError(
            f"{self.label}: current may point at release {self.layout.release_id} — {why};"
            f" the release before it is {self.previous or '(none)'} and the deploy lock stays."
            f" Check with `deployer releases`; switch back with `deployer rollback --release"
            f" {self.previous}` (after `deployer unlock`), both with the same route and --path {self.layout.path}"
        )

    def _use(self, files: FileSession) -> None:
        self.files = files
        if self._lock is not None:
            self._lock.files = files

    def finish(self) -> Outcome:
        """Record the deploy, prune old releases (never the live one) and release the lock."""
        if not self.settings.dry_run and self._lock is not None:
            assert self._history is not None
            try:
                append_history(self.files, self.layout.path, self._history)
                trash_releases(self.files, self.layout.path, self.outcome.pruned)
            except DeployerError as exc:
                self._say(f"warning: the release is live, but recording or pruning failed: {exc}")
            self._lock.release()
            self._lock = None
            try:
                empty_trash(self.files, self.layout.path)
            except DeployerError as exc:
                self._say(
                    f"warning: old releases stay in .deployer/trash until the next deploy: {exc}"
                )
            else:
                if self.outcome.pruned:
                    self._say(
                        f"pruned {len(self.outcome.pruned)} old release(s), kept {self.settings.keep}"
                    )
            self.outcome.status = Status.DEPLOYED
            self._say(
                f"deployed {self.layout.release_id} in {time.monotonic() - self.started:.1f} s"
            )
        self.outcome.seconds = time.monotonic() - self.started
        return self.outcome

    def abort(self, reason: str, *, was_live: bool = False) -> None:
        """Discard the staged release (never live, unless was_live), record why, and unlock."""
        if self._lock is None:
            return
        try:
            assert self._history is not None
            history = self._history
            failed = HistoryEntry(
                "failed", history.release, history.previous, utc_now(), history.by,
                history.commit, history.ref, history.pipeline, reason,
            )  # fmt: skip
            append_history(self.files, self.layout.path, failed)
            trash_releases(self.files, self.layout.path, [self.layout.release_id])
            self._say(
                f"release {self.layout.release_id} discarded"
                + ("" if was_live else "; the live release was never touched")
            )
        finally:
            self._lock.release()
            self._lock = None
            with contextlib.suppress(DeployerError):
                empty_trash(self.files, self.layout.path)
        self.outcome.status = Status.ABORTED

    def revert(self, reason: str) -> str:
        """Switch back to the release that was live before (another target failed), discard ours."""
        switch_over_sftp(self.files, self.layout.path, self.previous or None)
        restored = f"switched back to {self.previous}" if self.previous else "removed current"
        self._say(restored)
        self.abort(reason, was_live=True)
        self.outcome.status = Status.REVERTED
        return restored

    def _abort_quietly(self, reason: str) -> None:
        """Best-effort cleanup after a failure; the first failure stays the news."""
        try:
            self.abort(reason)
        except (DeployerError, KeyboardInterrupt):
            self._say(
                "could not clean up; if the lock stays, run `deployer unlock` with the same route"
                f" and --path {self.settings.path}"
            )
