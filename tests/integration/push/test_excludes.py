"""Excludes over real sshd: .deployignore and --exclude for a directory and a tar.gz, the dry run's
list, and a redeploy whose manifest and delta never see what was left out."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import live, make_app

pytestmark = pytest.mark.integration

IGNORE = "# never on a server\nnode_modules/\n*.map\n!keep.map\n!node_modules/keep.js\n/notes.txt\n"


def app_with_noise(root: Path, version: str) -> Path:
    """make_app plus what a build leaves behind, and a .deployignore that drops most of it."""
    app = make_app(root, version)
    for name, text in {
        "node_modules/left-pad/index.js": "module.exports = 1\n",
        "node_modules/keep.js": "kept?\n",
        "public/app.js.map": f"{version} map\n",
        "public/keep.map": "wanted\n",
        "notes.txt": "private notes\n",
        "docs/notes.txt": "public notes\n",
        "tests/test_app.py": "def test(): pass\n",
    }.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    (app / ".deployignore").write_text(IGNORE)
    return app


def deployed_files(release: Path) -> set[str]:
    return {
        p.relative_to(release).as_posix()
        for p in release.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


KEPT = {
    "VERSION", "bin/migrate", "public/index.html", "public/css/site.css", "public/keep.map",
    "docs/notes.txt",
}  # fmt: skip


def manifest_paths(target: Path, release: str) -> set[str]:
    lines = (target / ".deployer" / "manifests" / f"{release}.tsv").read_text().splitlines()
    return {line.split("\t", 3)[3] for line in lines}


def test_a_directory_artifact_leaves_out_what_deployignore_and_exclude_say(
    topology, deployer, tmp_path: Path
) -> None:
    target = topology.deploy_path("excludes-dir")
    app = app_with_noise(tmp_path, "d1")
    run = deployer(["push", str(app), *topology.route, "--path", str(target), "--exclude", "tests/"],
                   env=topology.env)  # fmt: skip
    assert run.status == 0, run.output
    release = target / "releases" / live(target)
    assert deployed_files(release) == KEPT  # no .deployignore, no node_modules (not even keep.js)
    assert not (release / "node_modules").exists() and not (release / "tests").exists()
    assert manifest_paths(target, live(target)) == KEPT
    assert "uploaded 6 of 6 files" in run.stderr
    assert (
        "excluded from the release (.deployignore, --exclude): .deployignore, node_modules/,"
        " notes.txt, public/app.js.map, tests/" in run.stderr
    )


def test_a_tar_gz_is_filtered_the_same_and_a_redeploy_never_sees_excluded_files(
    topology, deployer, tmp_path: Path
) -> None:
    target = topology.deploy_path("excludes-tgz")
    args = [*topology.route, "--path", str(target), "--exclude", "tests/"]

    def tgz(version: str) -> Path:
        app = app_with_noise(tmp_path / version, version)
        (app / "VERSION").write_text("same\n")  # only excluded files differ between versions
        (app / "public" / "index.html").write_text("same\n")
        out = tmp_path / f"{version}.tar.gz"
        with tarfile.open(out, "w:gz") as tar:
            tar.add(app, arcname=".")
        return out

    first = deployer(["push", str(tgz("t1")), *args], env=topology.env)
    assert first.status == 0, first.output
    first_id = live(target)
    assert deployed_files(target / "releases" / first_id) == KEPT
    # the second build differs only in excluded files (a new map, new node_modules, new notes)
    second = deployer(["push", str(tgz("t2")), *args], env=topology.env)
    assert second.status == 0, second.output
    assert "uploaded 0 of 6 files" in second.stderr and "6 unchanged reused" in second.stderr
    second_id = live(target)
    assert second_id != first_id and deployed_files(target / "releases" / second_id) == KEPT
    assert manifest_paths(target, second_id) == KEPT
    # without the exclude, tests/ comes back and only it is sent
    third = deployer(["push", str(tgz("t3")), *topology.route, "--path", str(target)],
                     env=topology.env)  # fmt: skip
    assert third.status == 0, third.output
    assert "uploaded 1 of 7 files" in third.stderr
    assert deployed_files(target / "releases" / live(target)) == {*KEPT, "tests/test_app.py"}


def test_dry_run_lists_every_excluded_path(topology, deployer, tmp_path: Path) -> None:
    target = topology.deploy_path("excludes-dry")
    app = app_with_noise(tmp_path, "dry")
    args = [*topology.route, "--path", str(target), "--exclude", "docs/*.txt", "--dry-run"]
    run = deployer(["push", str(app), *args], env=topology.env)
    assert run.status == 0, run.output
    listed = [line.split("dry run: would exclude ", 1)[1] for line in run.stderr.splitlines()
              if "dry run: would exclude " in line]  # fmt: skip
    assert listed == [".deployignore", "docs/notes.txt", "node_modules/", "notes.txt",
                      "public/app.js.map"]  # fmt: skip
    assert "would upload 6 of 6 files" in run.stderr and not target.exists()
    as_json = deployer(["push", str(app), *args, "--json"], env=topology.env)
    assert as_json.status == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["targets"][0]["details"]["excluded"] == listed


def test_bad_patterns_are_usage_errors_before_connecting(
    topology, deployer, tmp_path: Path
) -> None:
    app = make_app(tmp_path, "bad")
    run = deployer(["push", str(app), "--to", "nobody@127.0.0.1:1", "--path", "/srv/x",
                    "--exclude", "!"], env=topology.env)  # fmt: skip
    assert run.status == 2, run.output
    assert run.stderr.strip().splitlines() == [
        "deployer: error: --exclude '!' is not a gitignore pattern (Invalid git pattern: '!') — fix it"
        " (e.g. 'node_modules/', '*.map', '!keep.map', '/build')"
    ]
