"""Excludes: .deployignore and --exclude, held against real git, for directories, tars and zips.

git itself is the reference for what the patterns mean: the same tree, with the same patterns
in .git/info/exclude, must leave out exactly what ``git ls-files --others --exclude-standard``
leaves out (including git's rule that nothing inside an excluded directory comes back).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from deployer.artifact.ignore import Exclusion, check_patterns
from deployer.artifact.manifest import digest_files
from deployer.artifact.model import Artifact
from deployer.artifact.scan import open_artifact
from deployer.artifact.tar import write_tar
from deployer.errors import ArtifactError, ConfigError, ExitCode

FILES = (
    "index.html", "app.js", "app.js.map", "keep.map", "vendor/lib.js.map", "vendor/keep.map",
    "node_modules/left/index.js", "node_modules/keep.js", "node_modules/.bin/tool",
    "top.txt", "sub/top.txt", "build", "src/build/out.o", "src/build/keep",
    "dir/a", "dir/keep", "dir/deeper/b", "docs/guide/draft-1.md", "docs/guide/final.md",
    "docs/draft-2.md", "a/b.txt", "a/x/y/b.txt", "a/x/c.txt", "cache/one", "deep/cache/two",
    "logs/debug.log", "logs/important.log", "x.log", "#hash", "trailing ", "[brackets]",
    "space name.txt", "sub/.deployignore",
)  # fmt: skip

CASES: dict[str, tuple[str, ...]] = {
    "directory and negation inside it": ("node_modules/", "!node_modules/keep.js"),
    "suffix and re-include": ("*.map", "!keep.map"),
    "anchored": ("/top.txt",),
    "name matching files and directories": ("build", "!src/build/keep"),
    "contents only, then re-include": ("dir/*", "!dir/keep"),
    "double star": ("docs/**/draft*", "a/**/b.txt", "**/cache/"),
    "negated file in an excluded directory": ("logs/", "!logs/important.log"),
    "negation then exclusion again": ("*.log", "!important.log", "logs/important.log"),
    "escapes and character classes": ("\\#hash", "trailing\\ ", "\\[brackets]", "space name.txt"),
    "everything but": ("*", "!*.html", "!*/"),
}


def make_tree(root: Path, files: Sequence[str] = FILES) -> Path:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\n")
    return root


def git_keeps(root: Path, patterns: Sequence[str]) -> set[str]:
    """The files git would not ignore in root with these patterns (root becomes a repository)."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    subprocess.run(["git", "init", "-q", str(root)], check=True, env=env)
    (root / ".git" / "info" / "exclude").write_text("".join(f"{p}\n" for p in patterns))
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--others", "--exclude-standard"],
        check=True, capture_output=True, env=env,
    ).stdout  # fmt: skip
    return {name.decode() for name in listed.split(b"\0") if name}


def files_of(artifact: Artifact) -> set[str]:
    return {e.path for e in artifact.entries if e.kind == "file"}


def as_tgz(root: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(root.rglob("*")):
            if ".git" not in path.relative_to(root).parts:
                tar.add(path, path.relative_to(root).as_posix(), recursive=False)
    return out


def as_zip(root: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file() and ".git" not in path.relative_to(root).parts:
                archive.write(path, path.relative_to(root).as_posix())
    return out


@pytest.mark.parametrize("name", CASES)
def test_patterns_leave_out_what_git_ignores(tmp_path: Path, name: str) -> None:
    patterns = CASES[name]
    root = make_tree(tmp_path / "app")
    expected = git_keeps(root, patterns)
    assert expected and expected != set(FILES)  # each case keeps something and drops something
    (root / ".git").rename(tmp_path / "git")  # not part of the artifact
    for artifact_path in (root, as_tgz(root, tmp_path / "a.tgz"), as_zip(root, tmp_path / "a.zip")):
        assert files_of(open_artifact(artifact_path, exclude=patterns)) == expected, artifact_path


def test_a_deployignore_file_is_read_first_and_never_deployed(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "app")
    (root / ".deployignore").write_text("# build output\nnode_modules/\n*.map\n\n!keep.map\n")
    for artifact_path in (root, as_tgz(root, tmp_path / "a.tgz"), as_zip(root, tmp_path / "a.zip")):
        artifact = open_artifact(artifact_path, exclude=["!app.js.map", "x.log"])
        kept = files_of(artifact)
        assert (
            ".deployignore" not in kept and "sub/.deployignore" in kept
        )  # only the root's is read
        assert "keep.map" in kept and "vendor/lib.js.map" not in kept
        assert "app.js.map" in kept  # the command line comes after the file: its '!' wins
        assert "x.log" not in kept and "node_modules/keep.js" not in kept
        assert artifact.excluded == (".deployignore", "node_modules/", "vendor/lib.js.map", "x.log")


def test_excluded_files_are_absent_from_sizes_digests_and_the_upload(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "app", ["app.js", "big.map", "node_modules/dep/index.js"])
    (root / "big.map").write_bytes(b"m" * 100_000)
    tgz = as_tgz(root, tmp_path / "a.tgz")
    for artifact_path in (root, tgz):
        artifact = open_artifact(artifact_path, exclude=["*.map", "node_modules/"])
        assert [e.path for e in artifact.entries] == ["app.js"]
        assert artifact.total_size == len("app.js\n") and artifact.file_count == 1
        assert set(digest_files(artifact)) == {"app.js"}
        out = io.BytesIO()
        write_tar(artifact, out, compresslevel=None)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
            assert tar.getnames() == ["app.js"]


def test_an_excluded_directory_is_not_walked_and_may_hold_anything(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "app", ["index.html", "run/cache/x"])
    os.mkfifo(root / "run" / "app.fifo")  # refused anywhere else
    with pytest.raises(ArtifactError, match="FIFO"):
        open_artifact(root)
    artifact = open_artifact(root, exclude=["run/"])
    assert files_of(artifact) == {"index.html"} and artifact.excluded == ("run/",)
    # a tar's excluded members may be of any type too; their names must still be safe
    fifo = tarfile.TarInfo("run/app.fifo")
    fifo.type = tarfile.FIFOTYPE
    page = tarfile.TarInfo("index.html")
    page.size = 3
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        tar.addfile(fifo)
        tar.addfile(page, io.BytesIO(b"hi\n"))
    assert files_of(open_artifact(tmp_path / "a.tar", exclude=["*.fifo"])) == {"index.html"}


def test_directories_named_only_by_their_files_are_excluded_once(tmp_path: Path) -> None:
    members = []
    for name in ("node_modules/a/index.js", "node_modules/b.js", "app.js"):
        member = tarfile.TarInfo(name)
        member.size = 1
        members.append(member)
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as tar:  # no directory members at all
        for member in members:
            tar.addfile(member, io.BytesIO(b"x"))
    artifact = open_artifact(tmp_path / "a.tgz", exclude=["node_modules/"])
    assert [e.path for e in artifact.entries] == ["app.js"]
    assert artifact.excluded == ("node_modules/",)


def test_a_hard_link_to_an_excluded_file_keeps_its_content(tmp_path: Path) -> None:
    original = tarfile.TarInfo("secret.map")
    original.size = 5
    link = tarfile.TarInfo("public.txt")
    link.type, link.linkname = tarfile.LNKTYPE, "secret.map"
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        tar.addfile(original, io.BytesIO(b"hello"))
        tar.addfile(link)
    artifact = open_artifact(tmp_path / "a.tar", exclude=["*.map"])
    assert [e.path for e in artifact.entries] == ["public.txt"]
    assert digest_files(artifact)["public.txt"].sha256 == hashlib.sha256(b"hello").hexdigest()


def test_everything_excluded_says_so(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "app", ["a.map", "b/c.map"])
    with pytest.raises(ArtifactError, match=r"every file is excluded .* check the patterns"):
        open_artifact(root, exclude=["*.map"])


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda root: (root / ".deployignore").mkdir(), "directory"),
        (lambda root: (root / ".deployignore").symlink_to("index.html"), "symlink"),
    ],
)
def test_a_deployignore_that_is_no_regular_file_is_refused(
    tmp_path: Path, make: object, kind: str
) -> None:
    root = make_tree(tmp_path / "app", ["index.html"])
    make(root)  # type: ignore[operator]
    with pytest.raises(ArtifactError) as caught:
        open_artifact(root)
    assert str(caught.value) == (
        f"artifact {root}: .deployignore is a {kind} — it must be a regular file of patterns"
    )
    tgz = as_tgz(root, tmp_path / "a.tgz")
    with pytest.raises(ArtifactError, match=f"\\.deployignore is a {kind}"):
        open_artifact(tgz)


def test_bad_patterns_are_refused_with_where_they_are(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        check_patterns(["*.map", "!"])
    assert caught.value.exit_code == ExitCode.USAGE
    assert str(caught.value).startswith("--exclude '!' is not a gitignore pattern")
    root = make_tree(tmp_path / "app", ["index.html"])
    (root / ".deployignore").write_text("*.map\nfoo\\\n")
    with pytest.raises(ArtifactError, match=r"\.deployignore line 2 'foo\\\\' is not a gitignore"):
        open_artifact(root)
    (root / ".deployignore").write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(ArtifactError, match="larger than 1024 KiB"):
        open_artifact(root)
    with pytest.raises(ArtifactError, match="larger than 1024 KiB"):
        open_artifact(as_tgz(root, tmp_path / "a.tgz"))


def test_exclusion_lists_only_the_topmost_paths() -> None:
    exclusion = Exclusion(["build/", "*.tmp"])
    seen = [
        ("build/x/y.o", False), ("build", True), ("build/x", True), ("src/a.tmp", False),
        ("src", True), ("src/ok.c", False), (".deployignore", False),
    ]  # fmt: skip
    assert [path for path, is_dir in seen if exclusion.skip(path, is_dir)] == [
        "build/x/y.o", "build", "build/x", "src/a.tmp", ".deployignore",
    ]  # fmt: skip
    assert exclusion.excluded == (".deployignore", "build/", "src/a.tmp")


def test_modes_no_release_may_carry_are_cleared(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "app", ["bin/tool", "data.txt", "shared/x"])
    (root / "bin" / "tool").chmod(0o4777)
    (root / "data.txt").chmod(0o666)
    (root / "shared").chmod(0o3777)
    for artifact_path in (root, as_tgz(root, tmp_path / "a.tgz")):
        artifact = open_artifact(artifact_path)
        modes = {e.path: e.mode for e in artifact.entries}
        assert modes["bin/tool"] == 0o755 and modes["data.txt"] == 0o644
        assert modes["shared"] == 0o755
        out = io.BytesIO()
        write_tar(artifact, out, compresslevel=None)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
            for member in tar.getmembers():
                assert not member.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022)
