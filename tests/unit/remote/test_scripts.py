"""The release scripts, run for real against a temporary directory: each test twice, with this
machine's /bin/sh and GNU tools, and as a BusyBox target (BusyBox sh, only its applets on PATH)."""

from __future__ import annotations

import grp
import gzip
import hashlib
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deployer.errors import ConfigError, LockError, RemoteError
from deployer.remote.executor import Executor, RunResult
from deployer.remote.history import HistoryEntry, append_history_script, parse_history
from deployer.remote.hooks import command_script, hook_script, send_variables
from deployer.remote.layout import Layout, new_release_id, validate_shared
from deployer.remote.live import live_script, parse_live
from deployer.remote.local import LocalExecutor
from deployer.remote.lock import prepare_script, unlock_script
from deployer.remote.permissions import AS_CREATED, Permissions
from deployer.remote.probe import preflight_script
from deployer.remote.stage import (
    _FIRST_OF_DIR_AWK,
    _VERIFY_SPLIT_AWK,
    COPY_BATCH,
    COPY_JOBS,
    inventory_script,
    stage_script,
)
from deployer.remote.state import TargetState, check_ready, parse_state
from deployer.remote.status import RemoteStatus
from deployer.remote.switch import (
    plan_prune,
    remove_releases_script,
    switch_script,
    switch_then_script,
)
from deployer.remote.tools import OPENSSL, OPTIONAL, REQUIRED, Toolset
from tests.busybox import BusyBoxShell

sh: Executor = LocalExecutor("test")  # the userland under test (swapped by `userland`)
probed = Toolset()  # what the probe found there
EVERY_TOOL = Toolset(frozenset(need.name for need in (*REQUIRED, *OPTIONAL)))


def every_tool() -> Toolset:
    """What the userland under test should pass: all checks (BusyBox has no zstd or openssl)."""
    if isinstance(sh, BusyBoxShell):
        return Toolset(EVERY_TOOL.have - {"zstd -dc", OPENSSL.name})
    return EVERY_TOOL


_PROBED: dict[str, Toolset] = {}


@pytest.fixture(autouse=True, params=["gnu", "busybox"])
def userland(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """Run the test with this machine's sh and tools, then again as a BusyBox target."""
    module = sys.modules[__name__]
    if request.param == "busybox":
        monkeypatch.setattr(module, "sh", BusyBoxShell(request.getfixturevalue("busybox_applets")))
    if request.param not in _PROBED:
        _PROBED[request.param] = probe(tmp_path_factory.mktemp("probe") / "app").tools
    monkeypatch.setattr(module, "probed", _PROBED[request.param])
    return str(request.param)


def stage(
    layout: Layout,
    shared: list[str],
    tar: bytes,
    manifest: bytes,
    reuse: bytes = b"",
    previous: str = "",
    hardlink: bool = False,
    tools: Toolset | None = None,
    permissions: Permissions = AS_CREATED,
    umask: str = "",
    preamble: str = "",
) -> RunResult:
    """Run the stage script with its stdin framed as the upload does: two gzip sections, then tar
    (in a login whose umask is `umask`, when given, after the shell text `preamble`)."""
    sections = [gzip.compress(manifest), gzip.compress(reuse)]
    script = stage_script(
        layout,
        shared,
        sections=(len(sections[0]), len(sections[1])),
        previous_id=previous,
        hardlink=hardlink,
        codec="gzip",
        tools=probed if tools is None else tools,
        permissions=permissions,
    )
    if umask:
        script = f"umask {umask}\n{script}"
    script = preamble + script
    return sh.run(script, upload=lambda out: out.write(b"".join(sections) + tar))


def targz(files: dict[str, bytes]) -> bytes:
    """A gzip tar of the given files."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def manifest_of(files: dict[str, bytes]) -> bytes:
    """Manifest lines (sha256, size, mode, path) for the given files."""
    return "".join(
        f"{hashlib.sha256(data).hexdigest()}\t{len(data)}\t644\t{name}\n"
        for name, data in files.items()
    ).encode()


def probe(path: Path) -> TargetState:
    result = sh.run(preflight_script(str(path)))
    assert result.status == 0, result.stderr
    return parse_state(str(path), result.stdout.decode())


def test_release_ids_sort_by_time_and_never_collide() -> None:
    now = datetime(2026, 11, 22, 23, 59, 1, tzinfo=timezone.utc)
    first = new_release_id(now, [])
    assert first == "20261122T235901Z"
    assert new_release_id(now, [first]) == "20261122T235901Z-2"
    assert new_release_id(now, [first, f"{first}-2"]) == "20261122T235901Z-3"
    # the first ones pruned already: a later push of the same second still sorts last
    assert new_release_id(now, [f"{first}-2", f"{first}-3"]) == "20261122T235901Z-4"
    assert new_release_id(now, ["20261122T235900Z", f"{first}x"]) == first


def test_preflight_on_a_missing_path_sees_the_writable_parent(tmp_path: Path) -> None:
    state = probe(tmp_path / "srv" / "app")
    assert not state.exists and state.writable and state.tools == every_tool()
    assert state.path == f"{tmp_path.resolve()}/srv/app"
    assert state.free_bytes > 0 and state.releases == () and state.current == ""
    check_ready(state, "t", 1024)


def test_preflight_resolves_a_relative_path_from_the_login_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the login's shell starts
    for given in ("app", "./app", "srv/app"):
        result = sh.run(preflight_script(given))
        state = parse_state(given, result.stdout.decode())
        assert state.path == f"{tmp_path.resolve()}/{given.removeprefix('./')}", given


def test_check_ready_messages() -> None:
    base = TargetState(path="/srv/app", writable=True, tools=EVERY_TOOL, free_bytes=10 << 30)
    no_tar = Toolset(EVERY_TOOL.have - {"tar -xzf - -C"})
    with pytest.raises(RemoteError, match=r"^t lacks tar -xzf - -C — install tar there"):
        check_ready(TargetState(**{**base.__dict__, "tools": no_tar}), "t", 1)
    with pytest.raises(RemoteError, match=r"not enough space on t: 1\.0 MiB free"):
        check_ready(TargetState(**{**base.__dict__, "free_bytes": 1 << 20}), "t", 50 << 20)
    with pytest.raises(
        LockError,
        match=r"\(deploy by bob\) .* `deployer unlock` with the same route and --path /srv/app",
    ):
        check_ready(TargetState(**{**base.__dict__, "lock": "deploy by bob"}), "t", 1)
    with pytest.raises(RemoteError, match="current on t is not a symlink"):
        check_ready(TargetState(**{**base.__dict__, "current_is_symlink": False}), "t", 1)


def test_lock_is_exclusive_and_only_its_owner_unlocks(tmp_path: Path) -> None:
    path = str(tmp_path / "app")
    assert sh.run(prepare_script(path, "deploy by a token AAA")).status == 0
    second = sh.run(prepare_script(path, "deploy by b token BBB"))
    assert (
        second.status == RemoteStatus.LOCK_HELD and b"lock=deploy by a token AAA" in second.stdout
    )
    sh.run(unlock_script(path, "BBB"))  # not ours: stays
    assert probe(Path(path)).lock == "deploy by a token AAA"
    sh.run(unlock_script(path, "AAA"))
    assert probe(Path(path)).lock == ""


def test_stage_switch_and_prune(tmp_path: Path) -> None:
    path = tmp_path / "app"
    files = {"web/index.html": b"hello"}
    assert sh.run(prepare_script(str(path), "x token T")).status == 0
    ids = ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"]
    for rid in ids:
        result = stage(Layout(str(path), rid), ["uploads/"], targz(files), manifest_of(files))
        assert result.status == 0, result.stderr
        assert sh.run(switch_script(str(path), rid)).status == 0
        assert os.readlink(path / "current") == f"releases/{rid}"
    assert (path / "current" / "web" / "index.html").read_bytes() == b"hello"
    assert os.readlink(path / "current" / "uploads") == "../../shared/uploads"
    assert (path / ".deployer" / "manifests" / f"{ids[0]}.tsv").read_bytes() == manifest_of(files)
    state = probe(path)
    assert state.releases == tuple(ids) and state.current == ids[-1] and state.previous == ids[1]
    doomed = plan_prune(state.releases, state.current, keep=1)
    assert doomed == ids[:2]
    assert sh.run(remove_releases_script(str(path), doomed)).status == 0
    assert probe(path).releases == (ids[-1],)  # gone at once; deleted in the background
    assert not (path / ".deployer" / "manifests" / f"{ids[0]}.tsv").exists()
    trash = path / ".deployer" / "trash"
    deadline = time.monotonic() + 10
    while any(trash.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(trash.iterdir())
    assert sh.run(switch_script(str(path), None)).status == 0
    assert not (path / "current").exists()


def test_stage_reuses_unchanged_files_and_reports_those_changed_in_place(tmp_path: Path) -> None:
    path = tmp_path / "app"
    sh.run(prepare_script(str(path), "x token T"))
    v1 = {"a.txt": b"same", "b.txt": b"old b", "c.txt": b"same c"}
    assert stage(Layout(str(path), "20260101T000000Z"), [], targz(v1), manifest_of(v1)).status == 0
    (path / "releases" / "20260101T000000Z" / "c.txt").write_bytes(b"the app wrote here")
    v2 = {"a.txt": b"same", "b.txt": b"new b", "c.txt": b"same c"}
    reuse = "".join(
        f"{hashlib.sha256(v2[n]).hexdigest()}  {n}\n" for n in ("a.txt", "c.txt")
    ).encode()
    layout = Layout(str(path), "20260102T000000Z")
    result = stage(
        layout, [], targz({"b.txt": v2["b.txt"]}), manifest_of(v2), reuse, "20260101T000000Z"
    )
    # c.txt no longer matches: reported, nothing published, the partial dir kept for a second pass
    assert result.status == RemoteStatus.VERIFY_FAILED
    assert result.stdout.decode().split() == ["c.txt"]
    assert not Path(layout.release_dir).exists() and Path(layout.partial_dir).is_dir()
    result = stage(layout, [], targz({"c.txt": v2["c.txt"]}), manifest_of(v2))
    assert result.status == 0, result.stderr
    for name, data in v2.items():
        assert (Path(layout.release_dir) / name).read_bytes() == data


def reuse_lines(files: dict[str, bytes]) -> bytes:
    """The reuse section: sha256sum lines of the files to take from the previous release."""
    return "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()).encode()


def redeploy_claiming(path: Path, rid: str, previous: str, claim: bytes, **kw: bool) -> RunResult:
    """Stage a release that reuses a.txt while its manifest says a.txt holds `claim`.

    The stage can only succeed if the copy of a.txt is trusted by its stat and not hashed."""
    files = {"a.txt": claim, "b.txt": rid.encode()}
    tar = targz({"b.txt": files["b.txt"]})
    reuse = reuse_lines({"a.txt": claim})
    return stage(Layout(str(path), rid), [], tar, manifest_of(files), reuse, previous, **kw)


V1 = "20260101T000000Z"
V2 = "20260102T000000Z"


def publish_v1(path: Path, **kw: bool) -> Path:
    sh.run(prepare_script(str(path), "x token T"))
    files = {"a.txt": b"same", "b.txt": b"v1"}
    assert stage(Layout(str(path), V1), [], targz(files), manifest_of(files), **kw).status == 0
    assert (path / ".deployer" / "manifests" / f"{V1}.stat").is_file()
    return path / "releases" / V1


def test_unchanged_reused_files_are_trusted_by_their_stat_and_not_hashed(tmp_path: Path) -> None:
    publish_v1(tmp_path / "app")
    # the claim is false, so only a copy that is not hashed passes: proof that stat was enough
    result = redeploy_claiming(tmp_path / "app", "20260102T000000Z", V1, b"not what a.txt holds")
    assert result.status == 0, result.stderr
    release = tmp_path / "app/releases/20260102T000000Z"
    assert (release / "a.txt").read_bytes() == b"same"
    assert (release / "b.txt").read_bytes() == b"20260102T000000Z"


def test_a_change_that_keeps_size_and_mtime_is_still_seen_by_ctime(tmp_path: Path) -> None:
    live = publish_v1(tmp_path / "app") / "a.txt"
    before = live.stat()
    time.sleep(0.02)
    live.write_bytes(b"SAME")  # same size, mtime put back: only ctime tells
    os.utime(live, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = redeploy_claiming(tmp_path / "app", "20260102T000000Z", V1, b"same")
    assert result.status == RemoteStatus.VERIFY_FAILED
    assert result.stdout.decode().split() == ["a.txt"]


def test_hard_links_and_prunes_do_not_spoil_the_trust_of_linked_releases(tmp_path: Path) -> None:
    path = tmp_path / "app"
    publish_v1(path, hardlink=True)
    v2, v3 = "20260102T000000Z", "20260103T000000Z"
    assert redeploy_claiming(path, v2, V1, b"same", hardlink=True).status == 0
    time.sleep(0.02)
    assert sh.run(remove_releases_script(str(path), [V1])).status == 0  # a.txt's ctime changes
    # with copies, that ctime change means "hash it again" (and the false claim is caught) ...
    assert redeploy_claiming(path, v3, v2, b"not a.txt").status == RemoteStatus.VERIFY_FAILED
    # ... with hard links, ctime is not compared: inode, size and mtime are unchanged
    sh.run(f"rm -rf {path}/releases/.{v3}.partial")
    assert redeploy_claiming(path, v3, v2, b"not a.txt", hardlink=True).status == 0


@pytest.mark.parametrize("group", [False, True], ids=["as-created", "with-group"])
def test_every_file_of_a_published_release_is_older_than_its_snapshot_marker(
    tmp_path: Path, group: bool
) -> None:
    """Only then can the next deploy trust them: the stage waits one clock tick between the last
    write (and, with --group, the last chgrp/chmod) and the marker, and verifies meanwhile."""
    permissions = Permissions(grp.getgrgid(os.getgid()).gr_name) if group else AS_CREATED
    sh.run(prepare_script(str(tmp_path / "app"), "x token T"))
    for attempt in range(5):  # a missed tick shows as a tie; over 5 releases, at least once
        rid = f"2026010{attempt + 1}T000000Z"
        files = nested_tree(40, tag=rid.encode())
        layout = Layout(str(tmp_path / "app"), rid)
        result = stage(layout, [], targz(files), manifest_of(files), permissions=permissions)
        assert result.status == 0, result.stderr
        snapshot = (tmp_path / "app/.deployer/manifests" / f"{rid}.stat").read_text().splitlines()
        marker = snapshot[0].removeprefix("#")
        ctimes = [line.split("|")[3] for line in snapshot[1:]]
        assert len(ctimes) == 40 and max(ctimes) < marker


def test_files_as_new_as_the_snapshot_are_hashed_again(tmp_path: Path) -> None:
    publish_v1(tmp_path / "app")
    snapshot = tmp_path / "app" / ".deployer" / "manifests" / f"{V1}.stat"
    lines = snapshot.read_text().splitlines()
    # a marker from long ago: every entry is then "changed in the same clock tick" (racy)
    snapshot.write_text("\n".join(["#2000-01-01 00:00:00.000000000 +0000", *lines[1:]]) + "\n")
    result = redeploy_claiming(tmp_path / "app", "20260102T000000Z", V1, b"not a.txt")
    assert result.status == RemoteStatus.VERIFY_FAILED


def nested_tree(count: int, tag: bytes = b"") -> dict[str, bytes]:
    """`count` files spread over top-level names and directories up to three deep."""
    dirs = ["", "a/", "a/b/", "a/b/c/", "d/", "e/f/"]
    return {f"{dirs[i % len(dirs)]}f{i}": b"%d" % i + tag for i in range(count)}


@pytest.mark.parametrize("hardlink", [False, True])
@pytest.mark.parametrize("extras", [True, False], ids=["as-probed", "no-reflink-no-xargs-P"])
def test_many_unchanged_files_in_nested_directories_are_all_reused(
    tmp_path: Path, hardlink: bool, extras: bool
) -> None:
    """More files than one cp batch, several directories deep: the copies miss none, whether they
    run several at a time with reflinks (as probed here) or one after another (a BusyBox without)."""
    path = tmp_path / "app"
    tools = probed if extras else Toolset(probed.have - {"cp --reflink=auto", "xargs -P"})
    sh.run(prepare_script(str(path), "x token T"))
    v1 = nested_tree(3 * COPY_BATCH * COPY_JOBS // 2)
    layout = Layout(str(path), V1)
    assert stage(layout, [], targz(v1), manifest_of(v1), hardlink=hardlink).status == 0
    v2 = dict(v1, **{"a/b/c/new": b"new", "f0": b"changed"})
    sent = {"a/b/c/new": v2["a/b/c/new"], "f0": v2["f0"]}
    reused = {n: d for n, d in v2.items() if n not in sent}
    layout = Layout(str(path), "20260102T000000Z")
    result = stage(
        layout, [], targz(sent), manifest_of(v2), reuse_lines(reused), V1, hardlink, tools
    )
    assert result.status == 0, result.stderr
    release = Path(layout.release_dir)
    assert {str(p.relative_to(release)) for p in release.rglob("*") if p.is_file()} == set(v2)
    for name, data in v2.items():
        assert (release / name).read_bytes() == data
    linked = (release / "a/b/f2").stat().st_ino == (path / "releases" / V1 / "a/b/f2").stat().st_ino
    assert linked == hardlink
    assert result.stdout.decode().strip() == f"trusted={len(reused)}"


def test_every_file_that_fails_verification_is_reported(tmp_path: Path) -> None:
    """Sent files are hashed in several lists at once; a failure in any of them is reported."""
    path = tmp_path / "app"
    sh.run(prepare_script(str(path), "x token T"))
    files = nested_tree(40)
    claimed = dict(files, **{"a/b/c/f3": b"other", "e/f/f35": b"other too", "f6": b""})
    result = stage(Layout(str(path), V1), [], targz(files), manifest_of(claimed))
    assert result.status == RemoteStatus.VERIFY_FAILED
    assert sorted(result.stdout.decode().split()) == ["a/b/c/f3", "e/f/f35", "f6"]


def test_a_manifest_line_sha256sum_cannot_read_fails_the_verification(tmp_path: Path) -> None:
    """GNU sha256sum skips lines it cannot parse unless --strict, which BusyBox lacks: the script
    counts the verdicts instead, so a file whose line was skipped is never published unchecked."""
    path = tmp_path / "app"
    sh.run(prepare_script(str(path), "x token T"))
    files = {"good": b"good", "odd": b"odd"}
    manifest = manifest_of(files).replace(hashlib.sha256(b"odd").hexdigest().encode(), b"0bad")
    result = stage(Layout(str(path), V1), [], targz(files), manifest)
    assert result.status == RemoteStatus.VERIFY_FAILED
    # GNU reports the line it could not read on stderr, BusyBox the file as FAILED
    assert result.stdout.decode().split() == ["odd"] or (
        result.stdout == b"" and "could not check the files" in result.stderr_line
    ), result
    assert not (path / "releases" / V1).exists()


ODD_NAMES = {
    "plain": b"p",
    "with space": b"s",
    "-dash": b"d",
    "back\\slash": b"b",
    "\u00fcn\u00ef": b"u",
    "dir/-x y": b"n",
    "empty": b"",
}


@pytest.mark.parametrize("openssl", [True, False], ids=["openssl", "sha256sum"])
def test_odd_names_verify_and_failures_are_named_with_either_hasher(
    tmp_path: Path, openssl: bool
) -> None:
    """With openssl the files are hashed by it, and any difference falls back to sha256sum -c,
    which names the files that failed; on BusyBox (no openssl on PATH) the fallback does it all."""
    path = tmp_path / "app"
    sh.run(prepare_script(str(path), "x token T"))
    have = probed.have | {OPENSSL.name} if openssl else probed.have - {OPENSSL.name}
    tools = Toolset(frozenset(have))
    result = stage(Layout(str(path), V1), [], targz(ODD_NAMES), manifest_of(ODD_NAMES), tools=tools)
    assert result.status == 0, result.stderr
    claimed = dict(ODD_NAMES, **{"with space": b"other", "-dash": b"", "empty": b"x"})
    result = stage(Layout(str(path), V2), [], targz(ODD_NAMES), manifest_of(claimed), tools=tools)
    assert result.status == RemoteStatus.VERIFY_FAILED
    assert sorted(result.stdout.decode().splitlines()) == ["-dash", "empty", "with space"]
    assert not (path / "releases" / V2).exists()


def test_with_openssl_the_files_are_not_hashed_by_sha256sum(tmp_path: Path, userland: str) -> None:
    """A sha256sum that always fails shows which hasher ran: openssl passes the tree on its own
    (on this machine's userland, which has it); without it, the verification fails."""
    if userland == "busybox":
        return  # BusyBox targets have no openssl: the test above covers their fallback
    path = tmp_path / "app"
    sh.run(prepare_script(str(path), "x token T"))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sha256sum").write_text("#!/bin/sh\nexit 1\n")
    (fake / "sha256sum").chmod(0o755)
    preamble = f"PATH={fake}:$PATH\n"
    with_openssl = Toolset(probed.have | {OPENSSL.name})
    assert probed.openssl, "this machine's openssl passed no probe check"
    files = nested_tree(40)
    ok = stage(Layout(str(path), V1), [], targz(files), manifest_of(files), tools=with_openssl,
               preamble=preamble)  # fmt: skip
    assert ok.status == 0, ok.stderr
    without = Toolset(probed.have - {OPENSSL.name})
    failed = stage(Layout(str(path), V2), [], targz(files), manifest_of(files), tools=without,
                   preamble=preamble)  # fmt: skip
    assert failed.status == RemoteStatus.VERIFY_FAILED


def run_awk(program: str, *options: str, files: tuple[str, ...] = (), stdin: str = "") -> RunResult:
    argv = ["awk", *options, shlex.quote(program), *files]
    return sh.run(" ".join(argv), upload=lambda out: out.write(stdin.encode()))


def test_each_directory_sends_its_first_file_ahead_of_the_parallel_copies(tmp_path: Path) -> None:
    names = ["top1", "top2", "a/x", "a/y", "a/b/z", "a/b/w", "c/d/e/v"]
    first, rest = tmp_path / "first", tmp_path / "rest"
    result = run_awk(
        _FIRST_OF_DIR_AWK, f"-v first={first}", f"-v rest={rest}", stdin="\n".join(names) + "\n"
    )
    assert result.status == 0, result.stderr
    assert first.read_text().split() == ["top1", "a/x", "a/b/z", "c/d/e/v"]
    assert rest.read_text().split() == ["top2", "a/y", "a/b/w"]


def test_files_to_verify_are_split_into_lists_of_about_equal_bytes(tmp_path: Path) -> None:
    sizes = [900_000, 10, 500_000, 400_000, 20, 300_000, 30, 200_000, 100_000]
    manifest = "".join(f"{i:064x}\t{size}\t644\tf{i}\n" for i, size in enumerate(sizes))
    (tmp_path / "trusted").write_text("f1\nf4\n")
    (tmp_path / "manifest").write_text(manifest)
    out = f"{tmp_path}/list."
    result = run_awk(
        _VERIFY_SPLIT_AWK,
        "-F '\t'",
        "-v n=3",
        f"-v out={out}",
        files=(f"{tmp_path}/trusted", f"{tmp_path}/manifest"),
    )
    assert result.status == 0, result.stderr
    lists = [Path(f"{out}{k}").read_text().splitlines() for k in range(3)]
    names = sorted(line.split("  ")[1] for lines in lists for line in lines)
    assert names == sorted(f"f{i}" for i in range(len(sizes)) if i not in (1, 4))
    loads = [sum(sizes[int(line.split("  f")[1])] for line in lines) for lines in lists]
    assert max(loads) <= 1_000_000 and min(loads) >= 700_000, loads


def test_switch_then_runs_only_after_a_switch_and_reports_its_own_failure(tmp_path: Path) -> None:
    (tmp_path / "releases" / "20260101T000000Z").mkdir(parents=True)
    (tmp_path / ".deployer").mkdir()
    marker = tmp_path / "finished"
    switch = switch_script(str(tmp_path), "20260101T000000Z")
    result = sh.run(switch_then_script(switch, f"touch {marker}; exit 3\n"))
    assert result.status == RemoteStatus.FINISH_FAILED and marker.exists()
    assert os.readlink(tmp_path / "current") == "releases/20260101T000000Z"
    marker.unlink()
    missing = switch_script(str(tmp_path), "20260202T000000Z")
    result = sh.run(switch_then_script(missing, f"touch {marker}\n"))
    assert result.status == 4 and "does not exist" in result.stderr_line and not marker.exists()
    assert os.readlink(tmp_path / "current") == "releases/20260101T000000Z"


def test_switch_refuses_a_missing_release(tmp_path: Path) -> None:
    (tmp_path / "releases").mkdir()
    result = sh.run(switch_script(str(tmp_path), "20260101T000000Z"))
    assert result.status != 0 and "does not exist" in result.stderr_line


def test_missing_shared_file_stops_the_stage(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path), "20260101T000000Z")
    sh.run(prepare_script(str(tmp_path), "t"))
    result = stage(layout, [".env"], targz({"empty": b""}), manifest_of({"empty": b""}))
    assert result.status == 4 and "shared file .env is missing" in result.stderr_line
    assert not (tmp_path / "releases" / "20260101T000000Z").exists()


def test_a_hook_stopped_at_its_time_limit_reads_as_timed_out(tmp_path: Path) -> None:
    """GNU timeout exits 124 when it stops a hook; BusyBox's timeout is killed with the hook (143).
    Both read as timed out; a hook failing on its own, before the limit, keeps its status."""
    assert probed.timeout
    started = time.monotonic()
    result = sh.run(hook_script("echo started; sleep 10", str(tmp_path), {}, 1, True))
    assert result.status == RemoteStatus.TIMED_OUT and result.stdout == b"started\n", result
    assert time.monotonic() - started < 8
    assert sh.run(hook_script("kill -TERM $$", str(tmp_path), {}, 5, True)).status == 143
    assert sh.run(hook_script("exit 3", str(tmp_path), {}, 5, True)).status == 3
    env = {"DEPLOYER_RELEASE_ID": "it's $HOME"}
    shown = sh.run(hook_script('echo "$DEPLOYER_RELEASE_ID in $PWD"', str(tmp_path), env, 5, True))
    assert shown.stdout.decode() == f"it's $HOME in {tmp_path}\n"


def test_inventory_lists_the_files_that_arrived_with_their_sha256(tmp_path: Path) -> None:
    """What a resumed upload asks first: the files already in the partial dir, hashed."""
    layout = Layout(str(tmp_path), V1)
    assert sh.run(inventory_script(layout)).stdout == b""  # nothing arrived yet
    files = {"a b/c.txt": b"one", "d.txt": b"two", "e/f/g": b""}
    for name, data in files.items():
        (Path(layout.partial_dir) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(layout.partial_dir) / name).write_bytes(data)
    listed = sh.run(inventory_script(layout)).stdout.decode().splitlines()
    assert sorted(listed) == sorted(
        f"{hashlib.sha256(d).hexdigest()}  ./{n}" for n, d in files.items()
    )


def test_plan_prune_never_removes_the_live_release() -> None:
    releases = ["a1", "a2", "a3", "a4"]
    assert plan_prune(releases, "a1", keep=2) == ["a2"]
    assert plan_prune(releases, "a4", keep=5) == []


def test_remove_releases_refuses_anything_but_release_ids() -> None:
    with pytest.raises(ValueError, match="not a release id"):
        remove_releases_script("/srv/app", ["../../etc"])


def test_shared_entries_must_stay_inside_the_release() -> None:
    assert validate_shared(["storage/", ".env", "var/log/"]) == ("storage/", ".env", "var/log/")
    for bad in ("/etc", "../x", "a/../b", "", "a//b"):
        with pytest.raises(ConfigError, match="relative path inside the release"):
            validate_shared([bad])


def test_history_round_trip_with_hostile_text(tmp_path: Path) -> None:
    sh.run(prepare_script(str(tmp_path), "t"))
    entry = HistoryEntry(
        "deploy", "20260101T000000Z", "", "2026-01-01T00:00:00Z", "o'brien $(rm -rf /)", "abc"
    )
    assert sh.run(append_history_script(str(tmp_path), entry)).status == 0
    lines = (tmp_path / ".deployer" / "history").read_text().splitlines()
    assert json.loads(lines[0])["by"] == "o'brien $(rm -rf /)"
    assert parse_history("garbage\n" + lines[0])[0]["release"] == "20260101T000000Z"


def test_a_large_manifest_does_not_hide_the_probe_results(tmp_path: Path) -> None:
    """Captured output is kept whole: a 3000-file manifest once pushed the probe's keys out of a 64 KiB tail."""
    path = tmp_path / "app"
    rid = "20260101T000000Z"
    (path / "releases" / rid).mkdir(parents=True)
    (path / ".deployer" / "manifests").mkdir(parents=True)
    os.symlink(f"releases/{rid}", path / "current")
    lines = "".join(f"{'0' * 64}\t1\t644\tdir/file-{i:05d}.txt\n" for i in range(3000))
    (path / ".deployer" / "manifests" / f"{rid}.tsv").write_text(lines)
    state = probe(path)
    assert state.writable and state.tools == every_tool() and state.current == rid
    assert len(state.manifest) == 3000


HOSTILE = {
    "QUOTES": 'it\'s "quoted" $HOME `id` $(id) \\ ; exit 9',
    "LINES": "-----BEGIN KEY-----\nabc\n\n-----END KEY-----\n",  # trailing newline kept
    "IFS": "x",  # would split the script's own words if it were set there (sh -c resets its own)
    "PATH": "/nowhere",  # would hide the target's tools if it were set in the script
    "EMPTY": "",
}
DUMP = (  # each value's length and sha256, to compare exactly (whitespace and all)
    'hook_path=$PATH; PATH=$TOOLS; for n in QUOTES LINES PATH EMPTY; do eval "v=\\$$n";'
    ' [ "$n" = PATH ] && v=$hook_path; printf "%s %s " "$n" "${#v}"; printf %s "$v" | sha256sum; done'
)


def tools() -> dict[str, str]:
    """Where the hook finds sha256sum once its own PATH (/nowhere) is set aside."""
    return {"TOOLS": str(sh.applets) if isinstance(sh, BusyBoxShell) else os.environ["PATH"]}


def expected_dump() -> str:
    return "".join(
        f"{name} {len(value)} {hashlib.sha256(value.encode()).hexdigest()}  -\n"
        for name, value in HOSTILE.items()
        if name != "IFS"
    )


def test_variables_on_stdin_reach_the_hook_exactly_and_leave_the_script_alone(
    tmp_path: Path,
) -> None:
    """Values with quotes, $(...), newlines, and names like IFS and PATH: the hook sees them
    exactly, the script around it (time limit, exit status) keeps working, and none of the
    values is in the script's text."""
    for has_timeout in (True, False):
        script = hook_script(DUMP, str(tmp_path), tools(), 5, has_timeout, True)
        assert all(value not in script for value in HOSTILE.values() if len(value) > 1)
        result = sh.run(script, upload=send_variables(HOSTILE))
        assert result.status == 0, result
        assert result.stdout.decode() == expected_dump()
    failing = hook_script("exit 5", str(tmp_path), {}, 5, True, True)
    assert sh.run(failing, upload=send_variables({"A": "1"})).status == 5
    slow = hook_script("PATH=$TOOLS; sleep 10", str(tmp_path), tools(), 1, True, True)
    timed = sh.run(slow, upload=send_variables({"PATH": "/nowhere"}))
    assert timed.status == RemoteStatus.TIMED_OUT  # the script still found date and timeout
    assert send_variables({}) is None


def test_exec_takes_variables_on_stdin_and_keeps_the_exit_status(tmp_path: Path) -> None:
    assert command_script("echo hi", False) == "echo hi"  # nothing changes without variables
    script = "".join(f"{k}={shlex.quote(v)}; export {k}\n" for k, v in tools().items())
    script += command_script(f"{DUMP}; exit 4", True)
    result = sh.run(script, upload=send_variables(HOSTILE))
    assert result.status == 4 and result.stdout.decode() == expected_dump()


def test_live_script_reads_the_live_release_its_history_and_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "app"
    missing = parse_live(str(path), sh.run(live_script(str(path))).stdout.decode())
    assert not missing.exists and missing.current == ""
    sh.run(prepare_script(str(path), "deploy by bob since 2026-01-01T00:00:00Z token 1"))
    old, new = "20260101T000000Z", "20260102T000000Z"
    for rid in (old, new):
        (path / "releases" / rid).mkdir()
        (path / ".deployer" / "manifests" / f"{rid}.tsv").write_text(f"{'0' * 64}\t1\t644\t{rid}\n")
    os.symlink(f"releases/{old}", path / "current")
    entries = [
        HistoryEntry("deploy", old, "", "2026-01-01T00:00:00Z", "alice", "c1", "main", "https://p/1"),
        HistoryEntry("deploy", new, old, "2026-01-02T00:00:00Z", "alice", "c2", "main", "https://p/2"),
        HistoryEntry("failed", "20260103T000000Z", new, "2026-01-03T00:00:00Z", "eve", detail=f'"release":"{old}"'),
        HistoryEntry("rollback", old, new, "2026-01-04T00:00:00Z", "bob", "c9"),
    ]  # fmt: skip
    for entry in entries:
        sh.run(append_history_script(str(path), entry))
    state = parse_live(str(path), sh.run(live_script(str(path))).stdout.decode())
    assert state.exists and state.current == old and state.releases == (old, new)
    assert state.locked and state.lock.startswith("deploy by bob")
    manifest = (path / ".deployer" / "manifests" / f"{old}.tsv").read_bytes()
    assert state.content == hashlib.sha256(manifest).hexdigest()
    assert [h["action"] for h in state.history] == ["deploy", "rollback"]  # about the live one
