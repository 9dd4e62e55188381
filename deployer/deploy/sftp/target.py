"""One SFTP-only target's push, in the phases of ``deploy.target.TargetDeploy`` (stage, activate,
finish; abort and revert), so that ``push.fleet`` drives it the same way.

No hooks run here (asking for them is refused before anything happens). The switch is a new
symlink renamed over ``current`` with posix-rename@openssh.com, while the lock is ours. Before the
switch every failure leaves the live release untouched and the lock released; after it, a deploy
that cannot finish says so in one line: which release is live, which one was, and what to run.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone

from deployer.artifact.manifest import parse_manifest, plan_delta
from deployer.deploy.lock import utc_now
from deployer.deploy.outcome import Outcome, Provenance, Status
from deployer.deploy.payload import Payload
from deployer.deploy.plan import describe_plan
from deployer.deploy.recovery import retrying, rollback_command, unconfirmed_error
from deployer.deploy.settings import PushSettings
from deployer.deploy.sftp.build import SftpBuild, cleanup_partial
from deployer.deploy.sftp.lock import FileLock
from deployer.deploy.sftp.state import check_sftp_ready, require_posix_rename, survey
from deployer.deploy.sftp.tree import empty_trash, trash_releases
from deployer.errors import (
    ConfigError,
    ConnectError,
    DeployerError,
    TransferError,
    UnconfirmedError,
)
from deployer.output import Reporter
from deployer.remote.files import FileSession
from deployer.remote.history import HistoryEntry
from deployer.remote.layout import Layout, new_release_id
from deployer.remote.lock import switched_info
from deployer.remote.state import TargetState
from deployer.remote.switch import plan_prune

ReconnectFiles = Callable[[], FileSession]


def refuse_hooks(settings: PushSettings, where: str) -> None:
    """Hooks, healthchecks and --group need commands on the target: asking for them over SFTP is a
    usage error (exit 2), said before anything happens."""
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
    if settings.permissions.group:
        raise ConfigError(
            f"{where}: --group and --writable set groups and modes with commands, and no commands"
            " run over SFTP — drop them, or deploy to an account with a shell (--transport shell)"
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
        route: str = "",
        reopen: ReconnectFiles | None = None,
    ) -> None:
        self.files = files
        self.reopen = reopen  # a new SFTP channel on the same connection
        self.payload = payload
        self.settings = settings
        self.provenance = provenance
        self.reporter = reporter
        self.reconnect = reconnect
        self.label = files.label
        self.route = route or f"--to {files.label}"  # how a person reaches it, for messages
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

    # ------------------------------------------------------------------------ stage

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
            [*state.releases, release_id], release_id, self.settings.keep, state.failed
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
            self.outcome.advance(Status.PLANNED)
            return
        lock = FileLock(self.files, state.path, self.provenance, "deploy")
        try:
            lock.acquire()
        except KeyboardInterrupt:  # the mkdir may have happened with its reply unread
            self._fresh()
            self._lock = lock
            self._abort_quietly("interrupted")
            self._lock = lock
            self._say_if_left(lock)
            raise
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
            self._fresh()
            self._abort_quietly("interrupted")
            raise
        except Exception as exc:
            self._fresh()
            with contextlib.suppress(DeployerError):
                cleanup_partial(self.files, self.layout)
            self._abort_quietly(str(exc) or type(exc).__name__)
            raise
        self.outcome.advance(Status.STAGED)

    # ------------------------------------------------------------------------ activate

    def activate(self, *, last: bool = False) -> None:
        """Switch current to the staged release while the lock is ours (nothing runs after it)."""
        if self.settings.dry_run:
            return
        lock, release = self._lock, self.layout.release_id
        assert lock is not None
        try:
            lock.check()
            # the lock says what this deploy is about to leave live, should it lose the target now
            lock.rewrite(switched_info(lock.info, release, self.previous, utc_now()))
        except DeployerError as exc:
            self._abort_quietly(str(exc))
            raise
        self.outcome.advance(Status.SWITCHING)
        try:
            switch_over_sftp(self.files, self.layout.path, release)
        except (ConnectError, TransferError) as exc:
            if not self._switched_meanwhile(exc):
                raise
        except DeployerError as exc:  # refused before the rename took place: nothing went live
            self._abort_quietly(f"switching failed: {exc}")
            raise
        except KeyboardInterrupt:
            self._fresh()
            if self._switched_meanwhile(None):
                self._restore("interrupted")
            raise
        self.outcome.advance(Status.SWITCHED)
        self.outcome.advance(Status.CONFIRMED)  # no hooks, no healthcheck over SFTP
        self._say(f"switched current -> releases/{release}")

    def _switched_meanwhile(self, lost: BaseException | None) -> bool:
        """After a lost reply (or an interrupt): read where current points, reconnecting if the
        connection died. False (and the release discarded) when the switch never happened."""
        release = self.layout.release_id

        def where() -> str:
            return (
                (self.files.readlink(f"{self.layout.path}/current") or "")
                .rstrip("/")
                .rsplit("/", 1)[-1]
            )

        try:
            live = retrying(where, self._reconnect_or_none, reconnect_first=lost is not None,
                            on_retry=self._retry_note("reach"))  # fmt: skip
        except DeployerError as exc:
            raise self._unconfirmed(f"the reply of the switch was lost, and then {exc}") from exc
        if live != release:
            self._abort_quietly("the switch did not happen: the connection was lost")
            return False
        if lost is not None:
            self._say(f"the reply of the switch was lost ({lost}); current points at {release}")
        return True

    def _unconfirmed(self, why: str) -> UnconfirmedError:
        """Give up on this target: the new release may be live, and the lock stays saying so."""
        certain = self.outcome.status != Status.SWITCHING
        self.outcome.advance(Status.UNCONFIRMED)
        token = self._lock.token if self._lock is not None else ""
        path = self.layout.path
        self._lock = None  # deliberately left on the target
        return unconfirmed_error(
            self.label, self.layout.release_id, self.previous, why, certain=certain,
            rollback=rollback_command(self.route, path, self.previous, token, ()) + " --transport sftp",
            unlock=f"deployer unlock {self.route} --path {shlex.quote(path)} --transport sftp",
        )  # fmt: skip

    def _fresh(self) -> None:
        """Carry on over a new SFTP channel: an interrupt may have cut a request or a reply in
        half, and the old channel's stream cannot be trusted after that."""
        if self.reopen is None:
            return
        try:
            files = self.reopen()
        except DeployerError:
            return  # the cleanup that follows says what it could not do
        self.files = files
        if self._lock is not None:
            self._lock.files = files

    def _reconnect_or_none(self) -> None:
        if self.reconnect is not None:
            self.files = self.reconnect()
            if self._lock is not None:
                self._lock.files = self.files

    def _retry_note(self, what: str) -> Callable[[BaseException, float], None]:
        def note(exc: BaseException, delay: float) -> None:
            self._say(f"cannot {what} {self.label} ({exc}); trying again in {delay:g} s")

        return note

    # ------------------------------------------------------------------------ finish, abort, revert

    def finish(self) -> Outcome:
        """Record the deploy, prune old releases (never the live one) and release the lock."""
        if not self.settings.dry_run and self._lock is not None:
            assert self._history is not None
            moved: list[str] = []
            try:
                append_history(self.files, self.layout.path, self._history)
                moved = trash_releases(self.files, self.layout.path, self.outcome.pruned)
            except DeployerError as exc:
                self._say(f"warning: the release is live, but recording or pruning failed: {exc}")
            self._lock.release()
            self._lock = None
            try:
                if moved:  # (what an earlier deploy left in the trash goes with it)
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
            self.outcome.advance(Status.DEPLOYED)
            self._say(
                f"deployed {self.layout.release_id} in {time.monotonic() - self.started:.1f} s"
            )
        self.outcome.seconds = time.monotonic() - self.started
        return self.outcome

    def abort(self, reason: str) -> None:
        """Discard the staged release that never went live, record why, and unlock."""
        if self._lock is None:
            return
        self.outcome.advance(Status.ABORTED)
        self._discard(reason, was_live=False)

    def _discard(self, reason: str, *, was_live: bool) -> None:
        assert self._lock is not None and self._history is not None
        history = self._history
        try:
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

    def revert(self, reason: str) -> str:
        """Switch back to the release that was live before (another target failed), discard ours.

        Raises UnconfirmedError when the target cannot be reached to do it.
        """
        return self._restore(reason)

    def _restore(self, reason: str) -> str:
        def back() -> str:
            assert self._lock is not None
            self._lock.check()
            switch_over_sftp(self.files, self.layout.path, self.previous or None)
            return f"switched back to {self.previous}" if self.previous else "removed current"

        try:
            restored = retrying(back, self._reconnect_or_none, reconnect_first=False,
                                on_retry=self._retry_note("switch back on"))  # fmt: skip
        except DeployerError as exc:
            raise self._unconfirmed(f"switching back failed: {exc}") from exc
        self.outcome.advance(Status.REVERTED)
        self._say(restored)
        with contextlib.suppress(DeployerError):
            self._discard(reason, was_live=True)
        return restored

    def _say_if_left(self, lock: FileLock) -> None:
        """After an interrupted acquire: name a lock that may be ours and stays (no info yet)."""
        self._lock = None
        try:
            left = self.files.lstat(lock.directory) is not None and lock.holder() in ("", lock.info)
        except DeployerError:
            left = True
        if left:
            self._say(
                f"interrupted while taking the lock: if {lock.directory} stays, run"
                f" `deployer unlock {self.route} --path {shlex.quote(self.settings.path)} --transport sftp`"
            )

    def _abort_quietly(self, reason: str) -> None:
        """Best-effort cleanup after a failure; the first failure stays the news."""
        try:
            self.abort(reason)
        except (DeployerError, KeyboardInterrupt) as exc:
            self._say(
                f"could not clean up ({exc or 'interrupted again'}); if the lock stays, run"
                f" `deployer unlock {self.route} --path {shlex.quote(self.settings.path)} --transport sftp`"
            )
