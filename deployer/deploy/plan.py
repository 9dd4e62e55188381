"""The dry run: what a push would do on a target, said line by line."""

from __future__ import annotations

from deployer.artifact.manifest import DeltaPlan
from deployer.artifact.model import Artifact
from deployer.deploy.settings import PushSettings
from deployer.output import Reporter, human_size
from deployer.remote.permissions import describe as describe_permissions
from deployer.remote.state import TargetState
from deployer.remote.switch import (
    plan_prune,
)


def describe_plan(
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
    for line in describe_permissions(settings.permissions):
        say(line)
    pruned = plan_prune([*state.releases, release_id], release_id, settings.keep, state.failed)
    if pruned:
        say(f"would prune: {', '.join(pruned)}")
    say("dry run: nothing was changed")


# --dry-run names each excluded path up to this many (then a count; --json lists them all)
LISTED_EXCLUDED = 200


def describe_excluded(reporter: Reporter, artifact: Artifact, *, dry_run: bool) -> None:
    """Say what .deployignore and --exclude leave out: every path in a dry run, else a summary."""
    excluded = artifact.excluded
    if not excluded:
        return
    if not dry_run:
        shown = ", ".join(excluded[:5]) + (
            f", … ({len(excluded) - 5} more)" if len(excluded) > 5 else ""
        )
        reporter.line(f"excluded from the release (.deployignore, --exclude): {shown}")
        return
    for path in excluded[:LISTED_EXCLUDED]:
        reporter.line(f"dry run: would exclude {path}")
    if len(excluded) > LISTED_EXCLUDED:
        reporter.line(
            f"dry run: would exclude {len(excluded) - LISTED_EXCLUDED} more paths (--json lists them all)"
        )
