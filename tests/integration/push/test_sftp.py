"""SFTP-only targets over real OpenSSH: an account with ``ForceCommand internal-sftp`` behind the
jump host and the reverse tunnel, and keys forced to sftp-servers that lack an extension
(``internal-sftp -P ...``: OpenSSH's own server, told not to offer it)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.deploy.sftp.tree import trash_releases
from deployer.sandbox.servers import write_keypair
from deployer.ssh.access import Access, RouteRequest, build_routes, connect_options
from deployer.ssh.connect import connected
from deployer.ssh.sftp import SftpSession, open_sftp
from tests.conftest import Run, Topology, run_cli
from tests.integration.helpers import finished, live, releases
from tests.integration.helpers import make_app as make_new_app

Deployer = Callable[..., Run]


def make_app(root: Path, version: str) -> Path:
    """The sample app, its files a minute old: a file written in the second its release was
    published is never vouched for by the snapshot (SFTP times are whole seconds)."""
    app = make_new_app(root, version)
    old = time.time() - 60
    for item in [app, *app.rglob("*")]:
        os.utime(item, (old, old), follow_symlinks=False)
    return app


def tree(root: Path) -> dict[str, str]:
    """Every file (content), symlink (-> target) and directory of a release, with modes."""
    found = {}
    for item in sorted(root.rglob("*")):
        rel = str(item.relative_to(root))
        if item.is_symlink():
            found[rel] = "-> " + os.readlink(item)
        elif item.is_dir():
            found[rel] = f"dir {item.stat().st_mode & 0o777:o}"
        else:
            found[rel] = f"{item.stat().st_mode & 0o777:o} {item.read_text()}"
    return found


def sftp_push(
    deployer: Deployer, topology: Topology, artifact: Path, path: Path, *extra: str
) -> Run:
    return deployer(
        ["push", str(artifact), *topology.sftp_route, "--path", str(path), *extra], env=topology.env
    )


def test_two_pushes_rollback_and_releases_over_sftp_only(
    topology: Topology, deployer: Deployer, tmp_path: Path
) -> None:
    route = topology.sftp_route
    assert topology.sftp_work is not None
    path = topology.sftp_work / "app"
    one, two = make_app(tmp_path, "one"), make_app(tmp_path, "two")

    first = sftp_push(deployer, topology, one, path)
    assert first.status == 0, first.output
    assert (
        "runs no commands (it answered: This service allows sftp connections only.)" in first.output
    )
    assert "deploying over SFTP" in first.output
    release_one = live(path)
    assert tree(path / "releases" / release_one) == tree(one)  # files, modes, the symlink

    second = sftp_push(deployer, topology, two, path)
    assert second.status == 0, second.output
    assert "uploaded 2 of 4 files over SFTP" in second.output, (
        second.output
    )  # VERSION, index.html changed
    assert "2 unchanged copied on the target" in second.output
    release_two = live(path)
    assert release_two != release_one
    assert releases(path) == sorted([release_one, release_two])
    assert tree(path / "releases" / release_two) == tree(two)
    assert (path / ".deployer" / "manifests" / f"{release_two}.tsv").is_file()
    assert not (path / ".deployer" / "lock").exists()

    listed = deployer(["releases", *route, "--path", str(path), "--json"], env=topology.env)
    assert listed.status == 0, listed.output
    rows = json.loads(listed.stdout)["targets"][0]["details"]["releases"]
    assert [(r["id"], r["live"]) for r in rows] == [(release_two, True), (release_one, False)]

    back = deployer(["rollback", *route, "--path", str(path)], env=topology.env)
    assert back.status == 0, back.output
    assert live(path) == release_one
    history = [
        json.loads(line) for line in (path / ".deployer" / "history").read_text().splitlines()
    ]
    assert [h["action"] for h in history] == ["deploy", "deploy", "rollback"]
    assert not (path / ".deployer" / "lock").exists()


def test_hooks_are_refused_over_sftp_and_nothing_changes(
    topology: Topology, deployer: Deployer, tmp_path: Path
) -> None:
    assert topology.sftp_work is not None
    path = topology.sftp_work / "hooks"
    app = make_app(tmp_path, "one")
    assert sftp_push(deployer, topology, app, path).status == 0
    before = (live(path), releases(path))

    detected = sftp_push(deployer, topology, app, path, "--before", "./bin/migrate")
    assert detected.status == 2, detected.output
    assert (
        "allows SFTP only: no commands run over SFTP, so --before cannot run there"
        in detected.stderr
    )
    forced = sftp_push(
        deployer, topology, app, path, "--transport", "sftp", "--healthcheck", "true"
    )
    assert forced.status == 2, forced.output
    assert (
        "--transport sftp: no commands run over SFTP, so --healthcheck cannot run" in forced.stderr
    )
    assert "deploying" not in forced.output  # refused before connecting
    rollback = deployer(["rollback", *topology.sftp_route, "--path", str(path), "--after", "true"],
                        env=topology.env)  # fmt: skip
    assert rollback.status == 2, rollback.output
    assert "SFTP" in rollback.stderr and "--after" in rollback.stderr
    shell = sftp_push(deployer, topology, app, path, "--transport", "shell")
    assert shell.status == 8, shell.output
    assert (
        "runs no commands (it answered: This service allows sftp connections only.)" in shell.stderr
    )
    assert (live(path), releases(path)) == before
    assert not (path / ".deployer" / "lock").exists()
    assert "Traceback" not in detected.output + forced.output + rollback.output + shell.output


def test_a_dead_deploys_lock_is_refused_then_unlocked(
    topology: Topology, deployer: Deployer, tmp_path: Path
) -> None:
    assert topology.sftp_work is not None
    path = topology.sftp_work / "locked"
    app = make_app(tmp_path, "one")
    assert sftp_push(deployer, topology, app, path).status == 0
    lock = path / ".deployer" / "lock"
    lock.mkdir()
    (lock / "info").write_text(
        "deploy by ci-job-41 since 2026-11-30T10:00:00Z token 0123456789abcdef\n"
    )
    shutil.chown(lock, user="deployer-sftp")

    two = make_app(tmp_path, "two")
    refused = sftp_push(deployer, topology, two, path)
    assert refused.status == 10, refused.output
    assert "another deploy holds the lock" in refused.stderr and "ci-job-41" in refused.stderr

    unlocked = deployer(["unlock", *topology.sftp_route, "--path", str(path)], env=topology.env)
    assert unlocked.status == 0, unlocked.output
    assert "removed lock (deploy by ci-job-41" in unlocked.output
    assert not lock.exists()
    assert sftp_push(deployer, topology, two, path).status == 0


def test_prune_keeps_releases_and_never_the_live_one(
    topology: Topology, deployer: Deployer, tmp_path: Path
) -> None:
    assert topology.sftp_work is not None
    path = topology.sftp_work / "prune"
    ids = []
    for version in ("one", "two", "three"):
        run = sftp_push(deployer, topology, make_app(tmp_path, version), path, "--keep", "2")
        assert run.status == 0, run.output
        ids.append(live(path))
    assert releases(path) == ids[1:]
    assert not (path / ".deployer" / "manifests" / f"{ids[0]}.tsv").exists()
    assert list((path / ".deployer" / "trash").iterdir()) == []  # deleted, not just moved

    # the prune reads current again just before it moves anything: the live release stays
    with sftp_session(topology) as files:
        moved = trash_releases(files, str(path), [ids[2]])
    assert moved == [] and live(path) == ids[2] and (path / "releases" / ids[2]).is_dir()


def test_excludes_apply_over_sftp(topology: Topology, deployer: Deployer, tmp_path: Path) -> None:
    assert topology.sftp_work is not None
    path = topology.sftp_work / "excludes"
    app = make_app(tmp_path, "one")
    (app / ".deployignore").write_text("bin/\n")
    run = sftp_push(deployer, topology, app, path, "--exclude", "*.css")
    assert run.status == 0, run.output
    release = path / "releases" / live(path)
    assert sorted(str(p.relative_to(release)) for p in release.rglob("*")) == [
        "VERSION", "index.html", "public", "public/css", "public/index.html",
    ]  # fmt: skip


def test_dry_run_over_sftp_changes_nothing(
    topology: Topology, deployer: Deployer, tmp_path: Path
) -> None:
    assert topology.sftp_work is not None
    path = topology.sftp_work / "dry"
    run = sftp_push(deployer, topology, make_app(tmp_path, "one"), path, "--dry-run")
    assert run.status == 0, run.output
    assert "would upload 4 of 4 files" in run.output and "built over SFTP" in run.output
    assert not path.exists()


def test_shared_entries_and_an_app_that_writes_into_its_release(
    topology: Topology, deployer: Deployer, tmp_path: Path
) -> None:
    assert topology.sftp_work is not None
    path = topology.sftp_work / "shared"
    one = make_app(tmp_path, "one")
    (one / "storage").mkdir()
    (one / "storage" / "seed.txt").write_text("from the artifact\n")
    (one / ".env").write_text("APP=1\n")
    shared = ["--shared", "storage/", "--shared", ".env"]
    assert sftp_push(deployer, topology, one, path, *shared).status == 0
    first = path / "releases" / live(path)
    assert os.readlink(first / "storage") == "../../shared/storage"
    assert (first / ".env").read_text() == "APP=1\n"  # seeded from the release
    assert list((path / "shared" / "storage").iterdir()) == []

    # the application rewrites a file of its live release in place (same size, new mtime)
    (first / "public" / "css" / "site.css").write_text("body{x}\n"[:7] + "\n")
    os.utime(first / "public" / "css" / "site.css", (1, 1))
    second = sftp_push(deployer, topology, make_app(tmp_path, "two"), path, *shared)
    assert second.status == 0, second.output
    assert "1 unchanged file(s) cannot be vouched for" in second.output
    assert (
        path / "releases" / live(path) / "public" / "css" / "site.css"
    ).read_text() == "body{}\n"


@pytest.fixture(scope="module")
def forced_key(
    topology: Topology, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, str]]:
    """env whose key the target forces to `command` (an sftp-server lacking some extension)."""
    made: dict[str, dict[str, str]] = {}

    def env(command: str) -> dict[str, str]:
        if command not in made:
            key = tmp_path_factory.mktemp("forced") / "key"
            public = write_keypair(key, "ed25519", "forced")
            jump = f'restrict,port-forwarding,permitopen="localhost:{topology.box.tunnel_port}"'
            topology.box.jump.authorize(public, jump)
            topology.box.target.authorize(public, f'restrict,command="{command}"')
            made[command] = {**topology.env, "SSH_PRIVATE_KEY": key.read_text()}
        return made[command]

    return env


def test_a_server_without_posix_rename_is_refused(
    topology: Topology,
    deployer: Deployer,
    forced_key: Callable[[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    env = forced_key("internal-sftp -P posix-rename")
    path = topology.deploy_path("no-rename")
    app = make_app(tmp_path, "one")
    for extra in ([], ["--transport", "sftp"]):
        run = deployer(["push", str(app), *topology.route, "--path", str(path), *extra],
                       env=env)  # fmt: skip
        assert run.status == 8, run.output
        assert "does not offer posix-rename@openssh.com on SFTP" in run.stderr
        assert "cannot be switched atomically" in run.stderr
        assert not path.exists()  # refused before anything was created


def test_without_copy_data_unchanged_files_are_sent_again(
    topology: Topology,
    deployer: Deployer,
    forced_key: Callable[[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    env = forced_key("internal-sftp -P copy-data,hardlink")
    path = topology.deploy_path("no-copy")
    for version in ("one", "two"):
        run = deployer(
            ["push", str(make_app(tmp_path, version)), *topology.route, "--path", str(path)],
            env=env,
        )
        assert run.status == 0, run.output
    assert "offers no copy-data" in run.output and "uploaded 4 of 4 files over SFTP" in run.output
    assert tree(path / "releases" / live(path)) == tree(make_app(tmp_path / "again", "two"))


def test_link_unchanged_uses_hard_links(
    topology: Topology,
    deployer: Deployer,
    forced_key: Callable[[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    env = forced_key("internal-sftp")
    path = topology.deploy_path("links")
    ids = []
    for version in ("one", "two"):
        run = deployer(["push", str(make_app(tmp_path, version)), *topology.route, "--path", str(path),
                        "--link-unchanged"], env=env)  # fmt: skip
        assert run.status == 0, run.output
        ids.append(live(path))
    assert "2 unchanged linked on the target" in run.output
    old, new = (path / "releases" / i / "bin" / "migrate" for i in ids)
    assert old.stat().st_ino == new.stat().st_ino


@contextlib.contextmanager
def sftp_session(topology: Topology) -> Iterator[SftpSession]:
    """A real SFTP session to the SFTP-only account, for checks below the command line."""
    route = topology.sftp_route
    access = Access(env=topology.env, local=False)
    (target,) = build_routes(RouteRequest(to=(route[1],), jump=(route[3],)), access)
    with connected(target, connect_options(target, access, lambda line: None)) as connection:
        yield open_sftp(connection)


def test_a_fleet_of_a_shell_target_and_an_sftp_only_one(
    topology: Topology, deployer: Deployer, tmp_path: Path
) -> None:
    sftp_route, shell_route = topology.sftp_route, topology.route
    both = [shell_route[0], shell_route[1], sftp_route[0], sftp_route[1], "--jump", shell_route[3]]
    name = f"fleet-{tmp_path.name}"  # relative: each login's home, so the two never share a lock
    homes = [Path(pwd.getpwnam(user).pw_dir) / name for user in (topology.user, "deployer-sftp")]
    try:
        run = deployer(
            ["push", str(make_app(tmp_path, "one")), *both, "--path", name], env=topology.env
        )
        assert run.status == 0, run.output
        assert "deploying over SFTP" in run.output
        assert [(home / "current" / "VERSION").read_text() for home in homes] == ["one\n", "one\n"]
        status = deployer(["status", *both, "--path", name, "--json"], env=topology.env)
        assert status.status == 0, status.output
        document = json.loads(status.stdout)
        assert [t["status"] for t in document["targets"]] == ["inspected", "inspected"]
        assert len(document["drift"]["groups"]) == 1  # the same files live on both: no drift
        # a hook for both: the SFTP-only target refuses it, so neither target switches
        refused = deployer(["push", str(make_app(tmp_path, "two")), *both, "--path", name,
                            "--before", "true"], env=topology.env)  # fmt: skip
        assert refused.status == 2, refused.output
        assert "allows SFTP only" in refused.output
        assert [(home / "current" / "VERSION").read_text() for home in homes] == ["one\n", "one\n"]
        assert not any((home / ".deployer" / "lock").exists() for home in homes)
    finally:
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


def test_sigterm_at_random_moments_leaves_the_live_release_and_no_silent_lock(
    topology: Topology, tmp_path: Path
) -> None:
    """A cancelled CI job (SIGTERM) during an SFTP push: the live release stays, and the lock is
    released or named in the last line."""
    assert topology.sftp_work is not None
    path = topology.sftp_work / "sigterm"
    big = make_app(tmp_path, "big")
    for index in range(1500):
        (big / "public" / f"page{index}.html").write_text(f"page {index}\n" * 200)
    first = run_cli(["push", str(make_app(tmp_path, "one")), *topology.sftp_route, "--path", str(path)],
                    env=topology.env)  # fmt: skip
    assert first.status == 0, first.output
    good = live(path)
    rng = random.Random(19)
    for attempt in range(6):
        process = subprocess.Popen(
            [sys.executable, "-m", "deployer", "push", str(big), *topology.sftp_route, "--path", str(path)],
            env={**os.environ, **topology.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        seen = ""
        while "deploying over SFTP" not in seen and process.poll() is None:  # the probe is done
            seen += process.stdout.readline()
        time.sleep(rng.random() * 0.8)  # somewhere in lock, upload, switch, record, prune
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        output = seen + rest
        if finished(process.returncode, output):
            good = live(path)  # it finished before the signal: a complete, recorded deploy
            continue
        assert live(path) == good, output
        *_, said, last = [line for line in output.splitlines() if line.strip()]
        assert last == "deployer: interrupted", output
        lock = path / ".deployer" / "lock"
        assert not lock.exists() or "deployer unlock" in said, (attempt, output)
        assert "Traceback" not in output
        if lock.exists():
            run_cli(["unlock", *topology.sftp_route, "--path", str(path)], env=topology.env)
