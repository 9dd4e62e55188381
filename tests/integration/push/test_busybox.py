"""deployer push, rollback and releases against BusyBox targets over real sshd.

One target's login has only BusyBox: its PATH holds one symlink per applet of Debian's busybox
(1.35, the applet set Alpine ships) and its /bin/sh is BusyBox (see busybox_host.py). Another one
lacks one required applet and must be refused in the probe, by name, before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployer.sandbox.servers import SshServer, stop_process_group
from tests.busybox import applet_dir, require, require_busybox
from tests.integration import busybox_host
from tests.integration.helpers import live, make_app, releases

pytestmark = pytest.mark.integration


@dataclass
class Host:
    """A running BusyBox target and what the CLI needs to reach it."""

    server: SshServer
    applets: Path
    user: str
    env: dict[str, str]

    @property
    def route(self) -> list[str]:
        """--to for this target, straight to its sshd on loopback."""
        return ["--to", f"{self.user}@127.0.0.1:{self.server.port}"]


@dataclass
class Hosts:
    full: Host  # every applet
    no_stat: Host  # every applet but stat


@pytest.fixture(scope="module")
def hosts(topology: Any) -> Iterator[Hosts]:
    """Two BusyBox targets for the topology's login, reached with the topology's CI key."""
    busybox = require_busybox()
    require(busybox_host.unavailable())
    base = Path(tempfile.mkdtemp(prefix="deployer-busybox-"))
    base.chmod(0o755)
    ci_public = topology.box.ci_key.with_name("ci_ed25519.pub").read_text().strip()
    started: list[Host] = []
    try:
        for name, without in (("full", ()), ("no-stat", ("stat",))):
            applets = applet_dir(base / f"{name}-bin", busybox, without)
            server = SshServer(f"busybox-{name}", base / name, topology.user)
            busybox_host.start(server, topology.user, applets, busybox)
            server.authorize(ci_public)
            known = topology.env["SSH_KNOWN_HOSTS"] + busybox_host.known_hosts(server)
            started.append(
                Host(server, applets, topology.user, {**topology.env, "SSH_KNOWN_HOSTS": known})
            )
        yield Hosts(*started)
    finally:
        for host in started:
            stop_process_group(host.server.process)
        shutil.rmtree(base, ignore_errors=True)


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (symlinks as their targets)."""
    return {
        str(p.relative_to(root)): (
            "-> " + str(p.readlink())
            if p.is_symlink()
            else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(root.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


def test_push_delta_switch_back_rollback_releases_and_prune(
    hosts: Hosts, topology: Any, deployer: Any, tmp_path: Path
) -> None:
    host = hosts.full
    target = topology.deploy_path("busybox-flow")
    base = [*host.route, "--path", str(target)]
    # the hooks show what they run in: BusyBox's /bin/sh, and BusyBox's applets on PATH
    where = '/bin/sh --help 2>&1 | head -n 1; command -v sha256sum; echo "before in $PWD"'
    v1 = make_app(tmp_path, "v1")
    first = deployer(
        ["push", str(v1), *base, "--before", where, "--after", "./bin/migrate"], env=host.env
    )
    assert first.status == 0, first.output
    assert "before| BusyBox v1." in first.stderr, first.stderr
    assert f"before| {host.applets}/sha256sum" in first.stderr
    assert "after| migrated" in first.stderr
    first_id = live(target)
    assert tree(target / "current") == tree(v1)

    # a delta: two files changed, two copied on the target and trusted by the stat snapshot
    v2 = make_app(tmp_path, "v2")
    second = deployer(["push", str(v2), *base], env=host.env)
    assert second.status == 0, second.output
    assert "uploaded 2 of 4 files" in second.stderr
    assert "2 unchanged reused on the target, 2 of them not hashed again" in second.stderr
    second_id = live(target)
    assert second_id != first_id and tree(target / "current") == tree(v2)

    # a failing healthcheck: switched back, the failed release discarded
    third = deployer(["push", str(make_app(tmp_path, "v3")), *base, "--healthcheck", "test -f NOPE",
                      "--healthcheck-retries", "0"], env=host.env)  # fmt: skip
    assert third.status == 9, third.output
    assert "switched back" in third.stderr
    assert live(target) == second_id and releases(target) == [first_id, second_id]
    assert tree(target / "current") == tree(v2)

    back = deployer(["rollback", *base], env=host.env)
    assert back.status == 0, back.output
    assert live(target) == first_id and tree(target / "current") == tree(v1)

    listing = deployer(["releases", *base], env=host.env)
    assert listing.status == 0, listing.output
    assert f"* live  {first_id}" in listing.stdout and second_id in listing.stdout

    # keep 2: the oldest release goes (renamed away at once, deleted in the background)
    fourth = deployer(["push", str(make_app(tmp_path, "v4")), *base, "--keep", "2"], env=host.env)
    assert fourth.status == 0, fourth.output
    assert (
        releases(target) == [second_id, live(target)] and "pruned 1 old release(s)" in fourth.stderr
    )
    trash = target / ".deployer" / "trash"
    deadline = time.monotonic() + 10
    while any(trash.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(trash.iterdir())
    history = [
        json.loads(line) for line in (target / ".deployer" / "history").read_text().splitlines()
    ]
    assert [h["action"] for h in history] == ["deploy", "deploy", "failed", "rollback", "deploy"]
    assert not (target / ".deployer" / "lock").exists()


def test_linked_unchanged_files_and_a_hook_time_limit(
    hosts: Hosts, topology: Any, deployer: Any, tmp_path: Path
) -> None:
    host = hosts.full
    target = topology.deploy_path("busybox-links")
    base = [*host.route, "--path", str(target)]
    assert deployer(["push", str(make_app(tmp_path, "v1")), *base], env=host.env).status == 0
    first_id = live(target)
    linked = deployer(
        ["push", str(make_app(tmp_path, "v2")), *base, "--link-unchanged"], env=host.env
    )
    assert linked.status == 0, linked.output
    linked_id = live(target)
    css = "public/css/site.css"
    assert (target / "current" / css).stat().st_ino == (
        target / "releases" / first_id / css
    ).stat().st_ino

    # BusyBox's timeout is killed with the hook: still reported as the time limit, not a status
    slow = deployer(["push", str(make_app(tmp_path, "v3")), *base, "--before", "sleep 30",
                     "--hook-timeout", "2"], env=host.env)  # fmt: skip
    assert slow.status == 9, slow.output
    assert "before hook `sleep 30`" in slow.stderr and "did not finish within 2 s" in slow.stderr
    assert releases(target) == [first_id, linked_id] and live(target) == linked_id


def test_a_target_lacking_a_tool_is_refused_in_the_probe_by_name(
    hosts: Hosts, topology: Any, deployer: Any, tmp_path: Path
) -> None:
    host = hosts.no_stat
    target = topology.deploy_path("busybox-no-stat")
    run = deployer(
        ["push", str(make_app(tmp_path, "v1")), *host.route, "--path", str(target)], env=host.env
    )
    assert run.status == 8, run.output
    last = run.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("deployer: error: ") and " lacks stat -c — install coreutils there" in last
    ), last
    assert "again" not in run.output and "Traceback" not in run.output
    assert "upload" not in run.stderr and not target.exists()  # refused before anything was sent
