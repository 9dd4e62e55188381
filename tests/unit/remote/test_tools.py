"""The probe's tool checks against real BusyBox userlands: what it finds, what it refuses, what it
chooses. A target that lacks a tool is refused by name before anything is uploaded or locked."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from deployer.errors import RemoteError
from deployer.remote.executor import RunResult
from deployer.remote.layout import Layout
from deployer.remote.probe import preflight_script
from deployer.remote.stage import STAT_FORMAT, stage_script
from deployer.remote.state import TargetState, check_ready, parse_state
from deployer.remote.tools import OPENSSL, OPTIONAL, REQUIRED, Toolset, check_tools
from tests.busybox import BusyBoxShell, applet_dir, require_busybox
from tests.unit.remote.test_scripts import manifest_of, reuse_lines, targz

# every check a BusyBox userland passes: BusyBox has no zstd applet (uploads then use gzip) and
# no openssl (sha256sum verifies)
EVERY = frozenset(need.name for need in (*REQUIRED, *OPTIONAL)) - {"zstd -dc", OPENSSL.name}


def probe_in(userland: BusyBoxShell, path: Path, lock_info: str | None = None) -> TargetState:
    result = userland.run(preflight_script(str(path), lock_info))
    assert result.status == 0, result.stderr
    return parse_state(str(path), result.stdout.decode())


def busybox_without(root: Path, *applets: str) -> BusyBoxShell:
    """A BusyBox target whose PATH lacks the given applets."""
    return BusyBoxShell(applet_dir(root / "bin", require_busybox(), without=applets))


def shim(userland: BusyBoxShell, applet: str, refuse: str, complaint: str) -> None:
    """Replace an applet by BusyBox's own, built without an option: arguments starting with
    `refuse` are rejected the way BusyBox rejects an option it was built without."""
    path = userland.applets / applet
    path.unlink()
    path.write_text(
        f"#!{userland.applets}/sh\n"
        f'for a; do case "$a" in {refuse}*) echo "{applet}: {complaint}" >&2; exit 1 ;; esac; done\n'
        f'exec {require_busybox()} {applet} "$@"\n'
    )
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("applet", "named", "package"),
    [
        ("sha256sum", "sha256sum -c", "coreutils"),
        ("stat", "stat -c", "coreutils"),
        ("xargs", "xargs -0 -r", "findutils"),
        ("tar", "tar -xzf - -C", "tar"),
        ("awk", "awk", "gawk"),
    ],
)
def test_a_target_without_a_tool_is_refused_by_name_before_anything_is_locked(
    tmp_path: Path, applet: str, named: str, package: str
) -> None:
    userland = busybox_without(tmp_path, applet)
    path = tmp_path / "srv" / "app"
    state = probe_in(userland, path, lock_info="deploy by test token T")
    assert [need.name for need in state.tools.missing] == [named]
    with pytest.raises(RemoteError) as refused:
        check_ready(state, "deploy@box", 1024)
    message = str(refused.value)
    assert message.startswith(f"deploy@box lacks {named} — install {package} there ("), message
    assert "again" not in message and "\n" not in message
    assert not state.locked and not path.exists()  # nothing created, nothing locked


def test_several_missing_tools_name_each_package_once(tmp_path: Path) -> None:
    state = probe_in(busybox_without(tmp_path, "stat", "dd", "find"), tmp_path / "app")
    with pytest.raises(RemoteError, match=r"^t lacks dd iflag=fullblock, stat -c, find -exec \{\} \+"
                       r" — install coreutils and findutils there"):  # fmt: skip
        check_ready(state, "t", 1)


def test_busybox_without_long_cp_options_or_xargs_p(tmp_path: Path) -> None:
    """Built like OpenWrt's: no `cp --parents` (refused), no `xargs -P` (copies one at a time)."""
    userland = busybox_without(tmp_path)
    shim(userland, "xargs", "-P", "invalid option -- 'P'")
    tools = probe_in(userland, tmp_path / "app").tools
    assert tools.have == EVERY - {"xargs -P"} and not tools.parallel and tools.reflink
    shim(userland, "cp", "--", "unrecognized option")
    tools = probe_in(userland, tmp_path / "app").tools
    assert not tools.reflink
    assert [need.name for need in tools.missing] == ["cp --parents -t"]


def test_without_xargs_p_the_unchanged_files_are_copied_one_batch_at_a_time(tmp_path: Path) -> None:
    """Probe once and choose: the stage script uses what the probe found, and nothing else."""
    userland = busybox_without(tmp_path)
    shim(userland, "xargs", "-P", "invalid option -- 'P'")
    path = tmp_path / "app"
    tools = probe_in(userland, path).tools
    v1 = {f"d{i % 7}/f{i}": b"%d" % i for i in range(600)}
    assert _stage(userland, path, "20260101T000000Z", v1, v1, "", tools).status == 0
    v2 = dict(v1, **{"d0/f0": b"changed"})
    result = _stage(
        userland, path, "20260102T000000Z", v2, {"d0/f0": b"changed"}, "20260101T000000Z", tools
    )
    assert result.status == 0, result.stderr
    release = path / "releases" / "20260102T000000Z"
    assert {str(p.relative_to(release)) for p in release.rglob("*") if p.is_file()} == set(v2)
    assert all((release / name).read_bytes() == data for name, data in v2.items())


def _stage(userland: BusyBoxShell, path: Path, rid: str, files: dict[str, bytes], sent: dict[str, bytes],
           previous: str, tools: Toolset) -> RunResult:  # fmt: skip
    userland.run(f"mkdir -p {path}/releases {path}/.deployer/manifests")
    reuse = reuse_lines({name: data for name, data in files.items() if name not in sent})
    sections = [gzip.compress(manifest_of(files)), gzip.compress(reuse)]
    script = stage_script(Layout(str(path), rid), [], sections=(len(sections[0]), len(sections[1])),
                          previous_id=previous, hardlink=False, codec="gzip", tools=tools)  # fmt: skip
    assert "-P" not in script.split()
    return userland.run(script, upload=lambda out: out.write(b"".join(sections) + targz(sent)))


def test_no_scratch_directory_is_said_as_such() -> None:
    state = parse_state("/srv/app", "writable=yes\nscratch=no\n")
    with pytest.raises(
        RemoteError, match=r"could not create a scratch directory on t .* to check its tools"
    ):
        check_tools(state.tools, "t", state.path)


def test_the_stat_check_uses_the_stage_scripts_format() -> None:
    check = next(need.check for need in REQUIRED if need.name == "stat -c")
    assert f"stat -c '{STAT_FORMAT}'" in check


def test_a_locking_probe_keeps_what_it_found_and_the_next_probe_reuses_it(tmp_path: Path) -> None:
    userland = busybox_without(tmp_path)
    path = tmp_path / "app"
    first = probe_in(userland, path, lock_info="deploy by test token T")
    assert first.locked and first.tools.have == EVERY
    kept = path / ".deployer" / "tools"
    key, *lines = kept.read_text().splitlines()
    assert sorted(lines) == sorted(f"have={name}" for name in EVERY)
    (path / ".deployer" / "lock" / "info").unlink()
    (path / ".deployer" / "lock").rmdir()
    # the next probe believes the kept result (under the same key) instead of checking again
    kept.write_text("\n".join([key, *(line for line in lines if line != "have=timeout")]) + "\n")
    again = probe_in(userland, path, lock_info="deploy by test token T")
    assert again.locked and again.tools.have == EVERY - {"timeout"}
    # a probe asked to check a group runs every check, and keeps nothing
    (path / ".deployer" / "lock" / "info").unlink()
    (path / ".deployer" / "lock").rmdir()
    result = userland.run(preflight_script(str(path), "deploy by test token T", group="root"))
    assert "have=timeout" in result.stdout.decode()


def test_a_tool_replaced_since_the_last_probe_is_checked_again(tmp_path: Path) -> None:
    userland = busybox_without(tmp_path)
    path = tmp_path / "app"
    assert probe_in(userland, path, lock_info="deploy by test token T").tools.parallel
    (path / ".deployer" / "lock" / "info").unlink()
    (path / ".deployer" / "lock").rmdir()
    shim(userland, "xargs", "-P", "invalid option -- 'P'")  # within the same second, too
    again = probe_in(userland, path, lock_info="deploy by test token T")
    assert again.locked and not again.tools.parallel and again.tools.have == EVERY - {"xargs -P"}
    removed = busybox_without(tmp_path / "other", "stat")
    (path / ".deployer" / "lock" / "info").unlink()
    (path / ".deployer" / "lock").rmdir()
    moved = BusyBoxShell(removed.applets)
    state = probe_in(moved, path, lock_info="deploy by test token T")
    assert [need.name for need in state.tools.missing] == ["stat -c"] and not state.locked
