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
from deployer.remote.lock import unlock_script
from deployer.remote.probe import probe, run_checked
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
    check_tools(state.tools, label, state.path)  # the switch, the hooks and the history need them
    with DeployLock(executor, state.path, provenance, "rollback"):
        run_checked(executor, switch_script(state.path, target), "switching current")
        reporter.target(
            label, f"rolled back: current -> releases/{target} (was {state.current or 'none'})"
        )
        env = hook_environment(Layout(state.path, target), state.current)
        runner = HookRunner(executor, reporter, hooks, state.has_timeout)
        for command in hooks.after:
            runner.require("after", command, env["DEPLOYER_RELEASE_DIR"], env)
        entry = HistoryEntry(
            "rollback", target, state.current, utc_now(), provenance.by,
            provenance.commit, provenance.ref, provenance.pipeline,
        )  # fmt: skip
        executor.run(append_history_script(state.path, entry))
    return Outcome(label, Status.ROLLED_BACK, release=target, previous=state.current,
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
        executor.label, Status.LISTED, release=state.current,
        details={"path": state.path, "releases": releases, "history": history, "lock": state.lock},
    )  # fmt: skip


def unlock_target(executor: Executor, path: str) -> Outcome:
    """Remove a stale deploy lock."""
    state = probe(executor, path)
    executor.run(unlock_script(state.path, None))
    return Outcome(executor.label, Status.UNLOCKED, details={"was": state.lock})
