"""One target's push, in phases: stage (probe, lock, upload, before hooks), activate, finish.

Every path out of ``push_target`` leaves the live release either untouched or restored, and the
lock released. The same code runs over SSH (``ssh.Connection``) or locally on the target
(``remote.local.LocalExecutor``, for the webhook receiver).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from deployer.artifact.manifest import parse_manifest, plan_delta
from deployer.deploy.hooks import HookRunner, HookSettings, run_healthcheck
from deployer.deploy.lock import DeployLock, utc_now
from deployer.deploy.outcome import Outcome, Provenance, Status
from deployer.deploy.payload import Payload
from deployer.deploy.plan import describe_plan
from deployer.deploy.settings import PushSettings
from deployer.deploy.upload import Reconnect, Upload
from deployer.errors import DeployerError, HookError, RemoteError
from deployer.output import Reporter
from deployer.remote.executor import Executor, RunResult
from deployer.remote.history import (
    HistoryEntry,
    append_history_script,
)
from deployer.remote.layout import Layout, hook_environment, new_release_id
from deployer.remote.lock import relock_script, unlock_script
from deployer.remote.probe import probe, run_checked
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
    (switched, but another target failed) undo a phase. Each undo leaves current as it was.
    """

    def __init__(
        self,
        executor: Executor,
        payload: Payload,
        settings: PushSettings,
        provenance: Provenance,
        reporter: Reporter,
        reconnect: Reconnect | None = None,
    ) -> None:
        self.executor = executor
        self.payload = payload
        self.artifact = payload.artifact
        self.reconnect = reconnect
        self.settings = settings
        self.provenance = provenance
        self.reporter = reporter
        self.label = executor.label
        self.started = time.monotonic()
        self.outcome = Outcome(self.label, Status.PENDING)
        self._lock: DeployLock | None = None
        self._staging: Staging | None = None

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
        self._staging = staging = Staging(state, Layout(state.path, release_id), history)
        self.outcome.release, self.outcome.previous = release_id, state.current
        self.outcome.pruned = plan_prune(
            [*state.releases, release_id], release_id, self.settings.keep
        )
        if self.settings.dry_run:
            previous = parse_manifest(list(state.manifest)) if self.settings.transfer.delta else {}
            delta = plan_delta(self.payload.digests, previous)
            describe_plan(
                self.reporter, self.label, self.artifact, self.settings, state, release_id, delta
            )
            self.outcome.details["excluded"] = list(self.artifact.excluded)
            self.outcome.status = Status.PLANNED
            return
        try:
            upload = Upload(
                self.executor, self.payload, staging.layout, state.current, state.manifest,
                self.settings.transfer, self.reporter, self.reconnect, self._relock, state.tools,
            )  # fmt: skip
            report = upload.run(self.settings.shared, self.settings.permissions)
            self.executor = upload.executor  # a retry may have reconnected
            assert self._lock is not None  # taken by the probe above
            self._lock.executor = upload.executor
            self.outcome.uploaded_bytes = report.wire_bytes
            self.outcome.details["transfer"] = asdict(report)
            for command in self.settings.hooks.before:
                self.runner.require("before", command, staging.layout.release_dir, staging.env)
        except DeployerError as exc:
            self.abort(str(exc))
            raise
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM when CI cancels the job
            self._undo_quietly(lambda: self.abort("interrupted"))
            raise
        self.outcome.status = Status.STAGED

    def activate(self, *, last: bool = False) -> None:
        """Switch current to the staged release, run after hooks and the healthcheck.

        With `last` (no other target can fail after this switch) and nothing to run after it,
        the deploy is recorded, pruned and unlocked in the same round trip as the switch.
        """
        if self.settings.dry_run:
            return
        hooks = self.settings.hooks
        switch = switch_script(self.staging.path, self.staging.layout.release_id)
        if last and not hooks.after and not hooks.healthcheck:
            result = self.executor.run(
                switch_then_script(switch, self._finish_script()), timeout=120
            )
            if result.status not in (0, RemoteStatus.FINISH_FAILED):
                detail = result.stderr_line or f"exit status {result.status}"
                raise RemoteError(f"switching current on {self.label} failed: {detail}")
            self._say(f"switched current -> releases/{self.staging.layout.release_id}")
            self._finished(result)
            self.outcome.status = Status.SWITCHED
            return
        run_checked(self.executor, switch, "switching current")
        self._say(f"switched current -> releases/{self.staging.layout.release_id}")
        try:
            for command in self.settings.hooks.after:
                self.runner.require(
                    "after", command, self.staging.layout.release_dir, self.staging.env
                )
            run_healthcheck(
                self.runner, self.settings.hooks, self.staging.layout.release_dir, self.staging.env
            )
        except HookError as exc:
            restored = self.revert(str(exc))
            raise HookError(f"{exc} — {restored}") from exc
        except (
            KeyboardInterrupt
        ):  # the new release was never confirmed healthy: put the old one back
            self._undo_quietly(lambda: self.revert("interrupted"))
            raise
        self.outcome.status = Status.SWITCHED

    def _undo_quietly(self, undo: Callable[[], object]) -> None:
        """Best-effort cleanup while being interrupted; a second interrupt or a dead link ends it."""
        try:
            undo()
            self._say("interrupted: cleaned up, the previous release is live")
        except (DeployerError, KeyboardInterrupt):
            self._say("interrupted: could not clean up; run `deployer unlock` if the lock stays")

    def finish(self) -> Outcome:
        """Record the deploy, prune old releases and release the lock (unless activate did)."""
        if not self.settings.dry_run:
            if self._lock is not None:
                try:
                    result = self.executor.run(self._finish_script(), timeout=120)
                except DeployerError as exc:
                    self._say(f"warning: could not record the deploy or unlock: {exc}")
                else:
                    self._finished(result)
            self.outcome.status = Status.DEPLOYED
            self._say(
                f"deployed {self.staging.layout.release_id} in {time.monotonic() - self.started:.1f} s"
            )
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

    def abort(self, reason: str, *, was_live: bool = False) -> None:
        """Discard a staged release (one that never went live, unless was_live), and unlock."""
        if self._lock is None:
            return
        try:
            _discard(
                self.executor,
                self.staging.path,
                self.staging.layout.release_id,
                self.staging.history,
                reason,
            )
            self._say(
                f"release {self.staging.layout.release_id} discarded"
                + ("" if was_live else "; the live release was never touched")
            )
        finally:
            self._unlock()
        self.outcome.status = Status.ABORTED

    def revert(self, reason: str) -> str:
        """Switch back to the release that was live before, re-run after hooks there, discard ours."""
        restored = _switch_back(
            self.executor,
            self.runner,
            self.settings.hooks,
            self.staging.path,
            self.staging.state.current,
            self.staging.env,
            self.reporter,
        )
        self.abort(reason, was_live=True)
        self.outcome.status = Status.REVERTED
        return restored

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
) -> Outcome:
    """Deploy a payload to one target: upload, hooks, atomic switch, healthcheck, prune."""
    deploy = TargetDeploy(executor, payload, settings, provenance, reporter)
    deploy.stage()
    deploy.activate()
    return deploy.finish()


def _switch_back(
    executor: Executor,
    runner: HookRunner,
    hooks: HookSettings,
    path: str,
    previous: str,
    env: dict[str, str],
    reporter: Reporter,
) -> str:
    """Restore the previous live release (or no current at all) and re-run after hooks there."""
    label = executor.label
    run_checked(executor, switch_script(path, previous or None), "switching back")
    if not previous:
        reporter.target(label, "removed current (there was no earlier release)")
        return "removed current: there was no earlier release to switch back to"
    reporter.target(label, f"switched current back -> releases/{previous}")
    previous_dir = f"{path}/releases/{previous}"
    for command in hooks.after:
        result = runner.run(
            "after", command, previous_dir, {**env, "DEPLOYER_RELEASE_DIR": previous_dir}
        )
        if result.status != 0:
            return f"switched back to {previous}, but its after hook `{command}` failed too: check the service"
    return f"switched back to {previous}"


def _discard(
    executor: Executor, path: str, release_id: str, history: HistoryEntry, reason: str
) -> None:
    """Delete a release that never went (or no longer is) live, and record why."""
    executor.run(remove_releases_script(path, [release_id]))
    failed = HistoryEntry(
        "failed", history.release, history.previous, utc_now(), history.by,
        history.commit, history.ref, history.pipeline, reason,
    )  # fmt: skip
    executor.run(append_history_script(path, failed))
