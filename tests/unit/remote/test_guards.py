"""Defence in depth in the release scripts (run for real with the local /bin/sh): a tampered
current is reported and never used, the live release is never removed, failed releases do not
count toward --keep, and the lock info says when a deploy switched without confirming."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deployer.errors import LockError, RemoteError
from deployer.remote.history import HistoryEntry, append_history_script
from deployer.remote.local import LocalExecutor
from deployer.remote.lock import (
    parse_lock_info,
    prepare_script,
    rewrite_info_script,
    switched_info,
    while_locked_script,
)
from deployer.remote.probe import preflight_script
from deployer.remote.state import TargetState, check_ready, lock_error, parse_state
from deployer.remote.status import RemoteStatus
from deployer.remote.switch import plan_prune, remove_releases_script, switch_script

sh = LocalExecutor("test")
IDS = ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"]


def layout(tmp_path: Path, current: str | None = IDS[-1]) -> Path:
    path = tmp_path / "app"
    for rid in IDS:
        (path / "releases" / rid).mkdir(parents=True)
    (path / ".deployer").mkdir()
    if current is not None:
        (path / "current").symlink_to(current if "/" in current else f"releases/{current}")
    return path


def probe(path: Path, lock_info: str | None = None) -> TargetState:
    result = sh.run(preflight_script(str(path), lock_info))
    assert result.status == 0, result.stderr
    return parse_state(str(path), result.stdout.decode())


@pytest.mark.parametrize(
    "link",
    ["releases/x';touch pwned;'", "releases/20260101T000000Z\nlocked=yes", "/etc",
     "releases/../../x", "releases/", "elsewhere/20260101T000000Z"],
)  # fmt: skip
def test_a_current_that_is_not_a_release_is_reported_never_used(tmp_path: Path, link: str) -> None:
    path = layout(tmp_path, link)
    state = probe(path, "deploy by x token abc")
    assert state.current == "" and state.current_bad and "\n" not in state.current_bad
    assert not state.locked and not (path / ".deployer" / "lock").exists()  # no lock to leak
    with pytest.raises(
        RemoteError, match=r"current on t points at .* not at releases/<release id>"
    ):
        check_ready(state, "t", 1)
    assert not list(tmp_path.rglob("pwned"))


def test_parse_state_checks_the_form_of_current_itself() -> None:
    for bad in (
        "releases/nope",
        "/srv/app/releases/20260101T000000Z",
        "releases/20260101T000000Z/x",
    ):
        state = parse_state("/srv/app", f"current={bad}\n")
        assert state.current == "" and state.current_bad == bad
    assert parse_state("/srv/app", f"current=releases/{IDS[0]}\n").current == IDS[0]


def test_switch_script_takes_release_ids_only() -> None:
    for bad in ("x';id>pwned;'", "../x", ""):
        with pytest.raises(ValueError, match="not a release id"):
            switch_script("/srv/app", bad)
    assert "'release 20260101T000000Z does not exist'" in switch_script("/srv/app", IDS[0])


def test_remove_releases_refuses_the_live_one_in_any_form(tmp_path: Path) -> None:
    for link in (f"releases/{IDS[0]}", f"{tmp_path}/app/releases/{IDS[0]}/"):
        path = layout(tmp_path, link)
        result = sh.run(remove_releases_script(str(path), IDS[:2]) + "echo after")
        assert result.status == 0 and result.stdout == b"after\n"  # later scripts still run
        single = sh.run(remove_releases_script(str(path), [IDS[0]]))
        assert single.status == RemoteStatus.LIVE_RELEASE and "is live" in single.stderr_line
        assert (path / "releases" / IDS[0]).is_dir() and not (path / "releases" / IDS[1]).exists()
        shutil.rmtree(path)


def test_failed_releases_never_count_toward_keep(tmp_path: Path) -> None:
    path = layout(tmp_path)
    failed = HistoryEntry("failed", IDS[1], IDS[0], "t", "ci", detail='odd "release":"x"')
    sh.run(append_history_script(str(path), HistoryEntry("deploy", IDS[0], "", "t", "ci")))
    sh.run(append_history_script(str(path), failed))
    state = probe(path)
    assert state.failed == {IDS[1]} and state.previous == IDS[0]
    assert plan_prune(
        [*state.releases, "20260104T000000Z"], "20260104T000000Z", 2, state.failed
    ) == [
        IDS[0],
        IDS[1],
    ]
    assert plan_prune(state.releases, IDS[-1], 2, state.failed) == [IDS[1]]
    assert plan_prune(state.releases, IDS[1], 5, state.failed) == []  # live: kept, failed or not
    # rolled back to since: good again
    sh.run(append_history_script(str(path), HistoryEntry("rollback", IDS[1], IDS[2], "t", "ci")))
    assert probe(path).failed == frozenset()


def test_the_lock_info_says_what_a_switched_deploy_did(tmp_path: Path) -> None:
    path = layout(tmp_path)
    info = "deploy by ci since 2026-01-01T00:00:00Z token 0123abcd"
    assert sh.run(prepare_script(str(path), info)).status == 0
    switched = switched_info(info, IDS[2], IDS[1], "2026-01-03T00:00:01Z")
    assert sh.run(rewrite_info_script(str(path), "0123abcd", switched)).status == 0
    held = parse_lock_info(probe(path).lock)
    assert (held.token, held.switched_to, held.previous) == ("0123abcd", IDS[2], IDS[1])
    message = str(lock_error(probe(path).lock, str(path), "t"))
    assert (
        f"it switched current to {IDS[2]} (previous: {IDS[1]}) and has not confirmed it" in message
    )
    assert f"`deployer rollback --release {IDS[1]} --lock-token 0123abcd`" in message
    first = parse_lock_info(switched_info(info, IDS[0], "", "now"))
    assert first.switched_to == IDS[0] and first.previous == ""
    assert "no earlier release" in str(
        lock_error(switched_info(info, IDS[0], "", "now"), "/p", "t")
    )
    assert sh.run(rewrite_info_script(str(path), "ffff", "stolen")).status == 0  # not ours: kept
    assert parse_lock_info(probe(path).lock).switched_to == IDS[2]


def test_scripts_run_while_the_lock_is_ours_only(tmp_path: Path) -> None:
    path = layout(tmp_path)
    assert sh.run(prepare_script(str(path), "deploy by a token aaaa")).status == 0
    ours = sh.run(while_locked_script(str(path), "aaaa", "echo ran"))
    assert ours.status == 0 and ours.stdout == b"ran\n"
    theirs = sh.run(while_locked_script(str(path), "bbbb", "echo ran"))
    assert theirs.status == RemoteStatus.LOCK_HELD and b"ran" not in theirs.stdout
    assert b"lock=deploy by a token aaaa" in theirs.stdout


def test_a_left_lock_is_taken_over_only_with_its_token(tmp_path: Path) -> None:
    path = layout(tmp_path)
    assert sh.run(prepare_script(str(path), "deploy by a token aaaa")).status == 0
    refused = sh.run(prepare_script(str(path), "rollback by b token bbbb", adopt="cccc"))
    assert refused.status == RemoteStatus.LOCK_HELD
    taken = sh.run(prepare_script(str(path), "rollback by b token bbbb", adopt="aaaa"))
    assert taken.status == 0 and probe(path).lock == "rollback by b token bbbb"
    with pytest.raises(LockError, match="rollback by b"):
        check_ready(probe(path), "t", 1)


def test_a_hook_limit_under_a_second_is_still_a_limit() -> None:
    from deployer.remote.hooks import hook_script

    assert "timeout -k 5 1 sh -c" in hook_script("true", "/srv", {}, 0.5, True)
    assert "timeout -k 5 3 sh -c" in hook_script("true", "/srv", {}, 2.1, True)
    assert "timeout" not in hook_script("true", "/srv", {}, 2.1, False)
