"""After the switch the live site is sacred: faults caused for real while a new release is live.

The route is cut by killing the reverse tunnel's ``ssh -R`` (and, or not, starting it again
within the retry window) while an after hook or the healthcheck runs; a target whose PATH has no
``timeout`` hangs an after hook; a fleet loses one target after switching all three. Every test
asserts the exit code, the one-line message, that ``current`` resolves to an existing release,
and the lock.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.errors import ExitCode
from deployer.sandbox.topology import Sandbox
from tests.conftest import Run, run_cli
from tests.integration.helpers import (
    gone,
    live,
    make_app,
    one_error_line,
    releases,
    tools_without,
)

pytestmark = pytest.mark.integration


def resolves(path: Path) -> bool:
    """current is a symlink to releases/<id> that exists."""
    link = path / "current"
    return (
        link.is_symlink() and os.readlink(link).startswith("releases/") and link.resolve().is_dir()
    )


def lock_info(path: Path) -> str:
    """The lock's info line ('' when there is no lock)."""
    info = path / ".deployer" / "lock" / "info"
    return info.read_text().splitlines()[0] if info.exists() else ""


def history(path: Path) -> str:
    file = path / ".deployer" / "history"
    return file.read_text() if file.exists() else ""


def wait_for(path: Path, seconds: float = 45) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared"


def new_box(base: Path, user: str, config: str = "") -> Sandbox:
    return Sandbox(base, user=user, target_config=config).start()


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="deployer-after-switch-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cutbox(topology, base: Path) -> Iterator[Sandbox]:
    """A jump + target + tunnel of this module's own, so cutting its tunnel disturbs nobody."""
    box = new_box(base / "cut", topology.user)
    try:
        yield box
    finally:
        box.stop()


def cli_env(box: Sandbox) -> dict[str, str]:
    return {**box.environment(), "CI": "true"}


def push_args(box: Sandbox, artifact: Path, target: Path, *extra: str) -> list[str]:
    return ["push", str(artifact), *box.route_args(), "--path", str(target), *extra]


def first_release(box: Sandbox, target: Path, tmp_path: Path) -> str:
    """Deploy v1 to target through box; return its release id."""
    run = run_cli(push_args(box, make_app(tmp_path, "v1"), target), env=cli_env(box))
    assert run.status == 0, run.output
    return live(target)


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """The CLI in the background, for faults caused while it runs."""
    return subprocess.Popen([sys.executable, "-m", "deployer", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> Run:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"deployer did not finish within {timeout} s:\n{stderr}") from None
    return Run(proc.returncode, stdout, stderr)


# ---------------------------------------------------------------------------- a route cut after the switch


@pytest.mark.parametrize("restored", [True, False], ids=["restored", "not-restored"])
@pytest.mark.parametrize("kind", ["after", "healthcheck"])
def test_route_cut_after_the_switch(cutbox, topology, tmp_path, kind: str, restored: bool) -> None:
    target = topology.deploy_path(f"cut-{kind}-{'restored' if restored else 'lost'}")
    env = cli_env(cutbox)
    before = first_release(cutbox, target, tmp_path)
    started = target / "shared" / "hook-started"
    # only the new release hangs: the after hooks that run again in the restored one are quick
    hook = f"if grep -q v2 VERSION; then touch {started}; sleep 20; fi"
    flags = ["--after", hook] if kind == "after" else ["--healthcheck", hook]
    proc = start(push_args(cutbox, make_app(tmp_path, "v2"), target, *flags), env)
    try:
        wait_for(started)
        new = live(target)
        assert new != before  # the switch happened: the new release is live and being checked
        cutbox.close_tunnel()
        if restored:
            time.sleep(5)  # inside the retry window (1, 3 and 8 s)
            cutbox.open_tunnel()
        run = finish(proc)
    finally:
        if cutbox.tunnel is None:
            cutbox.open_tunnel()
    step = "after hook" if kind == "after" else "healthcheck"
    assert "healthcheck failed" not in run.stderr and "status -1" not in run.stderr, run.stderr
    assert resolves(target)
    line = one_error_line(run.stderr)
    if restored:
        assert run.status == ExitCode.CONNECT, run.stderr
        assert f"lost the connection to {cutbox.route_args()[1]} during the {step}" in line
        assert f"switched back to {before}" in line
        assert live(target) == before and releases(target) == [before]
        assert lock_info(target) == ""
        assert '"action":"failed"' in history(target) and f'"release":"{new}"' in history(target)
        return
    assert run.status == ExitCode.UNCONFIRMED, run.stderr
    assert f"release {new} is live but unconfirmed" in line
    assert f"the release before it is {before}" in line and "the deploy lock stays" in line
    command = re.search(r"`(deployer rollback [^`]*)`", line)
    assert command is not None, line
    words = shlex.split(command[1])
    assert words[words.index("--release") + 1] == before and "--lock-token" in words
    assert live(target) == new
    info = lock_info(target)
    assert f"switched current to releases/{new}" in info and f"(previous: {before})" in info
    if kind == "after":  # deployer unlock says what it found, and keeps the new release live
        unlocked = run_cli(["unlock", *cutbox.route_args(), "--path", str(target)], env=env)
        assert unlocked.status == 0, unlocked.output
        assert f"release {new} went live at " in unlocked.stderr
        assert f"was never confirmed — check it; `deployer rollback --release {before}`" in (
            unlocked.stderr
        )
        assert lock_info(target) == "" and live(target) == new and resolves(target)
        return
    # the next push says what happened, and the printed command puts the old release back
    third = make_app(tmp_path, "v3")
    blocked = run_cli(push_args(cutbox, third, target), env=env)
    assert blocked.status == ExitCode.LOCK
    assert f"it switched current to {new} (previous: {before}) and has not confirmed it" in (
        one_error_line(blocked.stderr)
    )
    back = run_cli(words[1:], env=env)
    assert back.status == 0, back.output
    assert live(target) == before and lock_info(target) == "" and resolves(target)
    assert '"action":"failed"' in history(target).splitlines()[-2]
    # the release that went live unconfirmed does not count toward --keep: the good one stays
    again = run_cli(push_args(cutbox, third, target, "--keep", "2"), env=env)
    assert again.status == 0, again.output
    assert releases(target) == [before, live(target)] and new not in releases(target)


def test_rollback_without_an_earlier_release_exits_non_zero(cutbox, topology, tmp_path) -> None:
    target = topology.deploy_path("only-one")
    env = cli_env(cutbox)
    first_release(cutbox, target, tmp_path)
    run = run_cli(["rollback", *cutbox.route_args(), "--path", str(target)], env=env)
    assert run.status == ExitCode.REMOTE
    assert "nothing to roll back to" in one_error_line(run.stderr)
    assert resolves(target) and lock_info(target) == ""


def test_sigterm_during_an_after_hook_switches_back(cutbox, topology, tmp_path) -> None:
    target = topology.deploy_path("sigterm-after")
    env = cli_env(cutbox)
    before = first_release(cutbox, target, tmp_path)
    started = target / "shared" / "after-started"
    hook = f"if grep -q v2 VERSION; then touch {started}; sleep 30; fi"
    proc = start(push_args(cutbox, make_app(tmp_path, "v2"), target, "--after", hook), env)
    wait_for(started)
    proc.terminate()  # what a cancelled CI job sends
    run = finish(proc)
    assert run.status == ExitCode.INTERRUPTED, run.stderr
    assert f"interrupted: cleaned up, switched back to {before}" in run.stderr
    assert live(target) == before and releases(target) == [before] and resolves(target)
    assert lock_info(target) == ""


# ---------------------------------------------------------------------------- a target without timeout


@pytest.fixture(scope="module")
def no_timeout_box(topology, base: Path) -> Iterator[Sandbox]:
    """A target whose sessions get a PATH with every usual tool except coreutils timeout."""
    tools = tools_without("timeout", base / "tools-without-timeout")
    box = new_box(base / "no-timeout", topology.user, f"SetEnv PATH={tools}")
    try:
        yield box
    finally:
        box.stop()


def test_hung_after_hook_without_timeout_on_the_target(no_timeout_box, topology, tmp_path) -> None:
    box = no_timeout_box
    target = topology.deploy_path("no-timeout")
    env = cli_env(box)
    before = first_release(box, target, tmp_path)
    pidfile = target / "shared" / "hook.pid"
    hook = f"if grep -q v2 VERSION; then echo $$ > {pidfile}; exec sleep 120; fi"
    started = time.monotonic()
    run = run_cli(push_args(box, make_app(tmp_path, "v2"), target, "--after", hook, "--hook-timeout", "1"),
                  env=env, timeout=120)  # fmt: skip
    assert time.monotonic() - started < 60
    assert run.status == ExitCode.HOOK, run.stderr
    line = one_error_line(run.stderr)
    assert "after hook" in line and "did not finish within 1 s" in line
    assert f"switched back to {before}" in line
    assert live(target) == before and releases(target) == [before] and resolves(target)
    assert lock_info(target) == ""
    # the client stopped the hook's whole process group on the target, not only its channel
    assert gone(int(pidfile.read_text())), "the hung hook outlived the deploy"


def test_hook_timeout_kills_the_hooks_children_on_the_target(cutbox, topology, tmp_path) -> None:
    target = topology.deploy_path("timeout-group")
    env = cli_env(cutbox)
    pidfile = target / "shared" / "child.pid"
    first_release(cutbox, target, tmp_path)
    hook = f"sleep 120 & echo $! > {pidfile}; sleep 120"
    run = run_cli(push_args(cutbox, make_app(tmp_path, "v2"), target, "--before", hook,
                            "--hook-timeout", "1"), env=env)  # fmt: skip
    assert run.status == ExitCode.HOOK and "did not finish within 1 s" in one_error_line(run.stderr)
    assert gone(int(pidfile.read_text())), "the hook's child outlived the timeout"


# ---------------------------------------------------------------------------- a fleet


@pytest.fixture(scope="module")
def fleet(
    topology, base: Path, cutbox: Sandbox
) -> Iterator[tuple[list[Sandbox], list[Path], Path]]:
    """Three jump + target + tunnel sets sharing the CI key; each target serves its own folder.

    A relative --path lands in each target's folder: their sshd runs every command there.
    """
    boxes: list[Sandbox] = []
    homes = []
    try:
        for n in range(3):
            home = topology.deploy_path(f"fleet-{n}")
            home.mkdir()
            topology.give(home)
            homes.append(home)
            root = base / f"fleet-{n}"
            shutil.copytree(cutbox.keys_dir, root / "keys")  # one CI key for all three
            forced = f'ForceCommand cd {home} && exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"'
            boxes.append(new_box(root, topology.user, forced))
        config = base / "fleet_ssh_config"
        config.write_text("".join(
            f"Host t{n}\n  HostName localhost\n  Port {box.tunnel_port}\n  User {topology.user}\n"
            f"  ProxyJump {topology.user}@127.0.0.1:{box.jump.port}\n"
            for n, box in enumerate(boxes)
        ))  # fmt: skip
        yield boxes, homes, config
    finally:
        for box in boxes:
            box.stop()


def test_fleet_of_three_where_one_target_dies_after_the_switch(fleet, tmp_path) -> None:
    boxes, homes, config = fleet
    env = {**boxes[0].environment(), "CI": "true",
           "SSH_KNOWN_HOSTS": "".join(box.known_hosts() for box in boxes)}  # fmt: skip
    route = ["--ssh-config", str(config), "--to", "t0", "--to", "t1", "--to", "t2"]
    targets = [home / "app" for home in homes]
    first = run_cli(["push", str(make_app(tmp_path, "v1")), *route, "--path", "app"], env=env)
    assert first.status == 0, first.output
    before = [live(t) for t in targets]
    started = [t / "shared" / "check-started" for t in targets]
    check = "if grep -q v2 VERSION; then touch ../../shared/check-started; sleep 4; fi"
    proc = start(["push", str(make_app(tmp_path, "v2")), *route, "--path", "app",
                  "--healthcheck", check], env)  # fmt: skip
    try:
        for marker in started:
            wait_for(marker)
        new = live(targets[2])
        boxes[2].close_tunnel()  # and it stays down
        run = finish(proc)
    finally:
        if boxes[2].tunnel is None:
            boxes[2].open_tunnel()
    assert run.status == ExitCode.UNCONFIRMED, run.stderr
    line = one_error_line(run.stderr)
    label = f"{boxes[2].route_args()[1]}"
    assert line.startswith(f"deployer: error: {label}: release {new} is live but unconfirmed")
    assert f"the release before it is {before[2]}" in line and "deployer rollback --to " in line
    for target, old in zip(targets[:2], before[:2], strict=True):
        assert live(target) == old and releases(target) == [old] and resolves(target)
        assert lock_info(target) == ""
    assert live(targets[2]) == new and resolves(targets[2])
    assert f"switched current to releases/{new}" in lock_info(targets[2])
    assert f"summary: {label}: unconfirmed" in run.stderr
    assert run.stderr.count(": reverted") == 2
