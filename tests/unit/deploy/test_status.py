"""`deployer status`'s pure parts: the live release's provenance, drift, and how it is said."""

from __future__ import annotations

from deployer.deploy.outcome import Outcome, Status
from deployer.deploy.status import describe_drift, find_drift, live_release
from deployer.remote.live import LiveState

R1, R2 = "20261130T100000Z", "20261201T100000Z"


def answered(target: str, release: str, content: str, commit: str = "") -> Outcome:
    live = {"release": release, "content": content, "commit": commit} if release else None
    return Outcome(target, Status.INSPECTED, release=release, details={"live": live})


def silent(target: str) -> Outcome:
    return Outcome(target, Status.FAILED, error="cannot reach it", exit_code=7)


def test_targets_are_compared_by_content_not_by_release_id() -> None:
    # one fleet push gives each target its own id (the second its upload began)
    drift = find_drift([answered("a", R1, "c1", "abc"), answered("b", R2, "c1", "abc")])
    assert not drift.drifted
    assert describe_drift(drift) == f"no drift: all 2 targets run {R1} (commit abc)"


def test_the_minority_is_named_against_the_majority() -> None:
    outcomes = [answered("a", R2, "new", "2" * 40), answered("b", R1, "old", "1" * 40),
                answered("c", R2, "new", "2" * 40), silent("d"), answered("e", "", "")]  # fmt: skip
    drift = find_drift(outcomes)
    assert drift.drifted and drift.differing == ("b", "e") and drift.unanswered == ("d",)
    assert describe_drift(drift) == (
        f"drift: b runs {R1} (commit 111111111111); e runs no release"
        f" — the other 2 run {R2} (commit 222222222222); d did not answer"
    )
    assert drift.to_document()["groups"][0] == {
        "targets": ["a", "c"], "release": R2, "commit": "2" * 40, "content": "new"
    }  # fmt: skip


def test_without_a_majority_every_group_is_listed() -> None:
    drift = find_drift([answered("a", R1, "x"), answered("b", R2, "y")])
    assert drift.differing == ("a", "b")
    assert (
        describe_drift(drift) == f"drift: the 2 targets run 2 different releases — a: {R1}; b: {R2}"
    )


def test_nothing_to_compare_with_one_answer() -> None:
    assert describe_drift(find_drift([answered("a", R1, "x"), silent("b")])) is None


def test_releases_without_a_manifest_are_compared_by_commit_or_not_at_all() -> None:
    same = find_drift([answered("a", R1, "", "abc"), answered("b", R2, "", "abc")])
    assert not same.drifted
    unknown = find_drift([answered("a", R1, ""), answered("b", R1, "")])
    assert unknown.drifted  # ids alone say nothing about the files


def test_the_live_release_names_its_deploy_and_a_later_rollback() -> None:
    history = (
        {"action": "deploy", "release": R1, "by": "alice", "time": "t1", "commit": "c1",
         "ref": "main", "pipeline": "https://p/1"},
        {"action": "rollback", "release": R1, "by": "bob", "time": "t3", "commit": "zz"},
    )  # fmt: skip
    state = LiveState("/srv/app", True, R1, releases=(R1, R2), content="d", history=history)
    live = live_release(state)
    assert live is not None
    assert (live["commit"], live["by"], live["at"], live["pipeline"]) == (
        "c1",
        "alice",
        "t1",
        "https://p/1",
    )
    assert (live["rolled_back_by"], live["rolled_back_at"]) == ("bob", "t3")
    assert live_release(LiveState("/srv/app", True)) is None
