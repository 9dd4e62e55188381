"""deployer push/releases/rollback/exec through a real jump sshd and a real ssh -R tunnel."""

from __future__ import annotations

import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.integration.helpers import live, make_app, releases

pytestmark = pytest.mark.integration


def test_push_through_jump_and_tunnel(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("basic")
    record = target / "shared" / "hooks.log"
    env = {
        **topology.env,
        "GITLAB_CI": "true",
        "GITLAB_USER_LOGIN": "alice",
        "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
        "CI_PIPELINE_URL": "https://gitlab.example/group/app/-/pipelines/42",
    }
    hook = f'echo "$0 $PWD|$DEPLOYER_RELEASE_DIR|$DEPLOYER_PREVIOUS_RELEASE_DIR|$DEPLOYER_PATH" >> {record}'
    args = [*topology.route, "--path", str(target), "--before", "./bin/migrate",
            "--before", hook, "--after", hook, "--healthcheck", "test -f VERSION"]  # fmt: skip

    first = deployer(["push", str(make_app(tmp_path, "v1")), *args], env=env)
    assert first.status == 0, first.output
    first_id = live(target)
    assert (target / "current" / "public" / "index.html").read_text() == "<h1>v1</h1>\n"
    assert (target / "current" / "bin" / "migrate").stat().st_mode & 0o111
    assert os.readlink(target / "current" / "index.html") == "public/index.html"
    assert "migrated" in first.stderr  # hook output streamed into the job log
    assert "uploaded 4 of 4 files" in first.stderr

    second = deployer(["push", str(make_app(tmp_path, "v2")), *args], env=env)
    assert second.status == 0, second.output
    second_id = live(target)
    assert second_id != first_id and releases(target) == sorted([first_id, second_id])
    lines = record.read_text().splitlines()
    # before and after hooks of the second deploy saw the release, the previous one and the path
    release_dir = f"{target.resolve()}/releases/{second_id}"
    assert (
        lines[-1]
        == f"sh {release_dir}|{release_dir}|{target.resolve()}/releases/{first_id}|{target.resolve()}"
    )
    assert lines[0].endswith(
        f"|{target.resolve()}/releases/{first_id}||{target.resolve()}"
    )  # first deploy: empty previous
    history = [
        json.loads(line) for line in (target / ".deployer" / "history").read_text().splitlines()
    ]
    assert [h["action"] for h in history] == ["deploy", "deploy"]
    assert history[-1]["by"] == "alice" and history[-1]["commit"].startswith("0123456789ab")
    assert history[-1]["pipeline"].endswith("/pipelines/42") and history[-1]["previous"] == first_id
    assert not (target / ".deployer" / "lock").exists()

    listing = deployer(["releases", *topology.route, "--path", str(target)], env=env)
    assert listing.status == 0, listing.output
    assert f"* live  {second_id}  alice 0123456789ab" in listing.stdout
    assert f"        {first_id}" in listing.stdout

    back = deployer(["rollback", *topology.route, "--path", str(target)], env=env)
    assert back.status == 0, back.output
    assert live(target) == first_id
    assert "rolled back" in back.stderr


def test_archive_kinds_and_pruning(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("kinds")
    app = make_app(tmp_path, "arch")
    tgz = tmp_path / "app.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(app, arcname=".")
    zipped = tmp_path / "app.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for file in sorted(app.rglob("*")):
            if file.is_file() and not file.is_symlink():
                archive.write(file, file.relative_to(app).as_posix())
    plain_tar = tmp_path / "app.tar"
    with tarfile.open(plain_tar, "w") as tar:
        tar.add(app, arcname="app-root")
    seen = []
    for artifact in (tgz, zipped, plain_tar, app):
        run = deployer(["push", str(artifact), *topology.route, "--path", str(target), "--keep", "2"],
                       env=topology.env)  # fmt: skip
        assert run.status == 0, run.output
        seen.append(live(target))
    assert (
        target / "current" / "app-root" / "VERSION"
    ).exists() is False  # the dir artifact is live
    assert (target / "current" / "VERSION").read_text() == "arch\n"
    assert releases(target) == seen[-2:]  # --keep 2 pruned the older ones


def test_shared_entries_are_linked(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("shared")
    app = make_app(tmp_path, "s1")
    (app / ".env").write_text("SECRET_FROM_BUILD=1\n")
    (app / "storage").mkdir()
    (app / "storage" / "from-build.txt").write_text("x")
    args = [*topology.route, "--path", str(target), "--shared", "storage/", "--shared", ".env",
            "--before", "echo upload > storage/user-upload.txt"]  # fmt: skip
    assert deployer(["push", str(app), *args], env=topology.env).status == 0
    assert os.readlink(target / "current" / "storage") == "../../shared/storage"
    assert (
        target / "shared" / ".env"
    ).read_text() == "SECRET_FROM_BUILD=1\n"  # seeded on first deploy
    (target / "shared" / ".env").write_text("EDITED_ON_SERVER=1\n")
    run = deployer(["push", str(make_app(tmp_path, "s2")), *args], env=topology.env)
    assert run.status == 0, run.output
    assert (target / "current" / ".env").read_text() == "EDITED_ON_SERVER=1\n"
    assert (target / "current" / "storage" / "user-upload.txt").read_text() == "upload\n"


def test_dry_run_changes_nothing(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("dry")
    run = deployer(["push", str(make_app(tmp_path, "d")), *topology.route, "--path", str(target),
                    "--before", "./bin/migrate", "--dry-run"], env=topology.env)  # fmt: skip
    assert run.status == 0, run.output
    assert (
        "would upload 4 of 4 files" in run.stderr
        and "would run before hook: ./bin/migrate" in run.stderr
    )
    assert "nothing was changed" in run.stderr
    assert not target.exists()


def test_json_output(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("json")
    run = deployer(["push", str(make_app(tmp_path, "j")), *topology.route, "--path", str(target), "--json"],
                   env=topology.env)  # fmt: skip
    assert run.status == 0, run.output
    document = json.loads(run.stdout)
    assert document["ok"] is True and document["targets"][0]["status"] == "deployed"
    assert document["targets"][0]["release"] == live(target)


def test_exec_streams_and_returns_status(topology, deployer) -> None:
    run = deployer(
        ["exec", *topology.route, "--", "echo out; echo err >&2; exit 3"], env=topology.env
    )
    assert run.status == 3
    assert run.stdout == "out\n" and "err" in run.stderr


def test_keyscan_output_is_usable_as_known_hosts(topology, deployer, tmp_path: Path) -> None:
    scan = deployer(["keyscan", *topology.route], env={**topology.env, "SSH_KNOWN_HOSTS": ""})
    assert scan.status == 0, scan.output
    assert f"[localhost]:{topology.box.tunnel_port} ssh-ed25519 " in scan.stdout
    assert f"[127.0.0.1]:{topology.box.jump.port} ssh-ed25519 " in scan.stdout
    assert "SHA256:" in scan.stdout and "not yet trusted" in scan.stdout
    env = {**topology.env, "SSH_KNOWN_HOSTS": scan.stdout}  # comments included, as pasted
    run = deployer(["exec", *topology.route, "--", "true"], env=env)
    assert run.status == 0, run.output


def test_agent_serves_the_key_to_plain_ssh(topology, deployer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(topology.box.known_hosts())
    box = topology.box
    script = (
        f"ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile={known} -o IdentitiesOnly=no"
        f" -p {box.tunnel_port} {topology.user}@localhost echo via-agent"
    )
    run = deployer(["agent", "--", "sh", "-c", script], env=topology.env)
    assert run.status == 0, run.output
    assert run.stdout.strip() == "via-agent"


def test_sandbox_demo_runs(deployer, tmp_path: Path) -> None:
    run = deployer(["sandbox", "--dir", str(tmp_path / "demo")], timeout=180)
    assert run.status == 0, run.output
    assert "failed its healthcheck and was switched back" in run.stderr
    current = tmp_path / "demo" / "srv" / "app" / "current"
    assert (current / "VERSION").read_text() == "v2\n"


def test_several_targets_all_or_nothing(topology, deployer, tmp_path: Path) -> None:
    from deployer.sandbox.servers import free_port

    target = topology.deploy_path("fleet")
    jump = f"{topology.user}@127.0.0.1:{topology.box.jump.port}"
    good = f"{topology.user}@localhost:{topology.box.tunnel_port}"
    planned = deployer(["push", str(make_app(tmp_path, "f0")), "--to", good, "--to", good, "--jump", jump,
                        "--path", str(target), "--dry-run", "--json"], env=topology.env)  # fmt: skip
    assert planned.status == 0, planned.output
    assert [t["status"] for t in json.loads(planned.stdout)["targets"]] == ["planned", "planned"]
    dead = f"{topology.user}@localhost:{free_port()}"
    run = deployer(["push", str(make_app(tmp_path, "f1")), "--to", f"{good},{dead}", "--jump", jump,
                    "--path", str(target), "--json"], env=topology.env)  # fmt: skip
    assert run.status == 7, run.output
    document = json.loads(run.stdout)
    assert [t["status"] for t in document["targets"]] == ["aborted", "failed"]
    assert f"summary: {good}: aborted" in run.stderr and f"summary: {dead}: failed" in run.stderr
    assert live(target) == "" and releases(target) == []
    shard = deployer(["push", str(make_app(tmp_path, "f2")), "--to", f"{good},{dead}", "--jump", jump,
                      "--path", str(target), "--shard", "1/2"], env=topology.env)  # fmt: skip
    assert shard.status == 0, shard.output
    assert live(target)
