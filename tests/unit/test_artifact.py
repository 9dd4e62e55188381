"""Artifact validation (every refusal) and the tar stream, checked by extracting with the real tar."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from deployer.artifact import open_artifact, write_tar
from deployer.errors import ArtifactError


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """path -> (kind, content or link target) plus permission bits, for comparisons."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            result[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            result[rel] = ("dir", oct(path.stat().st_mode & 0o777))
        else:
            result[rel] = (path.read_text(), oct(path.stat().st_mode & 0o777))
    return result


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "bin").mkdir(parents=True)
    (root / "web" / "css").mkdir(parents=True)
    (root / "web" / "index.html").write_text("<h1>hi</h1>")
    (root / "web" / "css" / "a.css").write_text("body{}")
    (root / "bin" / "run").write_text("#!/bin/sh\n")
    (root / "bin" / "run").chmod(0o750)
    (root / "current.html").symlink_to("web/index.html")
    (root / "dangling").symlink_to("web/missing")  # dangling but inside: allowed
    return root


def extract(
    artifact_path: Path, dest: Path, compresslevel: int | None = 6
) -> dict[str, tuple[str, str]]:
    artifact = open_artifact(artifact_path)
    stream = dest.parent / (dest.name + ".stream")
    with stream.open("wb") as out:
        write_tar(artifact, out, compresslevel=compresslevel)
    dest.mkdir()
    subprocess.run(["tar", "-x" + ("z" if compresslevel is not None else "") + "f", str(stream), "-C", str(dest)],
                   check=True)  # fmt: skip
    return tree(dest)


def test_directory_round_trip_with_real_tar(app: Path, tmp_path: Path) -> None:
    assert extract(app, tmp_path / "out") == tree(app)
    assert extract(app, tmp_path / "plain", compresslevel=None) == tree(app)


def test_tar_made_by_real_tar_round_trips(app: Path, tmp_path: Path) -> None:
    for name, flag in (("a.tar", ""), ("a.tar.gz", "z"), ("a.tgz", "z"), ("a.tar.xz", "J")):
        archive = tmp_path / name
        subprocess.run(["tar", f"-c{flag}f", str(archive), "-C", str(app), "."], check=True)
        assert extract(archive, tmp_path / f"out-{name}") == tree(app)


def test_zip_round_trip_with_symlink_and_implied_dirs(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("deep/dir/run.sh")
        info.create_system = 3
        info.external_attr = (0o100755) << 16
        zf.writestr(info, "echo hi")
        link = zipfile.ZipInfo("deep/link")
        link.create_system = 3
        link.external_attr = (0o120777) << 16
        zf.writestr(link, "dir/run.sh")
        zf.writestr("readme.txt", "hello")
    result = extract(archive, tmp_path / "out")
    assert result["deep/dir/run.sh"] == ("echo hi", "0o755")
    assert result["deep/link"] == ("link", "dir/run.sh")
    assert result["readme.txt"][0] == "hello"


def test_tar_hard_link_becomes_a_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("data")
    os.link(src / "a", src / "b")
    archive = tmp_path / "h.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(src), "a", "b"], check=True)
    result = extract(archive, tmp_path / "out")
    assert result["a"][0] == result["b"][0] == "data"


def tar_with(tmp_path: Path, *members: tarfile.TarInfo) -> Path:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return archive


def member(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 1
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([member("../../etc/passwd")], "'../../etc/passwd' escapes the release directory"),
        ([member("a/../../x")], "escapes the release directory"),
        ([member("/etc/passwd")], "is an absolute path"),
        (
            [member("link", tarfile.SYMTYPE, "/etc")],
            "symlink 'link' -> '/etc' points outside the release",
        ),
        ([member("a/link", tarfile.SYMTYPE, "../../x")], "points outside the release"),
        (
            [member("link", tarfile.SYMTYPE, "sub"), member("link/file")],
            "lies under the symlink 'link'",
        ),
        ([member("h", tarfile.LNKTYPE, "../outside")], "escapes the release directory"),
        ([member("h", tarfile.LNKTYPE, "nothere")], "does not point to a file in the archive"),
        ([member("dev", tarfile.CHRTYPE)], "is a device or FIFO"),
        ([member("fifo", tarfile.FIFOTYPE)], "is a device or FIFO"),
        ([member("same"), member("same")], "appears twice"),
        ([member("d", tarfile.DIRTYPE)], "is empty"),
    ],
)
def test_unsafe_tar_members_are_refused(
    tmp_path: Path, members: list[tarfile.TarInfo], message: str
) -> None:
    with pytest.raises(ArtifactError, match=re.escape(message)):
        open_artifact(tar_with(tmp_path, *members))


def test_unsafe_zip_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "x")
        zf.writestr("../evil.txt", "x")
    with pytest.raises(ArtifactError, match=re.escape("'../evil.txt' escapes")):
        open_artifact(archive)


def test_directory_symlink_escaping_and_special_files(tmp_path: Path, app: Path) -> None:
    (app / "etc").symlink_to("/etc")
    with pytest.raises(ArtifactError, match="symlink 'etc' -> '/etc' points outside"):
        open_artifact(app)
    (app / "etc").unlink()
    (app / "web" / "up").symlink_to("../../..")
    with pytest.raises(ArtifactError, match="points outside the release"):
        open_artifact(app)
    (app / "web" / "up").unlink()
    os.mkfifo(app / "pipe")
    with pytest.raises(ArtifactError, match="device, FIFO or socket"):
        open_artifact(app)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing", None, "not found — build it first"),
        ("app.rar", b"x", "is not a directory, .tar"),
        ("broken.tar.gz", b"not a tar", "is not a valid tar archive"),
        ("broken.zip", b"not a zip", "is not a valid zip archive"),
    ],
)
def test_bad_artifact_files(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ArtifactError, match=message):
        open_artifact(path)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ArtifactError, match="is empty"):
        open_artifact(tmp_path / "empty")


def test_streaming_is_chunked_and_progress_adds_up(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    size = 20 * 1024 * 1024
    with (root / "blob.bin").open("wb") as handle:
        for _ in range(size // (1 << 20)):
            handle.write(os.urandom(1 << 20))
    (root / "small.txt").write_text("x" * 100)
    artifact = open_artifact(root)
    assert artifact.total_size == size + 100 and artifact.file_count == 2

    class Recorder:
        largest = 0
        total = 0

        def write(self, data: bytes) -> int:
            self.largest = max(self.largest, len(data))
            self.total += len(data)
            return len(data)

        def flush(self) -> None:
            pass

    sink = Recorder()
    progress: list[int] = []
    write_tar(artifact, sink, compresslevel=1, on_progress=progress.append)  # type: ignore[arg-type]
    assert sum(progress) == artifact.total_size
    assert max(progress) <= 1 << 20 and sink.largest <= 2 << 20  # never the whole 20 MB at once
    assert sink.total > size  # random data does not compress
