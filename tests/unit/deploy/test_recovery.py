"""After the switch, every failure ends switched back or left live with its lock and one line
(real sh and tar on local targets; bugs and interrupts injected where the code would meet them)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Outcome, Provenance, Status
from deployer.deploy.payload import Payload
from deployer.deploy.recovery import retrying, rollback_command
from deployer.deploy.settings import PushSettings
from deployer.deploy.target import TargetDeploy
from deployer.errors import ConnectError, ExitCode, HookError, InternalError, UnconfirmedError
from deployer.output import Reporter
from deployer.push.fleet import FleetSettings, push_fleet
from deployer.remote.local import LocalExecutor


class Faulty(Reporter):
    """A reporter that raises once, when a target's line contains `at` (a fault at that moment)."""

    def __init__(self, at: str, fault: BaseException, label: str = "") -> None:
        super().__init__(tty=False, quiet=True)
        self.at, self.fault, self.label = at, fault, label
        self.fired = False

    def target(self, label: str, text: str) -> None:
        if not self.fired and self.at in text and label.startswith(self.label):
            self.fired = True
            raise self.fault


def deploy(path: Path, payload: Payload, reporter: Reporter, **hooks: object) -> TargetDeploy:
    settings = PushSettings(path=str(path), hooks=HookSettings(**hooks))  # type: ignore[arg-type]
    return TargetDeploy(LocalExecutor(path.name), payload, settings, Provenance("t"), reporter)


def live(path: Path) -> str:
    return os.readlink(path / "current").removeprefix("releases/")


def first_release(path: Path, payload: Payload) -> str:
    target = deploy(path, payload, Reporter(tty=False, quiet=True))
    target.stage()
    target.activate(last=True)
    target.finish()
    time.sleep(1.1)  # the next release gets another id
    return live(path)


@pytest.mark.parametrize(
    "fault", [ValueError("a bug"), KeyboardInterrupt()], ids=["bug", "sigterm"]
)
def test_any_failure_after_the_switch_switches_back(
    tmp_path: Path, payload: Payload, fault: BaseException
) -> None:
    path = tmp_path / "app"
    before = first_release(path, payload)
    target = deploy(path, payload, Faulty("switched current ->", fault), after=("true",))
    target.stage()
    with pytest.raises(type(fault)):
        target.activate()
    assert target.outcome.status == Status.REVERTED
    assert live(path) == before and os.listdir(path / "releases") == [before]
    assert not (path / ".deployer" / "lock").exists()
    assert '"action":"failed"' in (path / ".deployer" / "history").read_text()


def test_a_release_that_cannot_be_switched_back_stays_live_with_its_lock(
    tmp_path: Path, payload: Payload
) -> None:
    path = tmp_path / "app"
    before = first_release(path, payload)
    # the after hook takes the previous release away and fails: there is nothing to go back to
    target = deploy(path, payload, Reporter(tty=False, quiet=True),
                    after=('rm -rf "$DEPLOYER_PREVIOUS_RELEASE_DIR"; exit 3',))  # fmt: skip
    target.stage()
    new = target.staging.layout.release_id
    with pytest.raises(UnconfirmedError) as raised:
        target.activate()
    message = str(raised.value)
    assert raised.value.exit_code == ExitCode.UNCONFIRMED == 14
    assert message.startswith(f"app: release {new} is live but unconfirmed — after hook")
    assert f"release {before} does not exist" in message
    assert f"the release before it is {before}" in message
    assert f"`deployer rollback --to app --path {path} --release {before} --lock-token" in message
    assert target.outcome.status == Status.UNCONFIRMED
    assert live(path) == new and (path / "current").resolve().is_dir()
    info = (path / ".deployer" / "lock" / "info").read_text()
    assert f"switched current to releases/{new}" in info and f"(previous: {before})" in info
    target.finish()  # nothing more happens to a target left live
    assert (path / ".deployer" / "lock").exists()


def test_a_bug_on_one_target_of_a_fleet_switches_the_others_back(
    tmp_path: Path, payload: Payload
) -> None:
    names = ["a", "b", "c"]
    before = {n: first_release(tmp_path / n, payload) for n in names}
    reporter = Faulty("switched current ->", ValueError("a bug"), label="b")

    def start(index: int) -> TargetDeploy:
        return deploy(tmp_path / names[index], payload, reporter, healthcheck="true")

    outcomes, error = push_fleet(names, start, FleetSettings(parallel=1))
    assert isinstance(error, InternalError) and "ValueError: a bug" in str(error)
    assert [o.status for o in outcomes] == ["reverted", "failed", "reverted"]
    assert {n: live(tmp_path / n) for n in names} == before
    assert not any((tmp_path / n / ".deployer" / "lock").exists() for n in names)


def test_a_hook_failure_still_says_what_was_restored(tmp_path: Path, payload: Payload) -> None:
    path = tmp_path / "app"
    before = first_release(path, payload)
    target = deploy(path, payload, Reporter(tty=False, quiet=True), healthcheck="false",
                    healthcheck_retries=0)  # fmt: skip
    target.stage()
    with pytest.raises(HookError, match=f"switched back to {before}$"):
        target.activate()


def test_a_push_only_moves_forward() -> None:
    outcome = Outcome("t", Status.STAGED)
    outcome.advance(Status.SWITCHING)
    with pytest.raises(AssertionError, match="cannot go from switching to staged"):
        outcome.advance(Status.STAGED)
    assert Status.SWITCHING.live and Status.CONFIRMED.live and not Status.REVERTED.live


def test_retrying_reconnects_a_bounded_number_of_times() -> None:
    calls, reconnects, notes = [], [], []

    def action() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectError("gone")
        return "done"

    assert retrying(action, lambda: reconnects.append(1), reconnect_first=True,
                    on_retry=lambda e, d: notes.append(d), delays=(0, 0)) == "done"  # fmt: skip
    assert len(calls) == 3 and len(reconnects) == 3 and notes == [0, 0]
    attempts = []

    def never() -> None:
        attempts.append(1)
        raise ConnectError("still gone")

    with pytest.raises(ConnectError, match="still gone"):
        retrying(never, None, reconnect_first=False, on_retry=lambda e, d: None, delays=(0, 0))
    assert len(attempts) == 3  # the first try and one after each delay


def test_the_rollback_command_is_quoted() -> None:
    command = rollback_command("--to d@h --jump j@h", "/srv/my app", "20260101T000000Z", "ab12",
                               ["systemctl reload 'app'"])  # fmt: skip
    assert command == (
        "deployer rollback --to d@h --jump j@h --path '/srv/my app' --release 20260101T000000Z"
        """ --lock-token ab12 --after 'systemctl reload '"'"'app'"'"''"""
    )


def test_no_switch_once_the_lock_is_no_longer_ours(tmp_path: Path, payload: Payload) -> None:
    from deployer.errors import LockError

    path = tmp_path / "app"
    before = first_release(path, payload)
    target = deploy(path, payload, Reporter(tty=False, quiet=True), healthcheck="true")
    target.stage()
    # someone ran `deployer unlock`, and another deploy took the lock meanwhile
    (path / ".deployer" / "lock" / "info").write_text("deploy by someone else token 99999999\n")
    with pytest.raises(LockError, match="deploy by someone else"):
        target.activate()
    assert target.outcome.status == Status.ABORTED
    assert live(path) == before and os.listdir(path / "releases") == [before]
    assert (path / ".deployer" / "lock" / "info").read_text().startswith("deploy by someone else")
