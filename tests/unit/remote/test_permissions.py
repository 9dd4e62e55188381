"""--group and --writable in the stage script and the probe, run for real (GNU tools, then BusyBox).

These run as whoever runs the suite; the end-to-end proof with a deploy user, a member of the
group and an outsider logging in over real sshd is tests/integration/push/test_permissions.py.
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import stat
import tarfile
from pathlib import Path

import pytest

from deployer.errors import ConfigError, RemoteError
from deployer.remote import permissions as perms_module
from deployer.remote.layout import Layout
from deployer.remote.permissions import Permissions, validate_permissions
from deployer.remote.probe import preflight_script
from deployer.remote.state import check_ready, parse_state
from deployer.remote.tools import GROUP_TOOLS
from tests.unit.remote import test_scripts
from tests.unit.remote.test_scripts import manifest_of, stage, userland  # noqa: F401 (fixture)
from tests.unit.remote.test_tools import busybox_without, probe_in

RID = "20260101T000000Z"


def pick_group() -> str:
    """A group the suite may give files and that is not its own (root may give any)."""
    if os.geteuid() == 0:
        return grp.getgrgid(100).gr_name  # Debian's "users"
    others = [g for g in os.getgroups() if g != os.getgid()]
    return grp.getgrgid(others[0] if others else os.getgid()).gr_name


GROUP = pick_group()
GID = grp.getgrnam(GROUP).gr_gid


def tar_of(entries: list[tuple[str, int, bytes | None]]) -> bytes:
    """A gzip tar of (name, mode, data) entries; data None makes a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, mode, data in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


FILES = {"private/key.txt": b"k", "bin/run": b"#!/bin/sh\n", "pub.txt": b"p"}
TREE = [
    ("private", 0o700, None), ("private/key.txt", 0o600, b"k"),
    ("bin", 0o755, None), ("bin/run", 0o700, b"#!/bin/sh\n"), ("pub.txt", 0o644, b"p"),
]  # fmt: skip


def modes(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (permission bits with setgid, gid) of every file and directory under root."""
    result = {".": (stat.S_IMODE(root.stat().st_mode), root.stat().st_gid)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            info = path.lstat()
            result[path.relative_to(root).as_posix()] = (stat.S_IMODE(info.st_mode), info.st_gid)
    return result


def test_group_makes_the_release_readable_by_it_and_writable_by_no_one_else(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "app"), RID)
    result = stage(layout, [], tar_of(TREE), manifest_of(FILES),
                   permissions=Permissions(GROUP), umask="077")  # fmt: skip
    assert result.status == 0, result.stderr
    # tar applies the umask (077) for a user, not for root: then others keep what the artifact gave
    others = 0o005 if os.geteuid() == 0 else 0
    assert modes(Path(layout.release_dir)) == {
        ".": (0o2750, GID),
        "private": (0o2750, GID),
        "private/key.txt": (0o640, GID),  # readable by the group, still not by others
        "bin": (0o2750 | others, GID),  # the group may search
        "bin/run": (0o750, GID),  # runnable by the group because its owner may run it
        "pub.txt": (0o640 | others & 0o004, GID),
    }


def test_without_group_nothing_is_writable_by_everyone_whatever_the_umask(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "app"), RID)
    result = stage(layout, ["storage/"], tar_of(TREE), manifest_of(FILES), umask="000")
    assert result.status == 0, result.stderr
    made = {
        **modes(Path(layout.release_dir)),
        "shared/storage": modes(tmp_path / "app/shared/storage")["."],
    }
    assert all(not mode & 0o002 for mode, _ in made.values()), made
    state = test_scripts.sh.run("umask 000\n" + preflight_script(str(tmp_path / "b"), "lock info"))
    assert "locked=yes" in state.stdout.decode()
    for made_by_probe in ("b", "b/releases", "b/shared", "b/.deployer", "b/.deployer/lock"):
        assert not (tmp_path / made_by_probe).stat().st_mode & 0o002, made_by_probe


def test_writable_paths_become_group_writable_and_never_world_writable(tmp_path: Path) -> None:
    path = tmp_path / "app"
    storage = path / "shared" / "storage"
    (storage / "logs").mkdir(parents=True)
    storage.chmod(0o777)  # the chmod 777 of old days
    (storage / "logs" / "app.log").write_text("ours\n")
    (storage / "logs" / "app.log").chmod(0o666)
    theirs = storage / "uploads"
    if os.geteuid() == 0:  # what the web server wrote: not ours to change, and no error either
        theirs.mkdir(mode=0o700)
        (theirs / "photo.jpg").write_text("x")
        for item in (theirs, theirs / "photo.jpg"):
            os.chown(item, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    (path / "shared" / ".env").write_text("TOKEN=1\n")
    (path / "shared" / ".env").chmod(0o600)
    permissions = validate_permissions(GROUP, ["storage/", "storage/cache/"], ["storage/", ".env"])
    layout = Layout(str(path), RID)
    result = stage(layout, ["storage/", ".env"], tar_of(TREE), manifest_of(FILES),
                   permissions=permissions, umask="077")  # fmt: skip
    assert result.status == 0, result.stderr
    got = modes(path / "shared")
    assert got["storage"] == (0o2775, GID)  # group-writable, setgid; no longer world-writable
    assert got["storage/logs"] == (0o2775, GID)
    assert got["storage/logs/app.log"] == (0o664, GID)
    assert got["storage/cache"] == (0o2770, GID)  # created
    assert got[".env"] == (0o640, GID)  # shared, not writable: readable by the group only
    assert got["."][1] == GID and got["."][0] & 0o050 == 0o050  # the group reaches the entries
    if os.geteuid() == 0:
        assert got["storage/uploads"] == (0o700, pwd.getpwnam("nobody").pw_gid)
        assert got["storage/uploads/photo.jpg"][1] == pwd.getpwnam("nobody").pw_gid


def test_a_writable_path_the_deploy_user_cannot_change_stops_the_stage(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a directory to another user")
    uploads = tmp_path / "app" / "shared" / "uploads"
    uploads.mkdir(parents=True, mode=0o755)  # the web server's, made by hand
    os.chown(uploads, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    layout = Layout(str(tmp_path / "app"), RID)
    permissions = validate_permissions(GROUP, ["uploads/"], ["uploads/"])
    result = stage(layout, ["uploads/"], tar_of(TREE), manifest_of(FILES), permissions=permissions)
    assert result.status == 1
    assert result.stderr_line == (
        f"shared/uploads/ is not writable by group {GROUP} and the deploy user cannot make it so"
        " (another user owns it) — chown it to the deploy user, or make it group-writable yourself"
    )
    assert not Path(layout.release_dir).exists()


def test_the_probe_checks_the_group_before_anything_is_locked(tmp_path: Path) -> None:
    run = test_scripts.sh.run
    given = run(preflight_script(str(tmp_path / "ok"), "lock info", GROUP))
    state = parse_state(str(tmp_path / "ok"), given.stdout.decode())
    assert state.group_ok and state.locked and not state.tools.missing
    assert {need.name for need in GROUP_TOOLS} <= state.tools.have
    check_ready(state, "t", 1)
    refused = run(preflight_script(str(tmp_path / "no"), "lock info", "no-such-group"))
    state = parse_state(str(tmp_path / "no"), refused.stdout.decode())
    assert not state.group_ok and not state.locked and not (tmp_path / "no").exists()
    with pytest.raises(RemoteError) as caught:
        check_ready(state, "deploy@box", 1)
    login = pwd.getpwuid(os.geteuid()).pw_name
    assert str(caught.value).startswith(
        f"{login} on deploy@box is not in group no-such-group (its groups: "
    ), caught.value
    assert "usermod -aG no-such-group" in str(caught.value) and "\n" not in str(caught.value)


def test_a_target_without_chgrp_is_refused_only_when_a_group_is_asked(tmp_path: Path) -> None:
    target = busybox_without(tmp_path, "chgrp")
    check_ready(probe_in(target, tmp_path / "a"), "t", 1)  # no --group: chgrp is not needed
    result = target.run(preflight_script(str(tmp_path / "b"), "lock info", GROUP))
    state = parse_state(str(tmp_path / "b"), result.stdout.decode())
    assert not state.locked
    with pytest.raises(RemoteError, match=r"^t lacks chgrp — install coreutils there"):
        check_ready(state, "t", 1)


def test_group_and_writable_are_checked_before_connecting() -> None:
    assert validate_permissions(" www-data ", [], []) == Permissions("www-data")
    assert validate_permissions("33", ["a/", "a/"], ["a/"]) == Permissions("33", ("a/",))
    for group, writable, shared, said in (
        ("www data", [], [], "--group 'www data' is not a group name or number"),
        ("-rf", [], [], "--group '-rf' is not a group name"),
        ("", ["storage/"], ["storage/"], "--writable needs --group GROUP"),
        ("www-data", ["logs/"], ["storage/"], "--writable logs/ is neither a --shared entry"),
        ("www-data", ["../etc/"], ["../etc/"], "must be a relative path inside the release"),
    ):
        with pytest.raises(ConfigError, match=said):
            validate_permissions(group, writable, shared)


def test_the_scripts_use_only_what_the_probe_checks() -> None:
    lines = "\n".join(
        perms_module.release_lines(Permissions(GROUP))
        + perms_module.shared_lines(Permissions(GROUP, ("a/",)), ["a/", "b/c/.env"])
    )
    assert "chgrp" in lines and "-perm" in lines and "-user" in lines and "-prune" in lines
    assert "777" not in lines and "o+w" not in lines and "a+w" not in lines
