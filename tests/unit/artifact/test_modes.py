"""Modes: a deployed file keeps its permission bits only, whatever kind the artifact is."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

from deployer.artifact.scan import open_artifact
from deployer.artifact.tar import write_tar

SPECIAL = {"bin/suid": 0o4755, "bin/sgid": 0o2711, "spool": 0o1777, "plain": 0o640}


def from_dir(tmp_path: Path) -> Path:
    root = tmp_path / "dir"
    (root / "bin").mkdir(parents=True)
    (root / "spool").mkdir()
    for name, mode in SPECIAL.items():
        if name != "spool":
            (root / name).write_text(name)
        (root / name).chmod(mode)
    return root


def from_tar(tmp_path: Path) -> Path:
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, mode in SPECIAL.items():
            member = tarfile.TarInfo(name)
            member.mode, member.uid, member.gid = mode, 4321, 4321
            if name == "spool":
                member.type = tarfile.DIRTYPE
                tar.addfile(member)
            else:
                member.size = len(name)
                tar.addfile(member, io.BytesIO(name.encode()))
    return path


def from_zip(tmp_path: Path) -> Path:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, mode in SPECIAL.items():
            member = zipfile.ZipInfo(name + ("/" if name == "spool" else ""))
            member.create_system = 3
            member.external_attr = ((0o40000 if name == "spool" else 0o100000) | mode) << 16
            archive.writestr(member, "" if name == "spool" else name)
    return path


def test_setuid_setgid_and_sticky_bits_are_dropped_and_named(tmp_path: Path) -> None:
    for make in (from_dir, from_tar, from_zip):
        artifact = open_artifact(make(tmp_path))
        modes = {e.path: e.mode for e in artifact.entries if e.path in SPECIAL}
        # and no write for the group or others: the sticky spool was world-writable
        assert modes == {"bin/suid": 0o755, "bin/sgid": 0o711, "spool": 0o755, "plain": 0o640}
        assert artifact.cleared == ("bin/sgid", "bin/suid", "spool"), make.__name__
        assert artifact.cleared_note() == (
            "dropped the setuid/setgid/sticky bits of 3 entries (deployed with permission bits"
            " only): bin/sgid, bin/suid, spool"
        )
        stream = io.BytesIO()
        write_tar(artifact, stream, compresslevel=None)
        stream.seek(0)
        with tarfile.open(fileobj=stream) as tar:
            for member in tar.getmembers():
                assert not member.mode & 0o7000 and member.uid == 0, member.name


def test_an_artifact_without_special_bits_says_nothing(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "a").write_text("a")
    artifact = open_artifact(root)
    assert artifact.cleared == () and artifact.cleared_note() == ""
