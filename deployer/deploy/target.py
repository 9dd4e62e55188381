"""One target's push, in phases: stage (probe, lock, upload, before hooks), activate, finish.

Where a push stands is its ``Status`` (``outcome.NEXT`` says where it may go). Before the switch,
every failure leaves the live release untouched and the lock released. From the moment the switch
is sent, every failure of any kind ends in a switch back (reconnecting through the same route
when the connection died), or, when the target stays out of reach, in ``UnconfirmedError``: the
new release live and unconfirmed, the lock left with its info saying so. The same code runs over
SSH (``ssh.Connection``) or locally on the target (``remote.local.LocalExecutor``, for the
webhook receiver).
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from deployer.artifact.manifest import parse_manifest, plan_delta
from deployer.deploy.hooks import HookRunner, healthcheck_details, run_healthcheck
from deployer.deploy.lock import DeployLock, utc_now
from deployer.deploy.outcome import Outcome, Provenance, Status
from deployer.deploy.payload import Payload
from deployer.deploy.plan import describe_plan
from deployer.deploy.recovery import (
    SCRIPT_TIMEOUT,
    retrying,
    rollback_command,
    unconfirmed_error,
)
from deployer.deploy.settings import PushSettings
from deployer.deploy.upload import Reconnect, TransferReport, Upload
from deployer.errors import (
    ConnectError,
    DeployerError,
    HealthcheckError,
    LockError,
    RemoteError,
    TransferError,
    UnconfirmedError,
)
from deployer.output import Reporter
from deployer.remote.executor import Executor, RunResult
from deployer.remote.history import HistoryEntry, append_history_script
from deployer.remote.layout import Layout, hook_environment, new_release_id
from deployer.remote.lock import (
    relock_script,
    rewrite_info_script,
    switched_info,
    unlock_script,
    while_locked_script,
)
from deployer.remote.probe import probe
from deployer.remote.state import TargetState, check_ready, lock_error
from deployer.remote.status import RemoteStatus
from deployer.remote.switch import (
    plan_prune,
    remove_releases_script,
    switch_script,
    switch_then_script,
)


@dataclass(frozen=True)
class Staging:
    """What `stage` found on the target and what it builds there."""

    state: TargetState  # the probe's view, taken with the lock
    layout: Layout  # the new release
    history: HistoryEntry  # the record written once the release is live

    @property
    def path(self) -> str:
        """The deploy directory, as the target resolved it."""
        return self.layout.path

    @property
    def env(self) -> dict[str, str]:
        """What every hook of this deploy sees."""
        return hook_environment(self.layout, self.state.current)


class TargetDeploy:
    """One target's push, in phases so that a fleet can switch all-or-nothing.

    ``stage`` uploads and runs the before hooks (nothing live changes); ``activate`` switches and
    checks health; ``finish`` records and prunes. ``abort`` (staged, never switched) and ``revert``
    (switched, but another target failed) undo a phase. Each undo leaves current as it was, or
    raises UnconfirmedError when the target cannot be reached to put it back.
    """

    def __init__(
        self,
        executor: Executor,
        payload: Payload,
        settings: PushSettings,
        provenance: Provenance,
        reporter: Reporter,
        reconnect: Reconnect | None = None,
        route: str = "",
    ) -> None:
        self.executor = executor
        self.payload = payload
        self.artifact = payload.artifact
        self.reconnect = reconnect
        self.settings = settings
        self.provenance = provenance
        self.reporter = reporter
        self.label = executor.label
        self.route = route or f"--to {executor.label}"  # how a person reaches it: --to, --jump, ...
        self.started = time.monotonic()
        self.outcome = Outcome(self.label, Status.PENDING)
        self._lock: DeployLock | None = None
        self._staging: Staging | None = None
        self._step = "the switch"  # what runs on the target after the switch, for messages

    @property
    def staging(self) -> Staging:
        """The probed state and the new release (only once `stage` got that far)."""
        assert self._staging is not None, "stage() has not probed the target yet"
        return self._staging

    @property
    def runner(self) -> HookRunner:
        """Runs this deploy's hooks on the current connection (a retry may have replaced it)."""
        return HookRunner(
            self.executor, self.reporter, self.settings.hooks, self.staging.state.has_timeout
        )

    def _say(self, text: str) -> None:
        self.reporter.target(self.label, text)

    # ------------------------------------------------------------------------ stage

    def stage(self) -> None:
        """Check the target, take the lock, upload the release and run the before hooks."""
        lock = (
            None
            if self.settings.dry_run
            else DeployLock(self.executor, self.settings.path, self.provenance, "deploy")
        )
        group = self.settings.permissions.group
        state = probe(self.executor, self.settings.path, lock.info if lock else None, group)
        if lock is not None and state.locked:
            self._lock = lock
        try:
            check_ready(state, self.label, self.artifact.total_size)
            if lock is not None and not state.locked:
                raise lock_error(state.lock or "taken a moment ago", state.path, self.label)
        except DeployerError:
            self._unlock()
            raise
        release_id = new_release_id(datetime.now(timezone.utc), state.releases)
        history = HistoryEntry(
            "deploy", release_id, state.current, utc_now(), self.provenance.by,
            self.provenance.commit, self.provenance.ref, self.provenance.pipeline,
        )  # fmt: skip
        self._staging = Staging(state, Layout(state.path, release_id), history)
        self.outcome.release, self.outcome.previous = release_id, state.current
        self.outcome.pruned = plan_prune(
            [*state.releases, release_id], release_id, self.settings.keep, state.failed
        )
        if self.settings.dry_run:
            previous = parse_manifest(list(state.manifest)) if self.settings.transfer.delta else {}
            delta = plan_delta(self.payload.digests, previous)
            describe_plan(
                self.reporter, self.label, self.artifact, self.settings, state, release_id, delta
            )
            self.outcome.details["excluded"] = list(self.artifact.excluded)
            self.outcome.advance(Status.PLANNED)
            return
        self._build()

    def _build(self) -> None:
        """Upload the release and run the before hooks (nothing live changes), or discard and
        raise."""
        staging = self.staging
        try:
            upload = self._upload(self._relock)
            report = upload.run(self.settings.shared, self.settings.permissions)
            self._use(upload.executor)  # a retry may have reconnected
            self._record_transfer(report)
            for command in self.settings.hooks.before:
                self.runner.require("before", command, staging.layout.release_dir, staging.env)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM when CI cancels the job
            self._undo_quietly(lambda: self.abort("interrupted"))
            raise
        except Exception as exc:  # nothing live changed: discard, unlock, and say what failed
            with contextlib.suppress(DeployerError):  # the first failure is the news
                self.abort(str(exc) or type(exc).__name__)
            raise
        self.outcome.advance(Status.STAGED)

    def _upload(self, relock: Callable[[Executor], None], then: str = "") -> Upload:
        """The upload of the staged release (`then`: shell text its command runs once published)."""
        staging = self.staging
        return Upload(
            self.executor, self.payload, staging.layout, staging.state.current,
            staging.state.manifest, self.settings.transfer, self.reporter, self.reconnect, relock,
            staging.state.tools, then=then,
        )  # fmt: skip

    def _record_transfer(self, report: TransferReport) -> None:
        self.outcome.uploaded_bytes = report.wire_bytes
        self.outcome.details["transfer"] = asdict(report)

    # ------------------------------------------------------------------------ activate

    def activate(self, *, last: bool = False) -> None:
        """Switch current to the staged release, run after hooks and the healthcheck.

        With `last` (no other target can fail after this switch) and nothing to run after it,
        the deploy is recorded, pruned and unlocked in the same round trip as the switch.
        """
        if self.settings.dry_run or self.outcome.status == Status.DEPLOYED:
            return  # nothing to switch, or stage switched already (deploy.at_once)
        hooks = self.settings.hooks
        layout = self.staging.layout
        self.outcome.advance(Status.SWITCHING)  # from here on, current may point at the new release
        try:
            if last and not hooks.after and not hooks.healthcheck:
                self._switch_and_finish()
                return
            self._switch()
            for command in hooks.after:
                self._step = f"the after hook `{command}`"
                self.runner.require("after", command, layout.release_dir, self.staging.env)
            self._step = "the healthcheck"
            run_healthcheck(self.runner, hooks, layout.release_dir, self.staging.env)
        except BaseException as exc:  # every class: a hook, the route, a timeout, SIGTERM, a bug
            if isinstance(exc, HealthcheckError):  # its output goes into --json and the summary
                self.outcome.details["healthcheck"] = healthcheck_details(hooks, exc)
            self._after_switch_failed(exc)
            raise  # a bug (restored), or the switch failed and nothing went live
        self.outcome.advance(Status.CONFIRMED)

    def _switch(self) -> None:
        """Point current at the new release while the lock is ours; the lock info says so."""
        path, release = self.staging.path, self.staging.layout.release_id
        assert self._lock is not None
        info = switched_info(self._lock.info, release, self.staging.state.current, utc_now())
        script = while_locked_script(
            path,
            self._lock.token,
            f"(\n{switch_script(path, release)}) || exit $?\n"
            + rewrite_info_script(path, self._lock.token, info),
        )
        result = self.executor.run(script, timeout=SCRIPT_TIMEOUT)
        if result.status != 0:
            self._switch_refused(result)
        self.outcome.advance(Status.SWITCHED)
        self._say(f"switched current -> releases/{release}")

    def _switch_and_finish(self) -> None:
        """Switch, record, prune and unlock in one round trip (nothing can fail after this switch)."""
        release = self.staging.layout.release_id
        try:
            result = self.executor.run(self._switch_and_finish_script(), timeout=SCRIPT_TIMEOUT)
        except (ConnectError, TransferError) as exc:
            if not self._finished_meanwhile(exc):
                raise
            self.outcome.advance(Status.DEPLOYED)
            self._lock = None
            self._say(f"switched current -> releases/{release} (the reply was lost; recorded)")
            return
        self._switched_and_finished(result)

    def _switch_and_finish_script(self) -> str:
        assert self._lock is not None
        path, release = self.staging.path, self.staging.layout.release_id
        switch = while_locked_script(path, self._lock.token, switch_script(path, release))
        return switch_then_script(switch, self._finish_script())

    def _switched_and_finished(self, result: RunResult) -> None:
        """Report what a switch + finish command did (discard and raise if it did not switch)."""
        if result.status not in (0, RemoteStatus.FINISH_FAILED):
            self._switch_refused(result)
        self._say(f"switched current -> releases/{self.staging.layout.release_id}")
        self._finished(result)
        self.outcome.advance(Status.DEPLOYED)

    def _switch_refused(self, result: RunResult) -> None:
        """The switch script failed before its rename: current never moved. Discard and raise."""
        error: DeployerError
        held = result.stdout.decode(errors="replace").partition("lock=")[2].strip()
        if result.status == RemoteStatus.LOCK_HELD and held:
            error = lock_error(held, self.staging.path, self.label)
        elif result.status == RemoteStatus.LOCK_HELD:
            error = LockError(
                f"the deploy lock on {self.staging.path} on {self.label} was removed while this"
                " deploy ran (by `deployer unlock`?) — nothing was switched; run the push again"
            )
        else:
            error = RemoteError(f"switching current on {self.label} failed: {result.detail}")
        with contextlib.suppress(DeployerError):  # abort said what it could not undo
            self.abort(str(error))
        raise error

    def _finished_meanwhile(self, lost: BaseException) -> bool:
        """After losing the reply of switch + finish: did the finish run (our lock is gone)?"""

        def ask() -> bool:
            assert self._lock is not None
            result = self.executor.run(
                relock_script(self.staging.path, self._lock.token), timeout=SCRIPT_TIMEOUT
            )
            held = result.stdout.decode(errors="replace").partition("lock=")[2].strip()
            if result.status == 0:
                return False  # still ours: the finish did not run, the switch maybe
            if not held:
                return True  # only the finish, which runs after the switch, removes it
            raise lock_error(held, self.staging.path, self.label)

        self._say(f"lost the reply of the switch ({lost}); reconnecting to see where it stands")
        try:
            return retrying(ask, self._reconnect_or_none, reconnect_first=True,
                            on_retry=self._retry_note("reach"))  # fmt: skip
        except DeployerError as exc:
            raise self._unconfirmed(f"the reply of the switch was lost, and then {exc}") from exc

    def _after_switch_failed(self, exc: BaseException) -> None:
        """Put the previous release back and raise the right error; return only if nothing was live."""
        if not self.outcome.status.live:
            return  # the switch failed and was discarded, or the target is already given up on
        interrupted = isinstance(exc, KeyboardInterrupt)
        lost = isinstance(exc, (ConnectError, TransferError))
        if isinstance(exc, ConnectError):
            self._say(f"lost the connection during {self._step}; switching back")
        elif lost:
            self._say(f"{exc} (during {self._step}); switching back")
        elif not isinstance(exc, DeployerError) and not interrupted:
            self._say(
                f"internal error during {self._step} ({type(exc).__name__}: {exc}); switching back"
            )
        reason = "interrupted" if interrupted else str(exc) or type(exc).__name__
        restored = self._restore(reason, reconnect_first=lost, cause=exc)
        if interrupted:
            self._say(f"interrupted: cleaned up, {restored}")
            raise exc
        if isinstance(exc, ConnectError):
            raise ConnectError(
                f"lost the connection to {self.label} during {self._step}; {restored}"
            ) from exc
        if lost:  # a command past its time limit: the connection may be dead without a word
            raise ConnectError(f"{exc} (during {self._step}); {restored}") from exc
        if isinstance(exc, DeployerError):
            raise type(exc)(f"{exc} — {restored}") from exc
        # a bug: the stack belongs to it, and the log already says what was restored

    # ------------------------------------------------------------------------ switching back

    def revert(self, reason: str) -> str:
        """Switch back to the release that was live before, re-run after hooks there, discard ours.

        Raises UnconfirmedError when the target cannot be reached to do it.
        """
        return self._restore(reason, reconnect_first=False, cause=None)

    def _restore(self, reason: str, *, reconnect_first: bool, cause: BaseException | None) -> str:
        """Switch back (retrying through new connections), or give up with UnconfirmedError."""
        try:
            return retrying(
                lambda: self._switch_back(reason), self._reconnect_or_none,
                reconnect_first=reconnect_first, on_retry=self._retry_note("switch back on"),
            )  # fmt: skip
        except KeyboardInterrupt:
            if self.outcome.status == Status.REVERTED:
                raise  # the old release is live again; the interrupt is the news
            raise self._unconfirmed(
                self._why(cause, "interrupted before it could switch back")
            ) from None
        except DeployerError as exc:
            raise self._unconfirmed(self._why(cause, f"switching back failed: {exc}")) from exc

    def _why(self, cause: BaseException | None, then: str) -> str:
        if cause is None:
            return then
        if isinstance(cause, (ConnectError, TransferError)):
            return f"the connection was lost during {self._step}, and {then}"
        if isinstance(cause, KeyboardInterrupt):
            return f"interrupted during {self._step}, and {then}"
        return f"{cause or type(cause).__name__}, and {then}"

    def _switch_back(self, reason: str) -> str:
        """Restore the previous live release (or no current at all) while the lock is ours."""
        assert self._lock is not None
        path, previous = self.staging.path, self.staging.state.current
        script = while_locked_script(
            path,
            self._lock.token,
            f"(\n{switch_script(path, previous or None)}) || exit $?\n"
            + rewrite_info_script(path, self._lock.token, self._lock.info),
        )
        result = self.executor.run(script, timeout=SCRIPT_TIMEOUT)
        if result.status == RemoteStatus.LOCK_HELD:
            held = result.stdout.decode(errors="replace").partition("lock=")[2].strip()
            raise RemoteError(
                f"the deploy lock is no longer ours ({held or 'someone removed it'}), so current"
                " was left as it is"
            )
        if result.status != 0:
            raise RemoteError(f"switching back on {self.label} failed: {result.detail}")
        self.outcome.advance(Status.REVERTED)
        if not previous:
            self._say("removed current (there was no earlier release)")
            restored = "removed current: there was no earlier release to switch back to"
        else:
            self._say(f"switched current back -> releases/{previous}")
            restored = f"switched back to {previous}"
        try:
            if previous:
                restored = self._rerun_after_hooks(f"{path}/releases/{previous}", restored)
            self._discard(reason, was_live=True)
        except DeployerError as exc:  # the old release is live again: the rest is housekeeping
            restored += f", but discarding the new release failed ({exc}): {self._lock_note()}"
        except KeyboardInterrupt:
            self._say(f"interrupted after it {restored}; {self._lock_note()}")
            raise
        return restored

    def _rerun_after_hooks(self, previous_dir: str, restored: str) -> str:
        env = {**self.staging.env, "DEPLOYER_RELEASE_DIR": previous_dir}
        for command in self.settings.hooks.after:
            try:
                result = self.runner.run("after", command, previous_dir, env)
            except DeployerError as exc:
                return f"{restored}, but re-running its after hook `{command}` failed ({exc}): check the service"
            if result.status != 0:
                return f"{restored}, but its after hook `{command}` failed too: check the service"
        return restored

    def _unconfirmed(self, why: str) -> UnconfirmedError:
        """Give up on this target: the new release stays live, and so does the lock."""
        certain = self.outcome.status != Status.SWITCHING
        self.outcome.advance(Status.UNCONFIRMED)
        release, previous = self.staging.layout.release_id, self.staging.state.current
        token = self._lock.token if self._lock is not None else ""
        path = self.staging.path
        error = unconfirmed_error(
            self.label, release, previous, why, certain=certain,
            rollback=rollback_command(self.route, path, previous, token, self.settings.hooks.after),
            unlock=self._unlock_command(),
        )  # fmt: skip
        self._lock = None  # deliberately left on the target
        return error

    def _unlock_command(self) -> str:
        return f"deployer unlock {self.route} --path {shlex.quote(self.staging.path)}"

    def _lock_note(self) -> str:
        return f"if the deploy lock stays, run `{self._unlock_command()}`"

    def _retry_note(self, what: str) -> Callable[[BaseException, float], None]:
        def note(exc: BaseException, delay: float) -> None:
            self._say(f"cannot {what} {self.label} ({exc}); trying again in {delay:g} s")

        return note

    def _reconnect_or_none(self) -> None:
        if self.reconnect is not None:
            self._use(self.reconnect())

    def _use(self, executor: Executor) -> None:
        """Carry on over another connection (after a reconnect)."""
        self.executor = executor
        if self._lock is not None:
            self._lock.executor = executor

    def _undo_quietly(self, undo: Callable[[], object]) -> None:
        """Best-effort cleanup while being interrupted; a second interrupt or a dead link ends it."""
        try:
            undo()
            self._say("interrupted: cleaned up, the previous release is live")
        except (DeployerError, KeyboardInterrupt):
            self._say(f"interrupted: could not clean up; {self._lock_note()}")

    # ------------------------------------------------------------------------ finish and abort

    def finish(self) -> Outcome:
        """Record the deploy, prune old releases and release the lock (unless activate did)."""
        if not self.settings.dry_run:
            warning = ""
            if self._lock is not None:
                try:
                    result = self.executor.run(self._finish_script(), timeout=120)
                except DeployerError as exc:
                    warning = (
                        f"warning: the release is live and confirmed, but recording it or releasing"
                        f" the lock failed ({exc}); {self._lock_note()}"
                    )
                else:
                    self._finished(result)
            if self.outcome.status == Status.CONFIRMED:
                self.outcome.advance(Status.DEPLOYED)
            self._say(
                f"deployed {self.staging.layout.release_id} in {time.monotonic() - self.started:.1f} s"
            )
            if warning:
                self._say(warning)
        self.outcome.seconds = time.monotonic() - self.started
        return self.outcome

    def _finish_script(self) -> str:
        """Record, prune and unlock (the release is live whatever happens here)."""
        assert self._lock is not None
        return (
            append_history_script(self.staging.path, self.staging.history)
            + remove_releases_script(self.staging.path, self.outcome.pruned)
            + unlock_script(self.staging.path, self._lock.token)
        )

    def _finished(self, result: RunResult) -> None:
        """Report what the finish script did; the lock is gone either way."""
        self._lock = None
        if result.status != 0:
            self._say(f"warning: recording or pruning failed: {result.stderr_line}")
        elif self.outcome.pruned:
            self._say(
                f"pruned {len(self.outcome.pruned)} old release(s), kept {self.settings.keep}"
            )

    def abort(self, reason: str) -> None:
        """Discard a staged release that never went live, and unlock (raises when it cannot)."""
        if self._lock is None:
            return
        self.outcome.advance(Status.ABORTED)  # nothing went live, whatever happens next
        try:
            self._discard(reason, was_live=False)
        except DeployerError as exc:
            self._say(
                f"could not discard release {self.staging.layout.release_id} ({exc});"
                f" {self._lock_note()}"
            )
            raise

    def _discard(self, reason: str, *, was_live: bool) -> None:
        """Record why, delete our release (the script refuses a live one) and unlock: one round trip."""
        assert self._lock is not None
        history = self.staging.history
        failed = HistoryEntry(
            "failed", history.release, history.previous, utc_now(), history.by,
            history.commit, history.ref, history.pipeline, reason,
        )  # fmt: skip
        path, release = self.staging.path, self.staging.layout.release_id
        script = (
            append_history_script(path, failed)
            + remove_releases_script(path, [release])
            + unlock_script(path, self._lock.token)
        )
        self.executor.run(script, timeout=SCRIPT_TIMEOUT)
        self._lock = None
        self._say(
            f"release {release} discarded"
            + ("" if was_live else "; the live release was never touched")
        )

    def _relock(self, executor: Executor) -> None:
        """After a reconnect, make sure the lock we hold is still ours."""
        assert self._lock is not None
        result = executor.run(relock_script(self.staging.path, self._lock.token))
        if result.status != 0:
            held = result.stdout.decode(errors="replace").partition("lock=")[2].strip()
            raise lock_error(held, self.staging.path, self.label)

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def push_target(
    executor: Executor,
    payload: Payload,
    settings: PushSettings,
    provenance: Provenance,
    reporter: Reporter,
    route: str = "",
) -> Outcome:
    """Deploy a payload to one target: upload, hooks, atomic switch, healthcheck, prune."""
    deploy = TargetDeploy(executor, payload, settings, provenance, reporter, route=route)
    deploy.stage()
    deploy.activate()
    return deploy.finish()
