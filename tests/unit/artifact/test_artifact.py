"""Artifact validation (every refusal) and the tar stream, checked by extracting with the real tar."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.artifact.compression import PLAIN, Compression
from deployer.artifact.contents import open_contents
from deployer.artifact.model import Artifact, Entry
from deployer.artifact.scan import open_artifact
from deployer.artifact.tar import write_tar
from deployer.errors import ArtifactError, ExitCode

MiB = 1 << 20
Tree = dict[str, tuple[str, str, str, int]]


# --------------------------------------------------------------------------- helpers


def tree(root: Path) -> Tree:
    """path -> (kind, content or link target, permission bits, mtime) of everything under root."""
    result: Tree = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        info = path.lstat()
        if path.is_symlink():
            result[rel] = ("link", os.readlink(path), "", 0)
        elif path.is_dir():
            result[rel] = ("dir", "", oct(info.st_mode & 0o7777), int(info.st_mtime))
        else:
            content = path.read_bytes().decode("latin-1")
            result[rel] = ("file", content, oct(info.st_mode & 0o7777), int(info.st_mtime))
    return result


def stream(artifact: Artifact, path: Path, compresslevel: int | None = 6, **kwargs: object) -> Path:
    compression = PLAIN if compresslevel is None else Compression("gzip", compresslevel)
    with path.open("wb") as out:
        write_tar(artifact, out, compression=compression, **kwargs)  # type: ignore[arg-type]
    return path


def unpack(artifact_path: Path, dest: Path, compresslevel: int | None = 6) -> Tree:
    """open_artifact + write_tar into a file, then extract it with the real tar into dest."""
    artifact = open_artifact(artifact_path)
    data = stream(artifact, dest.with_name(dest.name + ".stream"), compresslevel)
    dest.mkdir()
    flags = "-xzf" if compresslevel is not None else "-xf"
    subprocess.run(["tar", flags, str(data), "-C", str(dest)], check=True)
    return tree(dest)


def refused(path: Path) -> str:
    """open_artifact(path) must raise ArtifactError; returns its message (which must be one line)."""
    with pytest.raises(ArtifactError) as caught:
        open_artifact(path)
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_code == ExitCode.ARTIFACT
    return message


def info(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 1
) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = linkname
    member.size = size if kind == tarfile.REGTYPE else 0
    member.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    member.mtime = 1_600_000_000
    return member


def make_tar(path: Path, *members: tarfile.TarInfo, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for member in members:
            data = (
                io.BytesIO((member.name.encode()[:1] or b"x") * member.size)
                if member.isfile()
                else None
            )
            tar.addfile(member, data)
    return path


def zip_member(name: str, st_mode: int | None, data: bytes = b"x") -> tuple[zipfile.ZipInfo, bytes]:
    member = zipfile.ZipInfo(name, (2021, 5, 6, 7, 8, 10))
    if st_mode is None:
        member.create_system = 0  # written on Windows: no unix mode
    else:
        member.create_system = 3
        member.external_attr = st_mode << 16
    return member, data


def make_zip(path: Path, *members: tuple[zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members:
            archive.writestr(member, data)
    return path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can traverse (tmp_path's parents are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="deployer-artifact-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_unprivileged(command: list[str]) -> None:
    """Run a command as nobody when the suite runs as root (root ignores permissions)."""
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    subprocess.run(command, check=True)


def open_unprivileged(path: Path) -> str:
    """open_artifact(path) as a user without root's powers; the ArtifactError message, or ''."""
    if os.geteuid() != 0:
        try:
            open_artifact(path)
        except ArtifactError as exc:
            return str(exc)
        return ""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        message = b"?"
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                open_artifact(path)
                message = b""
            except ArtifactError as exc:
                message = str(exc).encode()
            except BaseException as exc:
                message = f"unexpected {exc!r}".encode()
        finally:
            os.write(write_fd, message)
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        message = reader.read()
    os.waitpid(pid, 0)
    return message.decode()


def member_names(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return tar.getnames()


def contiguous(names: list[str]) -> bool:
    """Whether every directory is followed directly by everything below it."""
    for index, name in enumerate(names):
        below = [n for n in names if n.startswith(name + "/")]
        if names[index + 1 : index + 1 + len(below)] != below:
            return False
    return True


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A directory artifact: nested dirs, modes, relative and dangling symlinks, an empty dir."""
    root = tmp_path / "app"
    (root / "bin").mkdir(parents=True)
    (root / "web" / "css").mkdir(parents=True)
    (root / "var" / "cache").mkdir(parents=True)
    (root / "web" / "index.html").write_text("<h1>hi</h1>")
    (root / "web" / "css" / "a.css").write_text("body{}")
    (root / "bin" / "run").write_text("#!/bin/sh\n")
    (root / "bin" / "run").chmod(0o750)
    (root / "secret.env").write_text("K=V")
    (root / "secret.env").chmod(0o600)
    (root / "current.html").symlink_to("web/index.html")
    (root / "web" / "up.css").symlink_to("../web/css/a.css")
    (root / "dangling").symlink_to("web/missing")  # dangling but inside: allowed
    (root / "bin").chmod(0o711)
    for number, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(path, (1_500_000_000 + number, 1_500_000_000 + number), follow_symlinks=False)
    return root


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("level", [6, None])
def test_directory_round_trip_with_real_tar(app: Path, tmp_path: Path, level: int | None) -> None:
    assert unpack(app, tmp_path / "out", level) == tree(app)


@pytest.mark.parametrize(
    ("name", "flag"),
    [("a.tar", ""), ("a.tar.gz", "z"), ("a.tgz", "z"), ("a.tar.bz2", "j"), ("a.tar.xz", "J")],
)
def test_tar_made_by_real_tar_round_trips(app: Path, tmp_path: Path, name: str, flag: str) -> None:
    archive = tmp_path / name
    subprocess.run(["tar", f"-c{flag}f", str(archive), "-C", str(app), "."], check=True)
    artifact = open_artifact(archive)
    assert artifact.kind == "tar" and not any(e.path.startswith(".") for e in artifact.entries)
    assert unpack(archive, tmp_path / "out") == tree(app)


def test_zip_made_by_real_zip_round_trips(app: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    subprocess.run(["zip", "-qry", "--symlinks", str(archive), "."], cwd=app, check=True)
    got = unpack(archive, tmp_path / "out")
    # zip keeps no directory mtimes worth comparing (and 2-second resolution for the rest)
    assert {k: v[:3] for k, v in got.items()} == {k: v[:3] for k, v in tree(app).items()}


def test_zip_modes_symlinks_implied_dirs_and_defaults(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "a.zip",
        zip_member("deep/dir/run.sh", 0o100755, b"echo hi"),
        zip_member("deep/link", 0o120777, b"dir/run.sh"),
        zip_member("readme.txt", None, b"hello"),  # no unix mode: 0644
        zip_member("assets/", None, b""),  # directory entry without mode: 0755
        zip_member("private/", 0o40700, b""),
    )
    artifact = open_artifact(archive)
    kinds = {e.path: (e.kind, oct(e.mode)) for e in artifact.entries}
    assert kinds == {
        "assets": ("dir", "0o755"),
        "deep": ("dir", "0o755"),  # implied by deep/dir/run.sh
        "deep/dir": ("dir", "0o755"),
        "deep/dir/run.sh": ("file", "0o755"),
        "deep/link": ("symlink", "0o777"),
        "private": ("dir", "0o700"),
        "readme.txt": ("file", "0o644"),
    }
    got = unpack(archive, tmp_path / "out")
    assert got["deep/dir/run.sh"][:3] == ("file", "echo hi", "0o755")
    assert got["deep/link"][:2] == ("link", "dir/run.sh")
    assert got["readme.txt"][:3] == ("file", "hello", "0o644")
    assert got["private"][:3] == ("dir", "", "0o700")


def test_tar_without_directory_entries_gets_its_parents(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "flat.tar.gz", info("./a/b/c.txt", size=3), info("top", size=2))
    artifact = open_artifact(archive)
    assert [(e.path, e.kind, e.mode) for e in artifact.entries] == [
        ("a", "dir", 0o755),
        ("a/b", "dir", 0o755),
        ("a/b/c.txt", "file", 0o644),
        ("top", "file", 0o644),
    ]
    got = unpack(archive, tmp_path / "out")
    assert got["a/b/c.txt"][:2] == ("file", "...")
    assert got["a/b"][0] == "dir"


def test_entries_are_sorted_parents_first_and_deterministic(app: Path, tmp_path: Path) -> None:
    first = open_artifact(app)
    paths = [e.path for e in first.entries]
    assert paths == sorted(paths, key=lambda p: p.split("/"))
    seen: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path)
        assert not parent or parent in seen
        seen.add(path)
    assert open_artifact(app) == first
    assert first.file_count == 4 and first.total_size == len("<h1>hi</h1>body{}#!/bin/sh\nK=V")
    assert stream(first, tmp_path / "1").read_bytes() == stream(first, tmp_path / "2").read_bytes()


def test_each_directory_is_followed_by_its_own_contents(app: Path, tmp_path: Path) -> None:
    """GNU tar sets a directory's mode and mtime as soon as a member outside it shows up."""
    archive = make_tar(
        tmp_path / "t.tar",
        info("ro", tarfile.DIRTYPE),
        info("zz", tarfile.DIRTYPE),
        info("ro/file"),
        info("zz/file"),
        mode="w",
    )
    assert not contiguous(member_names(archive))  # the premise
    written = member_names(stream(open_artifact(archive), tmp_path / "t.tgz"))
    assert written == ["ro", "ro/file", "zz", "zz/file"]
    assert contiguous(member_names(stream(open_artifact(app), tmp_path / "app.tgz")))


def test_read_only_directory_extracts_for_an_unprivileged_user(
    tmp_path: Path, shared_dir: Path
) -> None:
    ro = info("ro", tarfile.DIRTYPE)
    ro.mode = 0o555
    archive = make_tar(
        tmp_path / "ro.tar", ro, info("zz", tarfile.DIRTYPE), info("ro/file"), mode="w"
    )
    data = stream(open_artifact(archive), shared_dir / "s.tgz")
    dest = shared_dir / "out"
    dest.mkdir()
    os.chown(dest, 65534, 65534)
    run_unprivileged(["tar", "-xzf", str(data), "-C", str(dest)])
    assert (dest / "ro" / "file").read_text() == "r"
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555


def test_written_members_are_normalized_owned_by_root_and_pax(tmp_path: Path) -> None:
    long_dir = "d" * 120
    members = [
        info(f"./{long_dir}/", tarfile.DIRTYPE),
        info(f"./{long_dir}/{'f' * 150}", size=5),
        info("link", tarfile.SYMTYPE, f"{long_dir}/{'f' * 150}"),
    ]
    for member in members:
        member.uid, member.gid, member.uname, member.gname = 1234, 99, "ci", "builders"
    archive = make_tar(tmp_path / "a.tar", *members, mode="w")
    out = stream(open_artifact(archive), tmp_path / "s.tgz")
    with tarfile.open(out) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [long_dir, f"{long_dir}/{'f' * 150}", "link"]
        assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members)
        assert members[2].issym() and members[2].linkname == f"{long_dir}/{'f' * 150}"
        assert members[1].mtime == 1_600_000_000
    assert unpack(archive, tmp_path / "out")[f"{long_dir}/{'f' * 150}"][1] == "....."


def test_tar_hard_links_become_copies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "a").write_text("data")
    os.link(src / "a", src / "x" / "b")
    os.link(src / "a", src / "c")
    archive = tmp_path / "h.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(src), "a", "x", "c"], check=True)
    with tarfile.open(archive) as tar:
        assert [m.type for m in tar].count(tarfile.LNKTYPE) == 2
    artifact = open_artifact(archive)
    assert artifact.file_count == 3 and artifact.total_size == 12
    got = unpack(archive, tmp_path / "out")
    assert got["a"][1] == got["x/b"][1] == got["c"][1] == "data"
    assert len({(tmp_path / "out" / p).stat().st_ino for p in ("a", "x/b", "c")}) == 3
    # the copy alone, as a delta upload would send it
    only = stream(artifact, tmp_path / "only.tgz", only={"x/b"})
    with tarfile.open(only) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert files == {"x/b": b"data"}


def test_hard_link_stored_before_its_target(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "h.tar", info("b", tarfile.LNKTYPE, "a"), info("a", size=3), mode="w"
    )
    got = unpack(archive, tmp_path / "out")
    assert got["a"][1] == got["b"][1] == "aaa"


def test_only_leaves_out_other_files_but_keeps_dirs_and_symlinks(app: Path, tmp_path: Path) -> None:
    out = stream(open_artifact(app), tmp_path / "s.tgz", only={"web/index.html"})
    with tarfile.open(out) as tar:
        kinds = {m.name: m.type for m in tar}
    assert [n for n, t in kinds.items() if t == tarfile.REGTYPE] == ["web/index.html"]
    assert {n for n, t in kinds.items() if t == tarfile.SYMTYPE} == {
        "current.html",
        "dangling",
        "web/up.css",
    }
    assert {n for n, t in kinds.items() if t == tarfile.DIRTYPE} == {
        "bin",
        "var",
        "var/cache",
        "web",
        "web/css",
    }


@pytest.mark.parametrize("kind", ["dir", "tar", "zip"])
def test_open_contents_reads_every_file(app: Path, tmp_path: Path, kind: str) -> None:
    source = app
    if kind == "tar":
        source = tmp_path / "a.tar.xz"
        subprocess.run(["tar", "-cJf", str(source), "-C", str(app), "."], check=True)
    elif kind == "zip":
        source = tmp_path / "a.zip"
        subprocess.run(["zip", "-qry", "--symlinks", str(source), "."], cwd=app, check=True)
    artifact = open_artifact(source)
    with open_contents(artifact) as opener:
        # reverse order: random access must work for every kind
        for entry in reversed(artifact.entries):
            if entry.kind == "file":
                with opener(entry) as handle:
                    assert handle.read() == (app / entry.path).read_bytes()


# --------------------------------------------------------------------------- streaming


class Recorder:
    """A write-only sink that keeps the size of every write, not the data."""

    def __init__(self) -> None:
        self.writes: list[int] = []
        self.flushed = False

    def write(self, data: bytes) -> int:
        self.writes.append(len(data))
        return len(data)

    def flush(self) -> None:
        self.flushed = True


def big_artifact(tmp_path: Path, kind: str) -> Path:
    root = tmp_path / "big"
    root.mkdir()
    with (root / "blob.bin").open("wb") as handle:
        for _ in range(20):
            handle.write(os.urandom(MiB))
    (root / "small.txt").write_text("x" * 100)
    if kind == "dir":
        return root
    if kind == "zip":
        archive = tmp_path / "big.zip"
        subprocess.run(["zip", "-qr0", str(archive), "."], cwd=root, check=True)
    else:
        archive = tmp_path / "big.tar.gz"
        subprocess.run(["tar", "-czf", str(archive), "-C", str(root), "."], check=True)
    shutil.rmtree(root)
    return archive


@pytest.mark.parametrize("kind", ["dir", "tar", "zip"])
def test_streaming_is_chunked_with_flat_memory_and_progress_adds_up(
    tmp_path: Path, kind: str
) -> None:
    artifact = open_artifact(big_artifact(tmp_path, kind))
    assert artifact.total_size == 20 * MiB + 100 and artifact.file_count == 2
    sink = Recorder()
    progress: list[int] = []
    tracemalloc.start()
    try:
        write_tar(artifact, sink, compression=Compression("gzip", 1), on_progress=progress.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(progress) == artifact.total_size
    assert max(progress) <= MiB
    assert max(sink.writes) <= 2 * MiB  # the 20 MiB file went out in pieces
    assert peak < 8 * MiB  # never held whole
    assert sum(sink.writes) > 20 * MiB  # random data does not compress: it really was all sent
    assert sink.flushed


def test_plain_tar_stream_is_sent_in_few_large_writes(app: Path) -> None:
    sink = Recorder()
    write_tar(open_artifact(app), sink, compression=PLAIN)
    assert len(sink.writes) == 1  # a small tree: one write, not one per 512-byte header
    assert sink.writes[0] % 10240 == 0  # whole tar records


def test_a_file_changed_after_checking_cuts_the_stream(app: Path, tmp_path: Path) -> None:
    artifact = open_artifact(app)
    (app / "web" / "css" / "a.css").write_text("b{}")  # shorter than when checked
    out = tmp_path / "s.tgz"
    with (
        out.open("wb") as handle,
        pytest.raises(
            ArtifactError, match=re.escape("'web/css/a.css' changed after it was checked")
        ),
    ):
        write_tar(artifact, handle)
    # no gzip trailer and no end-of-archive blocks: the receiving tar must fail, not unpack less
    dest = tmp_path / "out"
    dest.mkdir()
    assert (
        subprocess.run(["tar", "-xzf", str(out), "-C", str(dest)], capture_output=True).returncode
        != 0
    )
    (app / "web" / "css" / "a.css").write_text("body{}!!")  # longer
    with pytest.raises(ArtifactError, match="it is longer now"):
        write_tar(artifact, Recorder())
    (app / "web" / "css" / "a.css").unlink()
    with pytest.raises(
        ArtifactError, match=re.escape("'web/css/a.css' changed after it was checked")
    ):
        write_tar(artifact, Recorder())


def test_an_archive_replaced_after_checking_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", info("a", size=3), info("b", size=3))
    artifact = open_artifact(archive)
    make_tar(archive, info("a", size=3))
    with pytest.raises(ArtifactError, match="changed after it was checked"):
        write_tar(artifact, Recorder())
    zipped = make_zip(tmp_path / "a.zip", zip_member("a", None), zip_member("b", None))
    artifact = open_artifact(zipped)
    make_zip(zipped, zip_member("b", None), zip_member("a", None))
    with pytest.raises(ArtifactError, match="changed after it was checked"):
        write_tar(artifact, Recorder())


def test_bad_levels_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="gzip level must be 1-9, not 11"):
        Compression("gzip", 11)
    with pytest.raises(ValueError, match="zstd level must be 1-19, not 20"):
        Compression("zstd", 20)
    with pytest.raises(ValueError, match="plain tar has no level"):
        Compression("none", 3)


# --------------------------------------------------------------------------- refusals: the path


def test_missing_artifact_names_the_path_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert refused(Path("dist")) == "artifact dist not found — build it first or check the path"
    (tmp_path / "gone.tgz").symlink_to("nowhere.tgz")
    assert (
        refused(Path("gone.tgz"))
        == "artifact gone.tgz not found — build it first or check the path"
    )


@pytest.mark.parametrize("name", ["app.rar", "app.gz", "app"])
def test_unknown_kinds_name_the_supported_ones(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"x")
    message = refused(tmp_path / name)
    assert "is not a directory or a .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip file" in message


def test_a_fifo_named_like_a_tar_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.tar")
    assert "is not a directory or a .tar" in refused(tmp_path / "pipe.tar")


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("broken.tar.gz", lambda d: b"not a tar at all", "is not a valid tar archive"),
        ("empty.tar", lambda d: b"", "is not a valid tar archive"),
        ("cut.tar.gz", lambda d: d[: len(d) // 2], "is not a valid tar archive"),
        (
            "crc.tar.gz",
            lambda d: d[:-8] + bytes([d[-8] ^ 0xFF]) + d[-7:],
            "is not a valid tar archive",
        ),
        ("garbage.zip", lambda d: b"PK not really", "is not a valid zip archive"),
        ("cut.zip", lambda d: d[: len(d) - 30], "is not a valid zip archive"),
    ],
)
def test_damaged_archives_are_refused(
    tmp_path: Path, name: str, damage: Callable[[bytes], bytes], message: str
) -> None:
    good = tmp_path / ("good.zip" if name.endswith(".zip") else "good.tar.gz")
    if name.endswith(".zip"):
        make_zip(good, zip_member("a", None, os.urandom(50_000)))
    else:
        make_tar(good, *(info(f"f{n}", size=20_000) for n in range(8)))
    open_artifact(good)  # the undamaged one is fine
    path = tmp_path / name
    path.write_bytes(damage(good.read_bytes()))
    assert message in refused(path)


def test_plain_tar_cut_inside_a_file_is_refused(tmp_path: Path) -> None:
    good = make_tar(tmp_path / "good.tar", info("a", size=5000), info("b", size=5000), mode="w")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:7000])
    assert "is not a valid tar archive" in refused(cut)


def test_tar_with_a_damaged_header_midway_is_refused(tmp_path: Path) -> None:
    """Python's tarfile silently stops there; GNU tar fails. The deploy must not ship half."""
    data = bytearray(
        make_tar(tmp_path / "good.tar", info("a"), info("b"), info("c"), mode="w").read_bytes()
    )
    data[1024:1536] = b"x" * 512  # the header of "b"
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    assert member_names(bad) == ["a"]  # the premise
    assert "is not a valid tar archive (damaged header at byte 1024)" in refused(bad)


def test_zip_member_with_bad_crc_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("bad.txt", "original content")
    data = archive.read_bytes().replace(b"original content", b"modified content")
    archive.write_bytes(data)
    assert "member 'bad.txt' is damaged" in refused(archive)


def test_encrypted_and_unsupported_zip_members_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", zip_member("secret.txt", 0o100644, b"s" * 100))
    data = bytearray(archive.read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    encrypted = bytearray(data)
    encrypted[local + 6] |= 1
    encrypted[central + 8] |= 1
    (tmp_path / "enc.zip").write_bytes(bytes(encrypted))
    message = refused(tmp_path / "enc.zip")
    assert "member 'secret.txt' is encrypted — build the zip without a password" in message
    deflate64 = bytearray(data)
    deflate64[local + 8] = deflate64[central + 10] = 9
    (tmp_path / "d64.zip").write_bytes(bytes(deflate64))
    assert "member 'secret.txt' uses an unsupported compression method" in refused(
        tmp_path / "d64.zip"
    )


# --------------------------------------------------------------------------- refusals: members


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            [info("../etc/passwd")],
            "member '../etc/passwd' escapes the release directory — rebuild the archive with relative paths",
        ),
        ([info("a/../../x")], "member 'a/../../x' escapes the release directory"),
        ([info("a/../b")], "member 'a/../b' contains a '..' component"),
        ([info("/etc/passwd")], "member '/etc/passwd' is an absolute path"),
        ([info("")], "member '' has an empty name"),
        (
            [info("link", tarfile.SYMTYPE, "/etc"), info("f")],
            "symlink 'link' -> '/etc' points outside the release",
        ),
        (
            [info("app/cfg", tarfile.SYMTYPE, "../../etc"), info("f")],
            "symlink 'app/cfg' -> '../../etc' points outside",
        ),
        ([info("up", tarfile.SYMTYPE, ".."), info("f")], "symlink 'up' -> '..' points outside"),
        ([info("e", tarfile.SYMTYPE, ""), info("f")], "symlink 'e' has an empty target"),
        (
            [
                info("sub/up", tarfile.SYMTYPE, ".."),
                info("sub/out", tarfile.SYMTYPE, "up/.."),
                info("f"),
            ],
            "symlink 'sub/out' -> 'up/..' points outside the release",
        ),
        (
            [info("link", tarfile.SYMTYPE, "sub"), info("sub", tarfile.DIRTYPE), info("link/file")],
            "member 'link/file' lies under the symlink 'link' (tar would write it through the link)",
        ),
        ([info("a"), info("a/b")], "member 'a/b' lies under the file 'a'"),
        (
            [info("f"), info("h", tarfile.LNKTYPE, "nothere")],
            "hard link 'h' -> 'nothere' does not point to a regular file",
        ),
        (
            [info("f"), info("h", tarfile.LNKTYPE, "../outside")],
            "hard link 'h' -> '../outside' escapes the release",
        ),
        (
            [info("d", tarfile.DIRTYPE), info("f"), info("h", tarfile.LNKTYPE, "d")],
            "hard link 'h' -> 'd' does not point to a regular file",
        ),
        (
            [info("f"), info("s", tarfile.SYMTYPE, "f"), info("h", tarfile.LNKTYPE, "s")],
            "hard link 'h' -> 's' does not point to a regular file",
        ),
        (
            [info("f"), info("dev", tarfile.CHRTYPE)],
            "member 'dev' is a character device — only files",
        ),
        ([info("f"), info("disk", tarfile.BLKTYPE)], "member 'disk' is a block device"),
        ([info("f"), info("fifo", tarfile.FIFOTYPE)], "member 'fifo' is a FIFO"),
        ([info("same"), info("same")], "member 'same' appears twice — rebuild the archive"),
        ([info("./same"), info("same")], "member 'same' appears twice"),
        (
            [info("x", tarfile.DIRTYPE), info("x")],
            "member 'x' appears twice (as a dir and as a file)",
        ),
        (
            [info(".", tarfile.SYMTYPE, "x"), info("f")],
            "member '.' names the release directory itself",
        ),
        ([info("d", tarfile.DIRTYPE), info("l", tarfile.SYMTYPE, "d")], "is empty (no files)"),
    ],
)
def test_unsafe_tar_members_are_refused(
    tmp_path: Path, members: list[tarfile.TarInfo], message: str
) -> None:
    archive = make_tar(tmp_path / "evil.tar.gz", *members)
    got = refused(archive)
    assert got.startswith(f"artifact {archive}")
    assert message in got


def test_nul_byte_in_a_member_name_is_refused(tmp_path: Path) -> None:
    member = info("x")
    member.pax_headers = {"path": "a\0b"}
    assert "member 'a\\x00b' contains a NUL byte" in refused(
        make_tar(tmp_path / "nul.tar", member, mode="w")
    )


def test_line_breaks_and_tabs_in_names_are_refused(tmp_path: Path) -> None:
    member = info("x")
    member.pax_headers = {"path": "web/a\tb.css"}
    assert "member 'web/a\\tb.css' has a line break or tab in its name — rename it" in refused(
        make_tar(tmp_path / "tab.tar", member, mode="w")
    )
    folder = tmp_path / "dist" / "web"
    folder.mkdir(parents=True)
    (folder / "a\nb.css").write_text("x")
    with pytest.raises(ArtifactError, match=re.escape("member 'web/a\\nb.css' has a line break")):
        open_artifact(tmp_path / "dist")


def test_symlinks_that_stay_inside_are_accepted(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "ok.tar.gz",
        info("a/b/c", size=2),
        info("a/b/up", tarfile.SYMTYPE, "../../a/b/c"),
        info("a/dangling", tarfile.SYMTYPE, "b/nothere/../x"),
        info("self", tarfile.SYMTYPE, "."),
        info("loop1", tarfile.SYMTYPE, "loop2"),  # never resolves (ELOOP), so cannot lead out
        info("loop2", tarfile.SYMTYPE, "loop1"),
        info("via", tarfile.SYMTYPE, "a/b/up"),
    )
    artifact = open_artifact(archive)
    assert {e.path: e.linkname for e in artifact.entries if e.kind == "symlink"} == {
        "a/b/up": "../../a/b/c",
        "a/dangling": "b/nothere/../x",
        "self": ".",
        "loop1": "loop2",
        "loop2": "loop1",
        "via": "a/b/up",
    }


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([zip_member("../evil.txt", None)], "member '../evil.txt' escapes the release directory"),
        ([zip_member("..\\..\\evil.txt", None)], "escapes the release directory"),
        ([zip_member("/abs.txt", None)], "member '/abs.txt' is an absolute path"),
        ([zip_member("C:/boot.ini", None)], "member 'C:/boot.ini' is an absolute path"),
        (
            [zip_member("ok", None), zip_member("cfg", 0o120777, b"/etc")],
            "symlink 'cfg' -> '/etc' points outside",
        ),
        (
            [zip_member("ok", None), zip_member("a/cfg", 0o120777, b"../../etc")],
            "symlink 'a/cfg' -> '../../etc' points outside",
        ),
        (
            [zip_member("link", 0o120777, b"d"), zip_member("link/f", 0o100644)],
            "member 'link/f' lies under the symlink 'link'",
        ),
        (
            [zip_member("ok", None), zip_member("dev", 0o020644)],
            "member 'dev' is a character device",
        ),
        ([zip_member("ok", None), zip_member("fifo", 0o010644)], "member 'fifo' is a FIFO"),
        (
            [zip_member("d/", None, b""), zip_member("d", None)],
            "member 'd' appears twice (as a dir and as a file)",
        ),
        ([zip_member("d/", None, b"")], "is empty (no files)"),
        (
            [zip_member("ok", None), zip_member("long", 0o120777, b"x" * 5000)],
            "symlink 'long' has a 5000-byte target",
        ),
    ],
)
def test_unsafe_zip_members_are_refused(
    tmp_path: Path, members: list[tuple[zipfile.ZipInfo, bytes]], message: str
) -> None:
    assert message in refused(make_zip(tmp_path / "evil.zip", *members))


def test_zip_duplicate_names_are_refused(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = make_zip(tmp_path / "dup.zip", zip_member("a", None), zip_member("a", None))
    assert "member 'a' appears twice" in refused(archive)


# --------------------------------------------------------------------------- refusals: directories


def test_directory_symlinks_leaving_the_tree_are_refused(app: Path, tmp_path: Path) -> None:
    (app / "etc").symlink_to("/etc")
    assert f"artifact {app}: symlink 'etc' -> '/etc' points outside the release" in refused(app)
    (app / "etc").unlink()
    (app / "web" / "up").symlink_to("../../..")
    assert "symlink 'web/up' -> '../../..' points outside the release" in refused(app)
    (app / "web" / "up").unlink()
    # a chain that only leaves through another link: check the premise on the real filesystem
    (app / "web" / "parent").symlink_to("..")
    (app / "web" / "out").symlink_to("parent/..")
    assert os.path.realpath(app / "web" / "out") == str(app.parent)
    assert "symlink 'web/out' -> 'parent/..' points outside the release" in refused(app)
    (app / "web" / "out").unlink()
    assert open_artifact(app).entries  # web/parent -> .. alone stays inside


def test_directory_special_files_are_refused(app: Path) -> None:
    os.mkfifo(app / "web" / "pipe")
    assert "'web/pipe' is a FIFO — only files, directories and symlinks can be deployed" in refused(
        app
    )
    (app / "web" / "pipe").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(app / "sock"))
        assert "'sock' is a socket" in refused(app)


def test_directory_symlinks_are_kept_not_followed(app: Path, tmp_path: Path) -> None:
    (app / "alias").symlink_to("web")
    artifact = open_artifact(app)
    assert [e.path for e in artifact.entries if e.path.startswith("alias")] == ["alias"]
    assert unpack(app, tmp_path / "out")["alias"] == ("link", "web", "", 0)


def test_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "link").symlink_to("sub")
    assert refused(tmp_path / "empty") == (
        f"artifact {tmp_path / 'empty'} is empty (no files) — build it first or check the path"
    )


# --------------------------------------------------------------------------- refusals: permissions


def test_unreadable_artifact_file_is_refused(shared_dir: Path) -> None:
    archive = make_tar(shared_dir / "dist.tar.gz", info("a"))
    assert open_unprivileged(archive) == ""  # the premise: readable, it opens
    archive.chmod(0o000)
    assert open_unprivileged(archive) == (
        f"artifact {archive} cannot be read (permission denied) — make it readable by the user running deployer"
    )
    zipped = make_zip(shared_dir / "dist.zip", zip_member("a", None))
    zipped.chmod(0o000)
    assert "cannot be read (permission denied)" in open_unprivileged(zipped)


def test_unreadable_files_inside_a_directory_are_refused_with_their_path(shared_dir: Path) -> None:
    root = shared_dir / "dist"
    (root / "private").mkdir(parents=True)
    (root / "ok.txt").write_text("ok")
    (root / "private" / "x").write_text("x")
    assert open_unprivileged(root) == ""
    (root / "secret.txt").write_text("s")
    (root / "secret.txt").chmod(0o000)
    assert open_unprivileged(root) == (
        f"artifact {root}: 'secret.txt' cannot be read (permission denied)"
        " — make it readable by the user running deployer"
    )
    (root / "secret.txt").unlink()
    (root / "private").chmod(0o000)
    assert "directory 'private' cannot be read (permission denied)" in open_unprivileged(root)
    (root / "private").chmod(0o755)
    root.chmod(0o000)
    assert open_unprivileged(root) == (
        f"artifact {root} cannot be read (permission denied) — make it readable by the user running deployer"
    )


def test_public_shapes() -> None:
    entry = Entry("a", "file", 0o644, 1, 0.0)
    assert entry.linkname == ""
    artifact = Artifact(Path("x"), "dir", (entry, Entry("b", "symlink", 0o777, 0, 0.0, "a")))
    assert (artifact.total_size, artifact.file_count) == (1, 1)


def test_message_format_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_tar(tmp_path / "dist.tar.gz", info("../etc/passwd"))
    assert refused(Path("dist.tar.gz")) == (
        "artifact dist.tar.gz: member '../etc/passwd' escapes the release directory"
        " — rebuild the archive with relative paths"
    )


# --------------------------------------------------------------------------- how many entries


def test_an_artifact_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    from deployer.artifact.scan import open_artifact

    names = [f"f{i}" for i in range(11)]
    tar = make_tar(tmp_path / "many.tar.gz", *(info(name) for name in names))
    archive = make_zip(tmp_path / "many.zip", *(zip_member(name, 0o100644) for name in names))
    folder = tmp_path / "many"
    folder.mkdir()
    for name in names:
        (folder / name).write_text("x")
    for path in (tar, archive, folder):
        assert open_artifact(path, max_members=11).file_count == 11
        with pytest.raises(ArtifactError, match=r"has more than 10 entries") as caught:
            open_artifact(path, max_members=10)
        assert caught.value.exit_code == ExitCode.ARTIFACT and "\n" not in str(caught.value)


def test_zip_entry_counts_are_read_from_the_end_records(tmp_path: Path) -> None:
    """A zip is refused by what its end record declares, before zipfile reads every entry."""
    from deployer.artifact.scan import zip_entry_count

    big = tmp_path / "zip64.zip"
    with zipfile.ZipFile(big, "w") as archive:  # 70 000 entries: a zip64 end record
        for i in range(70_000):
            archive.writestr(f"f{i}", "")
    with big.open("rb") as raw:
        assert zip_entry_count(raw) == 70_000
    commented = tmp_path / "comment.zip"
    with zipfile.ZipFile(commented, "w") as archive:
        archive.comment = b"x" * 4000
        archive.writestr("a", "b")
    with commented.open("rb") as raw:
        assert zip_entry_count(raw) == 1
    with (tmp_path / "many.tar.gz").open("wb") as raw:
        raw.write(b"\x1f\x8b not a zip")
    with (tmp_path / "many.tar.gz").open("rb") as raw:
        assert zip_entry_count(raw) is None
    with pytest.raises(ArtifactError, match="has more than 69999 entries"):
        open_artifact(big, max_members=69_999)
