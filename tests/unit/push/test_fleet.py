"""Many targets: all-or-nothing switching, rolling batches and shards (real sh and tar, local targets)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

import deployer.deploy.payload
from deployer.artifact.scan import open_artifact
from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Provenance
from deployer.deploy.payload import prepare_payload
from deployer.deploy.settings import PushSettings
from deployer.deploy.target import TargetDeploy
from deployer.errors import ConfigError, ConnectError, ExitCode
from deployer.output import Reporter
from deployer.push.fleet import FleetSettings, parse_batch, parse_shard, push_fleet, select_shard
from deployer.remote.local import LocalExecutor


def live(path: Path) -> str:
    link = path / "current"
    return os.readlink(link) if link.is_symlink() else ""


@pytest.fixture
def artifact(tmp_path: Path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.html").write_text("hi")
    return prepare_payload(open_artifact(app))


def run_fleet(tmp_path, artifact, names, hooks_for, fleet=None):
    """Deploy to local 'targets' (one directory each); hooks_for(name) gives per-target hooks."""
    reporter = Reporter(tty=False, quiet=True)

    def start(index: int) -> TargetDeploy:
        name = names[index]
        if name.startswith("unreachable"):
            raise ConnectError(f"cannot reach {name}")
        settings = PushSettings(path=str(tmp_path / name), hooks=hooks_for(name))
        return TargetDeploy(LocalExecutor(name), artifact, settings, Provenance("test"), reporter)

    return push_fleet(names, start, fleet or FleetSettings())


def test_all_targets_switch_together(tmp_path: Path, artifact) -> None:
    names = ["a", "b", "c"]
    outcomes, error = run_fleet(tmp_path, artifact, names, lambda n: HookSettings())
    assert error is None
    assert [o.status for o in outcomes] == ["deployed"] * 3
    assert all(live(tmp_path / n) for n in names)


def test_a_failing_before_hook_switches_nobody(tmp_path: Path, artifact) -> None:
    names = ["a", "b", "c"]
    run_fleet(tmp_path, artifact, names, lambda n: HookSettings())
    before = {n: live(tmp_path / n) for n in names}
    time.sleep(1.1)  # a new release id
    outcomes, error = run_fleet(
        tmp_path, artifact, names, lambda n: HookSettings(before=("exit 3",) if n == "b" else ())
    )
    assert error is not None and error.exit_code == ExitCode.HOOK
    assert [o.status for o in outcomes] == ["aborted", "failed", "aborted"]
    assert {n: live(tmp_path / n) for n in names} == before
    assert all(len(os.listdir(tmp_path / n / "releases")) == 1 for n in names)
    assert not any((tmp_path / n / ".deployer" / "lock").exists() for n in names)


def test_a_failing_healthcheck_switches_everyone_back(tmp_path: Path, artifact) -> None:
    names = ["a", "b", "c", "d", "e"]
    run_fleet(tmp_path, artifact, names, lambda n: HookSettings())
    before = {n: live(tmp_path / n) for n in names}
    time.sleep(1.1)

    def hooks(name: str) -> HookSettings:
        return HookSettings(healthcheck="false" if name == "c" else "true", healthcheck_retries=0)

    outcomes, error = run_fleet(
        tmp_path, artifact, names, hooks, FleetSettings(parallel=4, batch=2)
    )
    assert error is not None and "healthcheck `false` on c" in str(error)
    statuses = {o.target: o.status for o in outcomes}
    # batches [a, b], [c, d], [e]: c's batch fails, d (switched with it) and a, b go back, e never switches
    assert statuses == {
        "a": "reverted",
        "b": "reverted",
        "c": "failed",
        "d": "reverted",
        "e": "aborted",
    }
    assert {n: live(tmp_path / n) for n in names} == before


def test_an_unreachable_target_stops_the_others_before_the_switch(tmp_path: Path, artifact) -> None:
    outcomes, error = run_fleet(
        tmp_path, artifact, ["a", "unreachable-b"], lambda n: HookSettings()
    )
    assert isinstance(error, ConnectError)
    assert [o.status for o in outcomes] == ["aborted", "failed"]
    assert outcomes[1].error == "cannot reach unreachable-b"
    assert live(tmp_path / "a") == ""


def test_dry_run_plans_every_target(tmp_path: Path, artifact) -> None:
    reporter = Reporter(tty=False, quiet=True)
    settings = PushSettings(path=str(tmp_path / "x"), dry_run=True)

    def start(index: int) -> TargetDeploy:
        return TargetDeploy(
            LocalExecutor(f"t{index}"), artifact, replace(settings), Provenance("t"), reporter
        )

    outcomes, error = push_fleet(["t0", "t1"], start, FleetSettings())
    assert error is None and [o.status for o in outcomes] == ["planned", "planned"]
    assert not (tmp_path / "x").exists()


def test_batches_and_shards() -> None:
    assert (
        parse_batch("25%", 10) == 3 and parse_batch("2", 10) == 2 and parse_batch(None, 10) is None
    )
    assert parse_batch("1%", 3) == 1
    for bad in ("0", "150%", "x", "-1"):
        with pytest.raises(ConfigError, match="--batch"):
            parse_batch(bad, 10)
    assert parse_shard("2/3", {}) == (2, 3)
    assert parse_shard("auto", {"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "4"}) == (3, 4)
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard("4/3", {})
    hosts = [f"h{i}" for i in range(7)]
    shards = [select_shard(hosts, (k, 3)) for k in (1, 2, 3)]
    assert shards[0] == ["h0", "h3", "h6"] and sorted(
        h for shard in shards for h in shard
    ) == sorted(hosts)


def test_targets_needing_the_same_files_share_one_sample_and_one_compressed_stream(
    tmp_path: Path, monkeypatch
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text("print('the same line')\n" * 5000)  # compressible: gzip -1
    payload = prepare_payload(open_artifact(app), targets=3)
    encoded = []
    real_write_tar = deployer.deploy.payload.write_tar

    def counting_write_tar(*args, **kwargs) -> object:
        encoded.append(kwargs["compression"].label)
        return real_write_tar(*args, **kwargs)

    monkeypatch.setattr("deployer.deploy.payload.write_tar", counting_write_tar)
    sampled = []
    real_compressibility = deployer.deploy.payload.compressibility

    def counting_compressibility(*args, **kwargs) -> float:
        sampled.append(1)
        return real_compressibility(*args, **kwargs)

    monkeypatch.setattr("deployer.deploy.payload.compressibility", counting_compressibility)
    names = ["a", "b", "c"]
    outcomes, error = run_fleet(tmp_path, payload, names, lambda n: HookSettings())
    payload.close()
    assert (
        error is None and encoded == ["zstd -6"] and sampled == [1]
    )  # ./dev setup installs zstd; a fleet's shared stream has a fixed level
    for outcome, name in zip(outcomes, names, strict=True):
        assert outcome.details["transfer"]["shared_stream"] is True
        assert (tmp_path / name / "current" / "app.py").read_bytes() == (
            app / "app.py"
        ).read_bytes()


def test_a_shared_stream_that_cannot_be_spooled_switches_nobody(
    tmp_path: Path, monkeypatch
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text("print('the same line')\n" * 5000)
    monkeypatch.setattr(
        "deployer.deploy.spool.tempfile.TemporaryFile",
        lambda **kwargs: open("/dev/full", "r+b", buffering=0),  # noqa: SIM115  ENOSPC on write
    )
    payload = prepare_payload(open_artifact(app), targets=2)
    names = ["a", "b"]
    outcomes, error = run_fleet(tmp_path, payload, names, lambda n: HookSettings())
    payload.close()
    assert error is not None and error.exit_code == ExitCode.TRANSFER
    assert "free space there or point TMPDIR elsewhere" in str(error)
    assert all(o.status in ("failed", "aborted") for o in outcomes)
    for name in names:
        assert live(tmp_path / name) == ""
        assert not (tmp_path / name / ".deployer" / "lock").exists()
        # only the hidden partial dir is left, as after a dropped upload; the next push clears it
        left = os.listdir(tmp_path / name / "releases")
        assert len(left) == 1 and left[0].startswith(".") and left[0].endswith(".partial")
