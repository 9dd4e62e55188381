"""Defence in depth on the target: a tampered `current` is refused, not used; modes carry
permission bits only, and files belong to the deploying user, even as root."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.errors import ExitCode
from deployer.sandbox.topology import Sandbox
from tests.conftest import run_cli
from tests.integration.helpers import live, make_app, one_error_line, releases

pytestmark = pytest.mark.integration

EVIL = "releases/x';id>pwned;'"


def tamper(target: Path, link: str) -> None:
    """Replace current by a link someone with write access to DIR made (as the login user)."""
    current = target / "current"
    current.unlink()
    current.symlink_to(link)
    os.lchown(current, target.stat().st_uid, target.stat().st_gid)


@pytest.mark.parametrize(
    "link",
    [EVIL, "releases/20260101T000000Z\nlocked=yes", "/etc", "releases/../../elsewhere"],
    ids=["shell", "line-break", "absolute", "climbs-out"],
)
def test_a_tampered_current_is_refused_and_never_used(
    topology, deployer, deployed: Path, tmp_path: Path, link: str
) -> None:
    kept = releases(deployed)
    tamper(deployed, link)
    route = [*topology.route, "--path", str(deployed)]
    # a failing healthcheck used to switch "back" to whatever current named, through a script
    run = deployer(["push", str(make_app(tmp_path, "v2")), *route, "--healthcheck", "false",
                    "--healthcheck-retries", "0"], env=topology.env)  # fmt: skip
    assert run.status == ExitCode.REMOTE, run.output
    line = one_error_line(run.stderr)
    assert f"{deployed}/current on " in line and "not at releases/<release id>" in line
    assert "point it at a release or remove it" in line
    for command in (["rollback", *route], ["releases", *route]):
        refused = deployer(command, env=topology.env)
        assert refused.status == ExitCode.REMOTE, refused.output
        assert "not at releases/<release id>" in one_error_line(refused.stderr)
    assert os.readlink(deployed / "current") == link  # nothing changed, nothing ran
    assert releases(deployed) == kept
    assert not (deployed / ".deployer" / "lock").exists()
    assert not list(deployed.rglob("pwned")) and not (Path.home() / "pwned").exists()
    unlock = deployer(["unlock", *route], env=topology.env)  # the one command that needs no current
    assert unlock.status == 0, unlock.output


def test_the_release_current_points_at_is_never_removed(topology, deployer, deployed: Path) -> None:
    from deployer.remote.local import LocalExecutor
    from deployer.remote.status import RemoteStatus
    from deployer.remote.switch import remove_releases_script

    live_id = live(deployed)
    result = LocalExecutor("t").run(remove_releases_script(str(deployed), [live_id]))
    assert (
        result.status == RemoteStatus.LIVE_RELEASE
        and f"release {live_id} is live" in result.stderr_line
    )
    assert (deployed / "current").resolve().is_dir() and releases(deployed) == [live_id]


# ---------------------------------------------------------------------------- modes, as root


@pytest.fixture(scope="module")
def root_box() -> Iterator[tuple[Sandbox, Path]]:
    """A jump + target + tunnel logging in as root (the suite runs as root)."""
    assert os.geteuid() == 0, "the as-root deploy test needs the suite to run as root"
    base = Path(tempfile.mkdtemp(prefix="deployer-root-"))
    base.chmod(0o755)
    box = Sandbox(base / "sandbox", user="root").start()
    try:
        yield box, base
    finally:
        box.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_setuid_setgid_and_sticky_bits_never_reach_the_target_even_as_root(
    root_box, tmp_path: Path
) -> None:
    box, base = root_box
    app = make_app(tmp_path, "modes")
    (app / "bin" / "tool").write_text("#!/bin/sh\nid\n")
    (app / "bin" / "tool").chmod(0o4755)
    (app / "bin" / "group-tool").write_text("#!/bin/sh\nid\n")
    (app / "bin" / "group-tool").chmod(0o2750)
    (app / "spool").mkdir()
    (app / "spool").chmod(0o1777)
    target = base / "srv" / "app"
    env = {**box.environment(), "CI": "true"}
    run = run_cli(["push", str(app), *box.route_args(), "--path", str(target)], env=env)
    assert run.status == 0, run.output
    assert (
        "dropped the setuid/setgid/sticky bits of 3 entries (deployed with permission bits only):"
        " bin/group-tool, bin/tool, spool" in run.stderr
    )
    release = target / "current"
    assert os.readlink(release) == f"releases/{live(target)}" and release.resolve().is_dir()
    assert not (target / ".deployer" / "lock").exists()
    modes = {
        name: stat.S_IMODE((release / name).stat().st_mode)
        for name in ("bin/tool", "bin/group-tool", "spool", "bin/migrate")
    }
    assert modes == {
        "bin/tool": 0o755,
        "bin/group-tool": 0o750,
        "spool": 0o755,  # nor write for the group or others: root's tar would have kept it
        "bin/migrate": 0o755,
    }
    for item in [release.resolve(), *release.resolve().rglob("*")]:
        info = item.lstat()
        assert not info.st_mode & 0o7000, item
        assert (info.st_uid, info.st_gid) == (0, 0), item  # the deploying user: root
