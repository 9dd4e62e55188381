"""The dry run: what a push would do on a target, said line by line."""

from __future__ import annotations

from deployer.artifact.manifest import DeltaPlan
from deployer.artifact.model import Artifact
from deployer.deploy.settings import PushSettings
from deployer.output import Reporter, human_size
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
    pruned = plan_prune([*state.releases, release_id], release_id, settings.keep, state.failed)
    if pruned:
        say(f"would prune: {', '.join(pruned)}")
    say("dry run: nothing was changed")
