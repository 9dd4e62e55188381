"""Redeploys send only what changed, verify the tree, and never trust a release changed in place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.helpers import live, make_app

pytestmark = pytest.mark.integration


def push_json(deployer, topology, app: Path, target: Path, *extra: str) -> dict:
    run = deployer(
        ["push", str(app), *topology.route, "--path", str(target), "--json", *extra],
        env=topology.env,
    )
    assert run.status == 0, run.output
    return json.loads(run.stdout)["targets"][0]


def grow(app: Path, count: int = 50) -> None:
    # lines that differ, as real code does: zstd makes a few hundred bytes of 200 equal lines,
    # less than the list of unchanged files a redeploy sends
    for i in range(count):
        lines = (f"console.log({i}, '{os.urandom(8).hex()}');\n" for _ in range(200))
        (app / "public" / f"asset-{i}.js").write_text("".join(lines))


def test_redeploy_sends_only_changed_files(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("delta")
    app = make_app(tmp_path, "d1")
    grow(app)
    first = push_json(deployer, topology, app, target)
    assert (
        first["details"]["transfer"]["files_sent"] == 54
        and first["details"]["transfer"]["files_reused"] == 0
    )
    (app / "public" / "asset-7.js").write_text("changed\n")
    (app / "public" / "new.js").write_text("new\n")
    second = push_json(deployer, topology, app, target)
    transfer = second["details"]["transfer"]
    assert (transfer["files_sent"], transfer["files_reused"]) == (2, 53)
    assert transfer["files_trusted"] == 53  # untouched since published: copied, not hashed again
    assert transfer["bytes_sent"] == len("changed\n") + len("new\n")
    assert second["uploaded_bytes"] < first["uploaded_bytes"]
    current = target / "current"
    assert (current / "public" / "asset-7.js").read_text() == "changed\n"
    assert (current / "public" / "asset-8.js").read_text() == (
        app / "public" / "asset-8.js"
    ).read_text()
    assert os.readlink(current / "index.html") == "public/index.html"  # symlinks always travel
    # copies by default: the releases share no inode, so each stays immutable
    old = target / "releases" / first["release"] / "public" / "asset-8.js"
    assert old.stat().st_ino != (current / "public" / "asset-8.js").stat().st_ino
    manifests = sorted(p.name for p in (target / ".deployer" / "manifests").iterdir())
    assert manifests == sorted(
        f"{release}.{kind}"
        for release in (first["release"], second["release"])
        for kind in ("tsv", "stat")
    )


def test_a_release_changed_in_place_is_not_reused(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("tampered")
    app = make_app(tmp_path, "t1")
    push_json(deployer, topology, app, target)
    live_file = target / "current" / "public" / "css" / "site.css"
    live_file.write_text("written by the app at run time\n")  # the app edits its own release
    run = deployer(["push", str(app), *topology.route, "--path", str(target)], env=topology.env)
    assert run.status == 0, run.output
    assert "1 file(s) changed in place" in run.stderr and "public/css/site.css" in run.stderr
    assert (target / "current" / "public" / "css" / "site.css").read_text() == "body{}\n"


def test_link_unchanged_shares_inodes(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("hardlinks")
    app = make_app(tmp_path, "h1")
    first = push_json(deployer, topology, app, target)
    second = push_json(deployer, topology, app, target, "--link-unchanged")
    assert second["details"]["transfer"]["files_reused"] == 4
    old = target / "releases" / first["release"] / "VERSION"
    new = target / "releases" / second["release"] / "VERSION"
    assert old.stat().st_ino == new.stat().st_ino
    shutil.rmtree(old.parent)  # as a prune does: the shared inodes' link count and ctime change
    # hard links are compared by inode, size and mtime: still unchanged since published
    third = push_json(deployer, topology, app, target, "--link-unchanged")
    assert third["details"]["transfer"]["files_trusted"] == 4


def test_no_delta_sends_everything(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("nodelta")
    app = make_app(tmp_path, "n1")
    push_json(deployer, topology, app, target)
    again = push_json(deployer, topology, app, target, "--no-delta")
    assert (
        again["details"]["transfer"]["files_sent"] == 4
        and again["details"]["transfer"]["files_reused"] == 0
    )
    assert live(target) == again["release"]
