"""The deploy service: push, rollback, list and unlock on one target, through any Executor.

Every path out of ``push_target`` leaves the live release either untouched or restored, and the
lock released. The same code runs over SSH (``ssh.Connection``) or locally on the target.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from deployer.artifact.manifest import DeltaPlan, parse_manifest, plan_delta
from deployer.artifact.model import Artifact
from deployer.deploy.hooks import HookRunner, HookSettings, failure_message
from deployer.deploy.upload import Payload, Reconnect, TransferSettings, Upload
from deployer.errors import DeployerError, HookError, RemoteError
from deployer.output import Reporter, human_size
from deployer.remote.executor import Executor, RunResult
from deployer.remote.history import (
    HistoryEntry,
    append_history_script,
    parse_history,
    read_history_script,
)
from deployer.remote.layout import Layout, new_release_id
from deployer.remote.lock import prepare_script, relock_script, unlock_script
from deployer.remote.probe import preflight_script
from deployer.remote.state import TargetState, check_ready, lock_error, parse_state
from deployer.remote.status import RemoteStatus
from deployer.remote.switch import (
    plan_prune,
    remove_releases_script,
    switch_script,
    switch_then_script,
)


@dataclass(frozen=True)
class Provenance:
    """Who and what a deploy came from (CI user, commit, ref, pipeline URL)."""

    by: str
    commit: str = ""
    ref: str = ""
    pipeline: str = ""


@dataclass(frozen=True)
class PushSettings:
    """Everything about a push except where it goes."""

    path: str
    keep: int = 5
    shared: tuple[str, ...] = ()
    hooks: HookSettings = field(default_factory=HookSettings)
    dry_run: bool = False
    transfer: TransferSettings = field(default_factory=TransferSettings)


@dataclass
class Outcome:
    """What happened on one target, for the summary and --json."""

    target: str
    status: str  # deployed | planned | failed | rolled-back | listed | unlocked
    release: str = ""
    previous: str = ""
    error: str = ""
    exit_code: int = 0
    seconds: float = 0.0
    uploaded_bytes: int = 0
    pruned: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _checked(executor: Executor, script: str, what: str, **kwargs: object) -> RunResult:
    result = executor.run(script, **kwargs)  # type: ignore[arg-type]
    if result.status != 0:
        detail = result.stderr_line or f"exit status {result.status}"
        raise RemoteError(f"{what} on {executor.label} failed: {detail}")
    return result


def probe(executor: Executor, path: str, lock_info: str | None = None) -> TargetState:
    """Run the preflight (read-only unless lock_info asks it to take the lock) and parse it."""
    result = _checked(executor, preflight_script(path, lock_info), "inspecting the target")
    return parse_state(path, result.stdout.decode(errors="replace"))


class _Locked:
    """The deploy lock on a target path (a with-block, or acquire/release across phases)."""

    def __init__(self, executor: Executor, path: str, provenance: Provenance, action: str) -> None:
        self.executor = executor
        self.path = path
        self.token = secrets.token_hex(8)
        self.info = (
            f"{action} by {provenance.by} since {_now()}"
            + (f" commit {provenance.commit[:12]}" if provenance.commit else "")
            + (f" {provenance.pipeline}" if provenance.pipeline else "")
            + f" token {self.token}"
        )

    def acquire(self) -> _Locked:
        """Create the layout and take the lock, or raise LockError naming the holder."""
        result = self.executor.run(prepare_script(self.path, self.info))
        if result.status == RemoteStatus.LOCK_HELD:
            held = result.stdout.decode(errors="replace").partition("lock=")[2].strip()
            raise lock_error(held, self.path, self.executor.label)
        if result.status != 0:
            raise RemoteError(
                f"preparing {self.path} on {self.executor.label} failed: {result.stderr_line}"
                " — check the path and its permissions"
            )
        return self

    def release(self) -> None:
        """Drop the lock if it is still ours (best effort: a dead connection leaves it for unlock)."""
        with contextlib.suppress(DeployerError):
            self.executor.run(unlock_script(self.path, self.token), timeout=30)

    def __enter__(self) -> _Locked:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


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
        self.outcome = Outcome(self.label, "pending")
        self._lock: _Locked | None = None

    def _say(self, text: str) -> None:
        self.reporter.target(self.label, text)

    def stage(self) -> None:
        """Check the target, take the lock, upload the release and run the before hooks."""
        lock = (
            None
            if self.settings.dry_run
            else _Locked(self.executor, self.settings.path, self.provenance, "deploy")
        )
        state = probe(self.executor, self.settings.path, lock.info if lock else None)
        if lock is not None and state.locked:
            self._lock = lock
        try:
            check_ready(state, self.label, self.artifact.total_size)
            if lock is not None and not state.locked:
                raise lock_error(state.lock or "taken a moment ago", state.path, self.label)
        except DeployerError:
            self._unlock()
            raise
        self.state = state
        self.path = state.path
        release_id = new_release_id(datetime.now(timezone.utc), state.releases)
        self.layout = Layout(self.path, release_id)
        self.outcome.release, self.outcome.previous = release_id, state.current
        self.outcome.pruned = plan_prune(
            [*state.releases, release_id], release_id, self.settings.keep
        )
        if self.settings.dry_run:
            previous = parse_manifest(list(state.manifest)) if self.settings.transfer.delta else {}
            delta = plan_delta(self.payload.digests, previous)
            _describe_plan(
                self.reporter, self.label, self.artifact, self.settings, state, release_id, delta
            )
            self.outcome.status = "planned"
            return
        self.env = {
            "DEPLOYER_RELEASE_DIR": self.layout.release_dir,
            "DEPLOYER_PREVIOUS_RELEASE_DIR": f"{self.path}/releases/{state.current}"
            if state.current
            else "",
            "DEPLOYER_PATH": self.path,
            "DEPLOYER_RELEASE_ID": release_id,
        }
        self.runner = HookRunner(
            self.executor, self.reporter, self.settings.hooks, state.has_timeout
        )
        self.history = HistoryEntry(
            "deploy", release_id, state.current, _now(), self.provenance.by,
            self.provenance.commit, self.provenance.ref, self.provenance.pipeline,
        )  # fmt: skip
        try:
            upload = Upload(
                self.executor, self.payload, self.layout, state.current, state.manifest,
                self.settings.transfer, self.reporter, self.reconnect, self._relock,
            )  # fmt: skip
            report = upload.run(self.settings.shared)
            self.executor = self.runner.executor = upload.executor  # a retry may have reconnected
            assert self._lock is not None  # taken by the probe above
            self._lock.executor = upload.executor
            self.outcome.uploaded_bytes = report.wire_bytes
            self.outcome.details["transfer"] = asdict(report)
            for command in self.settings.hooks.before:
                self.runner.require("before", command, self.layout.release_dir, self.env)
        except DeployerError as exc:
            self.abort(str(exc))
            raise
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM when CI cancels the job
            self._undo_quietly(lambda: self.abort("interrupted"))
            raise
        self.outcome.status = "staged"

    def activate(self, *, last: bool = False) -> None:
        """Switch current to the staged release, run after hooks and the healthcheck.

        With `last` (no other target can fail after this switch) and nothing to run after it,
        the deploy is recorded, pruned and unlocked in the same round trip as the switch.
        """
        if self.settings.dry_run:
            return
        hooks = self.settings.hooks
        switch = switch_script(self.path, self.layout.release_id)
        if last and not hooks.after and not hooks.healthcheck:
            result = self.executor.run(
                switch_then_script(switch, self._finish_script()), timeout=120
            )
            if result.status not in (0, RemoteStatus.FINISH_FAILED):
                detail = result.stderr_line or f"exit status {result.status}"
                raise RemoteError(f"switching current on {self.label} failed: {detail}")
            self._say(f"switched current -> releases/{self.layout.release_id}")
            self._finished(result)
            self.outcome.status = "switched"
            return
        _checked(self.executor, switch, "switching current")
        self._say(f"switched current -> releases/{self.layout.release_id}")
        try:
            for command in self.settings.hooks.after:
                self.runner.require("after", command, self.layout.release_dir, self.env)
            _healthcheck(self.runner, self.settings.hooks, self.layout.release_dir, self.env)
        except HookError as exc:
            restored = self.revert(str(exc))
            raise HookError(f"{exc} — {restored}") from exc
        except (
            KeyboardInterrupt
        ):  # the new release was never confirmed healthy: put the old one back
            self._undo_quietly(lambda: self.revert("interrupted"))
            raise
        self.outcome.status = "switched"

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
            self.outcome.status = "deployed"
            self._say(
                f"deployed {self.layout.release_id} in {time.monotonic() - self.started:.1f} s"
            )
        self.outcome.seconds = time.monotonic() - self.started
        return self.outcome

    def _finish_script(self) -> str:
        """Record, prune and unlock (the release is live whatever happens here)."""
        assert self._lock is not None
        return (
            append_history_script(self.path, self.history)
            + remove_releases_script(self.path, self.outcome.pruned)
            + unlock_script(self.path, self._lock.token)
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
            _discard(self.executor, self.path, self.layout.release_id, self.history, reason)
            self._say(
                f"release {self.layout.release_id} discarded"
                + ("" if was_live else "; the live release was never touched")
            )
        finally:
            self._unlock()
        self.outcome.status = "aborted"

    def revert(self, reason: str) -> str:
        """Switch back to the release that was live before, re-run after hooks there, discard ours."""
        restored = _switch_back(
            self.executor,
            self.runner,
            self.settings.hooks,
            self.path,
            self.state.current,
            self.env,
            self.reporter,
        )
        self.abort(reason, was_live=True)
        self.outcome.status = "reverted"
        return restored

    def _relock(self, executor: Executor) -> None:
        """After a reconnect, make sure the lock we hold is still ours."""
        assert self._lock is not None
        result = executor.run(relock_script(self.path, self._lock.token))
        if result.status != 0:
            held = result.stdout.decode(errors="replace").partition("lock=")[2].strip()
            raise lock_error(held, self.path, self.label)

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


def _describe_plan(
    reporter: Reporter,
    label: str,
    artifact: Artifact,
    settings: PushSettings,
    state: TargetState,
    release_id: str,
    delta: DeltaPlan,
) -> None:
    def say(text: str) -> None:
        reporter.target(label, text)

    say(
        f"dry run: connected as {state.login}; {state.path} is writable; {human_size(state.free_bytes)} free"
    )
    say(
        f"would upload {len(delta.send)} of {artifact.file_count} files ({human_size(delta.send_bytes)}) to"
        f" {state.path}/releases/{release_id}"
        + (
            f", reusing {len(delta.reuse)} unchanged files from {state.current}"
            if delta.reuse
            else ""
        )
    )
    say(
        f"live release: {state.current or '(none: first deploy)'}; lock: {'held' if state.lock else 'free'}"
    )
    for kind, commands in (("before", settings.hooks.before), ("after", settings.hooks.after)):
        for command in commands:
            say(f"would run {kind} hook: {command}")
    if settings.hooks.healthcheck:
        say(f"would run healthcheck: {settings.hooks.healthcheck}")
    pruned = plan_prune([*state.releases, release_id], release_id, settings.keep)
    if pruned:
        say(f"would prune: {', '.join(pruned)}")
    say("dry run: nothing was changed")


def _healthcheck(runner: HookRunner, hooks: HookSettings, cwd: str, env: dict[str, str]) -> None:
    if not hooks.healthcheck:
        return
    attempts = hooks.healthcheck_retries + 1
    for attempt in range(1, attempts + 1):
        result = runner.run("healthcheck", hooks.healthcheck, cwd, env)
        if result.status == 0:
            return
        if attempt < attempts:
            runner.reporter.target(
                runner.executor.label,
                f"healthcheck failed (attempt {attempt}/{attempts}), retrying in {hooks.healthcheck_interval:g} s",
            )
            time.sleep(hooks.healthcheck_interval)
    raise HookError(
        failure_message(
            "healthcheck", hooks.healthcheck, result.status, runner.executor.label, hooks.timeout
        )
        + f" after {attempts} attempt(s)"
    )


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
    _checked(executor, switch_script(path, previous or None), "switching back")
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
        "failed", history.release, history.previous, _now(), history.by,
        history.commit, history.ref, history.pipeline, reason,
    )  # fmt: skip
    executor.run(append_history_script(path, failed))


def rollback_target(
    executor: Executor,
    path: str,
    release: str | None,
    hooks: HookSettings,
    provenance: Provenance,
    reporter: Reporter,
) -> Outcome:
    """Switch current to the previous release (or a named one) and run after hooks there."""
    label = executor.label
    started = time.monotonic()
    state = probe(executor, path)
    if not state.exists or not state.releases:
        raise RemoteError(f"no releases under {path} on {label} — nothing to roll back to")
    target = release or state.previous
    if not target:
        raise RemoteError(
            f"no release older than {state.current or 'current'} on {label} — nothing to roll back to"
        )
    if target not in state.releases:
        raise RemoteError(f"release {target} does not exist on {label} — see deployer releases")
    with _Locked(executor, state.path, provenance, "rollback"):
        _checked(executor, switch_script(state.path, target), "switching current")
        reporter.target(
            label, f"rolled back: current -> releases/{target} (was {state.current or 'none'})"
        )
        env = {
            "DEPLOYER_RELEASE_DIR": f"{state.path}/releases/{target}",
            "DEPLOYER_PREVIOUS_RELEASE_DIR": f"{state.path}/releases/{state.current}"
            if state.current
            else "",
            "DEPLOYER_PATH": state.path,
            "DEPLOYER_RELEASE_ID": target,
        }
        runner = HookRunner(executor, reporter, hooks, state.has_timeout)
        for command in hooks.after:
            runner.require("after", command, env["DEPLOYER_RELEASE_DIR"], env)
        entry = HistoryEntry(
            "rollback", target, state.current, _now(), provenance.by,
            provenance.commit, provenance.ref, provenance.pipeline,
        )  # fmt: skip
        executor.run(append_history_script(state.path, entry))
    return Outcome(label, "rolled-back", release=target, previous=state.current,
                   seconds=time.monotonic() - started)  # fmt: skip


def list_target(executor: Executor, path: str, history_lines: int = 50) -> Outcome:
    """Releases on a target with the live one marked, plus recent history."""
    state = probe(executor, path)
    history = parse_history(
        executor.run(read_history_script(state.path, history_lines)).stdout.decode(errors="replace")
    )
    deployed = {h["release"]: h for h in history if h.get("action") == "deploy" and "release" in h}
    releases = [
        {
            "id": rid,
            "live": rid == state.current,
            **{k: deployed.get(rid, {}).get(k, "") for k in ("by", "commit", "time")},
        }
        for rid in reversed(state.releases)
    ]
    return Outcome(
        executor.label, "listed", release=state.current,
        details={"path": state.path, "releases": releases, "history": history, "lock": state.lock},
    )  # fmt: skip


def unlock_target(executor: Executor, path: str) -> Outcome:
    """Remove a stale deploy lock."""
    state = probe(executor, path)
    executor.run(unlock_script(state.path, None))
    return Outcome(executor.label, "unlocked", details={"was": state.lock})
