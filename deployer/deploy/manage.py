"""Managing a target's releases: rollback, list, unlock."""

from __future__ import annotations

import time

from deployer.deploy.hooks import HookRunner, HookSettings
from deployer.deploy.lock import DeployLock, utc_now
from deployer.deploy.outcome import Outcome, Provenance, Status
from deployer.errors import RemoteError
from deployer.output import Reporter
from deployer.remote.executor import Executor
from deployer.remote.history import (
    HistoryEntry,
    append_history_script,
    parse_history,
    read_history_script,
)
from deployer.remote.layout import Layout, hook_environment
from deployer.remote.lock import parse_lock_info, unlock_script
from deployer.remote.probe import probe, run_checked
from deployer.remote.state import TargetState, check_current
from deployer.remote.switch import (
    switch_script,
)
from deployer.remote.tools import check_tools


def rollback_target(
    executor: Executor,
    path: str,
    release: str | None,
    hooks: HookSettings,
    provenance: Provenance,
    reporter: Reporter,
    lock_token: str | None = None,
) -> Outcome:
    """Switch current to the previous release (or a named one) and run after hooks there.

    With `lock_token`, the lock a deploy left behind when it lost the target after its switch is
    taken over, and the release it left live unconfirmed is recorded as failed.
    """
    label = executor.label
    started = time.monotonic()
    state = probe(executor, path)
    target = rollback_to(state, release, label)
    check_tools(state.tools, label, state.path)  # the switch, the hooks and the history need them
    left = parse_lock_info(state.lock) if lock_token else None
    with DeployLock(executor, state.path, provenance, "rollback", adopt=lock_token):
        run_checked(executor, switch_script(state.path, target), "switching current")
        reporter.target(
            label, f"rolled back: current -> releases/{target} (was {state.current or 'none'})"
        )
        env = hook_environment(Layout(state.path, target), state.current)
        runner = HookRunner(executor, reporter, hooks, state.has_timeout)
        for command in hooks.after:
            runner.require("after", command, env["DEPLOYER_RELEASE_DIR"], env)
        record = ""
        if left is not None and left.switched_to and left.switched_to != target:
            unconfirmed = HistoryEntry(
                "failed", left.switched_to, left.previous, utc_now(), provenance.by,
                provenance.commit, provenance.ref, provenance.pipeline,
                f"live unconfirmed since {left.switched_at}, rolled back to {target}",
            )  # fmt: skip
            record = append_history_script(state.path, unconfirmed)
            reporter.target(label, f"took over the lock left by: {left.text}")
        entry = HistoryEntry(
            "rollback", target, state.current, utc_now(), provenance.by,
            provenance.commit, provenance.ref, provenance.pipeline,
        )  # fmt: skip
        executor.run(record + append_history_script(state.path, entry))
    return Outcome(label, Status.ROLLED_BACK, release=target, previous=state.current,
                   seconds=time.monotonic() - started)  # fmt: skip


def rollback_to(state: TargetState, release: str | None, label: str) -> str:
    """The release a rollback switches to (the named one, else the one before current), or why none."""
    check_current(state, label)
    if not state.exists or not state.releases:
        raise RemoteError(f"no releases under {state.path} on {label} — nothing to roll back to")
    target = release or state.previous
    if not target:
        raise RemoteError(
            f"no release older than {state.current or 'current'} on {label} — nothing to roll back to"
        )
    if target not in state.releases:
        raise RemoteError(f"release {target} does not exist on {label} — see deployer releases")
    return target


def list_target(executor: Executor, path: str, history_lines: int = 50) -> Outcome:
    """Releases on a target with the live one marked, plus recent history."""
    state = probe(executor, path)
    check_current(state, executor.label)
    history = parse_history(
        executor.run(read_history_script(state.path, history_lines)).stdout.decode(errors="replace")
    )
    return listing(executor.label, state, history)


def listing(label: str, state: TargetState, history: list[dict[str, str]]) -> Outcome:
    """The outcome of `deployer releases`: every release (newest first), who deployed it, the lock."""
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
        label, Status.LISTED, release=state.current,
        details={"path": state.path, "releases": releases, "history": history, "lock": state.lock},
    )  # fmt: skip


def unlock_target(executor: Executor, path: str) -> Outcome:
    """Remove a stale deploy lock, saying what the deploy that left it had done."""
    state = probe(executor, path)
    executor.run(unlock_script(state.path, None))
    details: dict[str, object] = {"was": state.lock}
    left = parse_lock_info(state.lock)
    if left.switched_to and left.switched_to == state.current:
        details["unconfirmed"] = left.switched_to
        details["note"] = (
            f"release {left.switched_to} went live at {left.switched_at} and was never confirmed"
            + (
                f" — check it; `deployer rollback --release {left.previous}` with the same route"
                f" and --path switches back to {left.previous}"
                if left.previous
                else " — check it (there is no earlier release)"
            )
        )
    return Outcome(executor.label, Status.UNLOCKED, details=details)
