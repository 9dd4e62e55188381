"""The only target of a push, without hooks: one command builds, switches, records and unlocks.

Real sh and tar on local targets. A lost reply is made by running the command (whole, or up to
where the test wants the target to have got) and then raising the ConnectError a dead link
raises; the deploy must reconnect, ask the target where it stands, and finish from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from deployer.deploy import upload as upload_module
from deployer.deploy.at_once import target_deploy
from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Provenance, Status
from deployer.deploy.payload import Payload
from deployer.deploy.settings import PushSettings
from deployer.deploy.target import TargetDeploy
from deployer.errors import ConnectError, LockError
from deployer.output import Reporter
from deployer.remote.executor import OutputSink, RunResult
from deployer.remote.local import LocalExecutor
from deployer.remote.shell import q
from deployer.remote.stage import PUBLISHED

QUIET = Reporter(tty=False, quiet=True)


class Target(LocalExecutor):
    """A local target that counts commands; `lose` decides what becomes of the stage command."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.commands: list[str] = []
        self.lose: Callable[[str, Callable[[BinaryIO], object] | None], RunResult] | None = None

    def run(
        self,
        script: str,
        *,
        upload: Callable[[BinaryIO], object] | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        self.commands.append(script)
        if self.lose is not None and q(PUBLISHED.decode()) in script:
            lose, self.lose = self.lose, None
            return lose(script, upload)
        return super().run(script, upload=upload, on_output=on_output, timeout=timeout)


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_module, "RETRY_DELAYS", (0.0,))


def push(
    target: Target, path: Path, payload: Payload, *, sole: bool = True, **hooks: object
) -> TargetDeploy:
    settings = PushSettings(path=str(path), hooks=HookSettings(**hooks))  # type: ignore[arg-type]
    deploy = target_deploy(target, payload, settings, Provenance("t"), QUIET,
                           reconnect=lambda: target, sole=sole)  # fmt: skip
    deploy.stage()
    deploy.activate(last=True)
    deploy.finish()
    return deploy


def live(path: Path) -> str:
    return os.readlink(path / "current").removeprefix("releases/")


def history(path: Path) -> list[str]:
    return (path / ".deployer" / "history").read_text().splitlines()


def test_the_only_target_without_hooks_takes_two_commands(tmp_path: Path, payload: Payload) -> None:
    path = tmp_path / "app"
    alone = Target("app")
    deploy = push(alone, path, payload)
    assert deploy.outcome.status == Status.DEPLOYED
    assert len(alone.commands) == 2  # the probe (and lock), then build + switch + record + unlock
    assert live(path) == deploy.outcome.release and (path / "current" / "index.html").exists()
    assert not (path / ".deployer" / "lock").exists()
    assert len(history(path)) == 1 and '"action":"deploy"' in history(path)[0]
    # in a fleet the switch stays a command of its own (probe, build, switch + record + unlock),
    # and with a hook too (probe, build, switch, the hook, record + unlock)
    for options, commands in (({"sole": False}, 3), ({"after": ("true",)}, 5)):
        target = Target("app")
        push(target, path, payload, **options)
        assert len(target.commands) == commands, options


@pytest.mark.parametrize("got_to", ["finished", "switched", "published", "cut"])
def test_a_lost_reply_is_settled_by_asking_the_target(
    tmp_path: Path, payload: Payload, got_to: str
) -> None:
    path = tmp_path / "app"
    before = push(Target("app"), path, payload).outcome.release
    target = Target("app")
    finish: list[str] = []

    def lose(script: str, upload: Callable[[BinaryIO], object] | None) -> RunResult:
        if got_to == "cut":  # the link died mid-stream: nothing ran on the target
            raise ConnectError("lost the connection to app: the stream was cut")
        if got_to == "published":
            script = script.split(f"printf '%s\\n' {q(PUBLISHED.decode())}")[0]
        elif got_to == "switched":
            assert finish[0] in script
            script = script.replace(finish[0], "true\n")
        LocalExecutor.run(target, script, upload=upload)
        raise ConnectError("lost the connection to app: the reply never came")

    target.lose = lose
    settings = PushSettings(path=str(path))
    deploy = target_deploy(target, payload, settings, Provenance("t"), QUIET,
                           reconnect=lambda: target, sole=True)  # fmt: skip
    original = deploy._finish_script

    def remember() -> str:
        finish.append(original())
        return finish[-1]

    deploy._finish_script = remember  # type: ignore[method-assign]
    deploy.stage()
    deploy.activate(last=True)
    deploy.finish()
    release = deploy.outcome.release
    assert deploy.outcome.status == Status.DEPLOYED
    assert live(path) == release != before
    assert os.listdir(path / "current") == ["index.html"]  # built once, and nothing else
    assert (path / "current" / "index.html").read_text() == "hi"
    assert not (path / ".deployer" / "lock").exists()
    records = [line for line in history(path) if f'"release":"{release}"' in line]
    assert len(records) == 1 and '"action":"deploy"' in records[0], history(path)
    assert sorted(os.listdir(path / "releases")) == sorted([before, release])


def test_a_lock_taken_over_before_the_switch_leaves_the_live_release(
    tmp_path: Path, payload: Payload
) -> None:
    path = tmp_path / "app"
    before = push(Target("app"), path, payload).outcome.release
    target = Target("app")

    def steal(script: str, upload: Callable[[BinaryIO], object] | None) -> RunResult:
        # `deployer unlock` ran, and another deploy took the lock while this one uploaded
        (path / ".deployer" / "lock" / "info").write_text("deploy by someone else token 99999999\n")
        return LocalExecutor.run(target, script, upload=upload)

    target.lose = steal
    with pytest.raises(LockError, match="deploy by someone else"):
        push(target, path, payload)
    assert live(path) == before and os.listdir(path / "releases") == [before]
    assert (path / ".deployer" / "lock" / "info").read_text().startswith("deploy by someone else")


@pytest.mark.parametrize("got_to", ["finished", "switched"])
def test_an_interrupt_while_the_one_command_ran_undoes_only_what_is_unfinished(
    tmp_path: Path, payload: Payload, got_to: str
) -> None:
    """SIGTERM lands while the command runs: a deploy the target had recorded stays, and says
    so; one that only switched is switched back."""
    path = tmp_path / "app"
    before = push(Target("app"), path, payload).outcome.release
    target = Target("app")
    settings = PushSettings(path=str(path))
    deploy = target_deploy(target, payload, settings, Provenance("t"), QUIET,
                           reconnect=lambda: target, sole=True)  # fmt: skip

    def interrupt(script: str, upload: Callable[[BinaryIO], object] | None) -> RunResult:
        if got_to == "switched":
            script = script.replace(deploy._finish_script(), "true\n")
        LocalExecutor.run(target, script, upload=upload)
        raise KeyboardInterrupt

    target.lose = interrupt
    with pytest.raises(KeyboardInterrupt):
        deploy.stage()
    release = deploy.outcome.release
    assert not (path / ".deployer" / "lock").exists()
    if got_to == "finished":
        assert deploy.outcome.status == Status.DEPLOYED and live(path) == release
        assert sum(f'"release":"{release}"' in line for line in history(path)) == 1
    else:
        assert deploy.outcome.status == Status.REVERTED and live(path) == before
        assert os.listdir(path / "releases") == [before]
