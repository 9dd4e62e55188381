"""--group and --writable over real sshd, checked by other users of the target machine.

The deploy login (the topology's user) is a member of a web group; a second user, also a member
(the web server's user), must read the release and write the --writable shared path; a third user
outside the group must do neither, and nothing may be writable by everyone. A group the deploy
user is not in is refused in the probe, before anything is locked or uploaded. Needs root (to
create the users and groups); under CI=true these tests fail without it, elsewhere they skip.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.busybox import require
from tests.integration.helpers import live, make_app

pytestmark = pytest.mark.integration

WEB_GROUP = "deployer-web"  # the deploy login and the web server's user are in it
WEB_USER = "deployer-www"
OUTSIDER = "deployer-outsider"
APART = "deployer-apart"  # a group the deploy login is not in


def ensure(kind: str, name: str, *args: str) -> None:
    """groupadd/useradd name unless it exists."""
    lookup = subprocess.run(["getent", "group" if kind == "group" else "passwd", name],
                            capture_output=True)  # fmt: skip
    if lookup.returncode != 0:
        command = (
            ["groupadd", "--system", name]
            if kind == "group"
            else [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                *args,
                name,
            ]
        )
        subprocess.run(command, check=True)  # fmt: skip


@pytest.fixture(scope="module")
def users(topology: Any) -> str:
    """The web group, its two members (the deploy login and the web user), an outsider."""
    require(None if os.geteuid() == 0 else "creating users and groups needs root")
    ensure("group", WEB_GROUP)
    ensure("group", APART)
    ensure("user", WEB_USER, "--groups", WEB_GROUP)
    ensure("user", OUTSIDER)
    subprocess.run(["usermod", "-aG", WEB_GROUP, topology.user], check=True)  # at its next login
    return WEB_GROUP


def as_user(user: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run a command as `user` with its groups (what the web server's process would have)."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *command],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def private_app(root: Path) -> Path:
    """An artifact whose files only their owner may read, as a build with umask 077 leaves them."""
    app = make_app(root, "private")
    (app / "config").mkdir(mode=0o700)
    (app / "config" / "secrets.php").write_text("<?php return 'k';\n")
    (app / "config" / "secrets.php").chmod(0o600)
    (app / "public" / "upload.php").write_text("<?php\n")
    (app / "public" / "upload.php").chmod(0o666)  # world-writable in the build: must not stay
    for path in app.rglob("*"):
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o7700 | (0o700 if path.is_dir() else 0))
    return app


def test_group_readable_release_and_group_writable_shared_path(
    topology: Any, deployer: Any, users: str, tmp_path: Path
) -> None:
    target = topology.deploy_path("group")
    args = [*topology.route, "--path", str(target), "--group", users, "--shared", "storage/",
            "--writable", "storage/", "--before", "echo made-by-hook > cache.txt"]  # fmt: skip
    run = deployer(["push", str(private_app(tmp_path)), *args], env=topology.env)
    assert run.status == 0, run.output
    release = target / "releases" / live(target)
    gid = grp.getgrnam(users).gr_gid
    for path in [release, *release.rglob("*")]:
        if path.is_symlink():
            continue
        info = path.lstat()
        assert info.st_gid == gid, path
        assert not info.st_mode & 0o002, path  # nothing is writable by everyone
        assert not info.st_mode & 0o020, path  # a release is writable by its owner only
        if path.is_dir():
            assert info.st_mode & stat.S_ISGID, path
    assert (release / "cache.txt").stat().st_gid == gid  # the setgid directory gave it the group

    secrets = str(target / "current" / "config" / "secrets.php")
    upload = str(target / "current" / "storage" / "upload.txt")
    assert as_user(WEB_USER, "cat", secrets).stdout == "<?php return 'k';\n"
    wrote = as_user(WEB_USER, "sh", "-c", f"echo photo > {upload}")
    assert wrote.returncode == 0, wrote.stderr
    assert as_user(WEB_USER, "touch", str(release / "planted")).returncode != 0
    assert as_user(WEB_USER, "sh", "-c", f"echo x >> {secrets}").returncode != 0

    denied = as_user(OUTSIDER, "cat", secrets)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert as_user(OUTSIDER, "sh", "-c", f"echo x > {target}/shared/storage/evil").returncode != 0
    assert as_user(OUTSIDER, "touch", str(release / "planted")).returncode != 0
    storage = (target / "shared" / "storage").stat()
    assert (
        storage.st_gid == gid and storage.st_mode & 0o2070 == 0o2070 and not storage.st_mode & 0o002
    )

    # a second deploy keeps it that way, and the web server's file stays its own, untouched
    again = deployer(["push", str(private_app(tmp_path / "2")), *args], env=topology.env)
    assert again.status == 0, again.output
    assert as_user(WEB_USER, "cat", upload).stdout == "photo\n"
    assert as_user(WEB_USER, "cat", secrets).returncode == 0


def test_a_group_the_deploy_user_is_not_in_is_refused_before_upload(
    topology: Any, deployer: Any, users: str, tmp_path: Path, deployed: Path
) -> None:
    before = sorted((deployed / "releases").iterdir())
    run = deployer(["push", str(make_app(tmp_path, "g")), *topology.route, "--path", str(deployed),
                    "--group", APART], env=topology.env)  # fmt: skip
    assert run.status == 8, run.output
    error = [line for line in run.stderr.splitlines() if line.startswith("deployer: error:")]
    assert len(error) == 1 and "Traceback" not in run.stderr
    assert error[0].startswith(
        f"deployer: error: {topology.user} on {topology.user}@localhost:{topology.box.tunnel_port}"
        f" is not in group {APART} (its groups: "
    ), error[0]
    assert f"usermod -aG {APART} {topology.user}" in error[0]
    assert " of 4 files" not in run.stderr  # never got as far as an upload
    assert sorted((deployed / "releases").iterdir()) == before
    assert not (deployed / ".deployer" / "lock").exists()


def test_writable_without_group_or_outside_shared_is_a_usage_error(
    topology: Any, deployer: Any, tmp_path: Path
) -> None:
    app = str(make_app(tmp_path, "u"))
    base = ["push", app, *topology.route, "--path", str(topology.deploy_path("usage"))]
    for extra, said in (
        (["--writable", "storage/", "--shared", "storage/"], "--writable needs --group GROUP"),
        (["--group", "www-data", "--writable", "logs/"], "--writable logs/ is neither a --shared"),
        (["--group", "www-data", "--mode", "webhook", "--webhook-url", "http://127.0.0.1:1"],
         "--group and --writable work over SSH only"),
    ):  # fmt: skip
        run = deployer([*base, *extra], env=topology.env)
        assert run.status == 2, run.output
        assert said in run.stderr and len(run.stderr.strip().splitlines()) == 1
