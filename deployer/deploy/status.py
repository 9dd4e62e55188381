"""`deployer status`: what is live on each target, and whether the targets agree (drift).

Release ids are each target's own (the time its upload began), so targets are compared by the
digest of their live release's manifest: the same files with the same modes are the same
release, whatever it is called there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from deployer.deploy.outcome import Outcome, Status
from deployer.remote.executor import Executor
from deployer.remote.live import LiveState, live_script, parse_live
from deployer.remote.probe import run_answered


def live_release(state: LiveState) -> dict[str, str] | None:
    """The live release and where it came from: its deploy (commit, pipeline, who, when) and,
    when a rollback made it live again since, who did that and when."""
    if not state.current:
        return None
    deploys = [h for h in state.history if h.get("action") == "deploy"]
    switches = [h for h in state.history if h.get("action") in ("deploy", "rollback")]
    built = deploys[-1] if deploys else {}
    last = switches[-1] if switches else {}
    rolled_back = last.get("action") == "rollback"
    return {
        "release": state.current,
        "commit": built.get("commit", ""),
        "ref": built.get("ref", ""),
        "pipeline": built.get("pipeline", ""),
        "by": built.get("by", ""),
        "at": built.get("time", ""),
        "rolled_back_by": last.get("by", "") if rolled_back else "",
        "rolled_back_at": last.get("time", "") if rolled_back else "",
        "content": state.content,
        "present": "yes" if state.current in state.releases else "no",
    }


def status_target(executor: Executor, path: str) -> Outcome:
    """One read-only round trip: the live release, its provenance, the releases and the lock."""
    text = run_answered(executor, live_script(path), "reading the live release")
    return inspected(executor.label, parse_live(path, text))


def inspected(label: str, state: LiveState) -> Outcome:
    """The outcome `deployer status` reports for one target (over the shell or SFTP)."""
    return Outcome(
        label, Status.INSPECTED, release=state.current,
        details={
            "path": state.path,
            "exists": state.exists,
            "live": live_release(state),
            "lock": {"held": state.locked, "info": state.lock},
            "releases": list(state.releases),
        },
    )  # fmt: skip


@dataclass(frozen=True)
class Group:
    """Targets running the same release (the same manifest digest), first target's names."""

    targets: tuple[str, ...]
    release: str  # '' when nothing is live
    commit: str = ""
    content: str = ""

    def describe(self) -> str:
        """'20261130T101502Z (commit 0123456789ab)' or 'no release'."""
        if not self.release:
            return "no release"
        return self.release + (f" (commit {self.commit[:12]})" if self.commit else "")


@dataclass(frozen=True)
class Drift:
    """How the answering targets' live releases compare."""

    groups: tuple[Group, ...]  # the largest first
    unanswered: tuple[str, ...] = ()
    differing: tuple[str, ...] = field(default=())  # targets not in the majority (all if none)

    @property
    def drifted(self) -> bool:
        """Some answering targets run another release than the others."""
        return len(self.groups) > 1

    def to_document(self) -> dict[str, object]:
        """For --json."""
        return {
            "drifted": self.drifted,
            "differing": list(self.differing),
            "unanswered": list(self.unanswered),
            "groups": [
                {"targets": list(g.targets), "release": g.release, "commit": g.commit,
                 "content": g.content}
                for g in self.groups
            ],
        }  # fmt: skip


def _same_release(outcome: Outcome) -> str:
    """What makes two targets' live releases the same: the manifest's digest (the files), else
    the commit, else nothing (a release known by its id alone is compared with nothing)."""
    live = outcome.details.get("live")
    if not isinstance(live, dict):
        return ""
    return live["content"] or (f"commit {live['commit']}" if live["commit"] else outcome.target)


def _group(members: Sequence[Outcome]) -> Group:
    live = members[0].details.get("live")
    known: dict[str, str] = live if isinstance(live, dict) else {}
    return Group(
        tuple(o.target for o in members),
        known.get("release", ""),
        known.get("commit", ""),
        known.get("content", ""),
    )


def find_drift(outcomes: Sequence[Outcome]) -> Drift:
    """Group the answering targets by what is live; the rest are unanswered."""
    keyed: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.status == Status.INSPECTED:
            keyed.setdefault(_same_release(outcome), []).append(outcome)
    groups = sorted((_group(m) for m in keyed.values()), key=lambda g: len(g.targets), reverse=True)
    differing: list[str] = []
    if len(groups) > 1:
        majority = len(groups[0].targets) > len(groups[1].targets)
        differing = [t for g in groups[1 if majority else 0 :] for t in g.targets]
    unanswered = tuple(o.target for o in outcomes if o.status != Status.INSPECTED)
    return Drift(tuple(groups), unanswered, tuple(differing))


def describe_drift(drift: Drift) -> str | None:
    """One plain line about drift across the targets (None for a single answering target)."""
    answered = sum(len(g.targets) for g in drift.groups)
    left_out = f"; {', '.join(drift.unanswered)} did not answer" if drift.unanswered else ""
    if answered < 2:
        return None
    if not drift.drifted:
        return f"no drift: all {answered} targets run {drift.groups[0].describe()}{left_out}"
    first, second = drift.groups[0], drift.groups[1]
    if len(first.targets) > len(second.targets):
        others = "; ".join(
            f"{', '.join(g.targets)} run{'s' if len(g.targets) == 1 else ''} {g.describe()}"
            for g in drift.groups[1:]
        )
        return f"drift: {others} — the other {len(first.targets)} run {first.describe()}{left_out}"
    kinds = "; ".join(f"{', '.join(g.targets)}: {g.describe()}" for g in drift.groups)
    return f"drift: the {answered} targets run {len(drift.groups)} different releases — {kinds}{left_out}"
