"""deployer status over real sshd: every target asked, drift said plainly, silent targets named."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import ExitCode
from deployer.sandbox.servers import SshServer, free_port, stop_process_group
from tests.integration import namespaced
from tests.integration.helpers import live, make_app

pytestmark = pytest.mark.integration

CI = {"GITLAB_CI": "true", "GITLAB_USER_LOGIN": "alice", "CI_COMMIT_REF_NAME": "main",
      "CI_PIPELINE_URL": "https://gitlab.example/group/app/-/pipelines/"}  # fmt: skip


@dataclass
class Fleet:
    path: Path  # the deploy directory, the same --path on every target
    a: str  # the sandbox's target through its tunnel port
    a_again: str  # the same sshd (the same files) on its own port
    b: str  # another sshd whose --path is another directory (its own mount namespace)
    b_files: Path  # what b sees at `path`
    env: dict[str, str]


@pytest.fixture
def fleet(topology: Any, tmp_path: Path) -> Iterator[Fleet]:
    why = namespaced.unavailable()
    if why:
        pytest.fail(f"deployer status tests need a second target with its own files: {why}")
    base = Path(tempfile.mkdtemp(prefix="deployer-status-"))
    base.chmod(0o755)
    path = topology.deploy_path(f"status-{tmp_path.name}")
    b_files = base / "b-app"
    for folder in (path, b_files):
        folder.mkdir()
        shutil.chown(folder, user=topology.user)
    server = SshServer("status-b", base / "sshd", topology.user)
    server.prepare()
    server.authorize(topology.box.ci_key.with_name("ci_ed25519.pub").read_text().strip())
    namespaced.start(server, [(str(b_files), str(path))])
    target = topology.box.target
    known = (
        topology.env["SSH_KNOWN_HOSTS"] + namespaced.known_hosts(server)
        + "".join(f"[127.0.0.1]:{target.port} {key}\n" for key in target.host_keys)
    )  # fmt: skip
    user = topology.user
    try:
        yield Fleet(
            path, f"{user}@localhost:{topology.box.tunnel_port}", f"{user}@127.0.0.1:{target.port}",
            f"{user}@127.0.0.1:{server.port}", b_files, {**topology.env, "SSH_KNOWN_HOSTS": known},
        )  # fmt: skip
    finally:
        stop_process_group(server.process)
        shutil.rmtree(base, ignore_errors=True)


def test_status_names_the_drifting_target_and_the_silent_one(
    fleet: Fleet, deployer: Any, tmp_path: Path
) -> None:
    def push(to: str, version: str, commit: str) -> None:
        env = {**fleet.env, **CI, "CI_COMMIT_SHA": commit * 40,
               "CI_PIPELINE_URL": CI["CI_PIPELINE_URL"] + version}  # fmt: skip
        run = deployer(["push", str(make_app(tmp_path / to.rsplit(":", 1)[1], version)), "--to", to,
                        "--path", str(fleet.path)], env=env)  # fmt: skip
        assert run.status == 0, run.output

    push(fleet.a, "v1", "1")
    push(fleet.b, "v1", "1")
    push(fleet.a, "v2", "2")
    assert (fleet.path / "current" / "VERSION").read_text() == "v2\n"
    assert (fleet.b_files / "current" / "VERSION").read_text() == "v1\n"  # b's own files
    (fleet.b_files / ".deployer" / "lock").mkdir()
    (fleet.b_files / ".deployer" / "lock" / "info").write_text(
        "deploy by mallory since 2026-11-30T10:00:00Z\n"
    )
    dead = f"{fleet.a.split('@')[0]}@127.0.0.1:{free_port()}"
    targets = [fleet.a, fleet.a_again, fleet.b, dead]
    args = ["status", *(w for t in targets for w in ("--to", t)), "--path", str(fleet.path)]

    run = deployer(args, env=fleet.env)
    assert run.status == ExitCode.CONNECT, run.output
    errors = [line for line in run.stderr.splitlines() if line.startswith("deployer: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"deployer: error: 1 of 4 target(s) did not answer: {dead} ("
    ), run.stderr
    out = run.stdout
    v2, v1 = live(fleet.path), live(fleet.b_files)
    assert f"  live:     {v2}  commit {'2' * 12} (main)" in out
    assert f"  live:     {v1}  commit {'1' * 12} (main)" in out
    assert (
        "deployed by alice at " in out
        and "pipeline https://gitlab.example/group/app/-/pipelines/v2" in out
    )
    assert "  lock:     held: deploy by mallory since 2026-11-30T10:00:00Z" in out
    assert out.count("  lock:     free") == 2
    assert f"{dead}  did not answer: " in out
    assert (
        f"drift: {fleet.b} runs {v1} (commit {'1' * 12}) — the other 2 run {v2} (commit {'2' * 12})"
        f"; {dead} did not answer"
    ) in out

    document = json.loads(deployer([*args, "--json"], env=fleet.env).stdout)
    assert document["command"] == "status" and document["ok"] is False
    assert document["exit_code"] == ExitCode.CONNECT
    assert [t["status"] for t in document["targets"]] == ["inspected"] * 3 + ["failed"]
    first = document["targets"][0]["details"]
    assert first["live"]["release"] == v2 and first["live"]["commit"] == "2" * 40
    assert first["live"]["by"] == "alice" and first["lock"] == {"held": False, "info": ""}
    assert document["targets"][2]["details"]["lock"]["held"] is True
    drift = document["drift"]
    assert drift["drifted"] is True and drift["differing"] == [fleet.b]
    assert drift["unanswered"] == [dead]
    assert [g["targets"] for g in drift["groups"]] == [[fleet.a, fleet.a_again], [fleet.b]]

    agreeing = deployer(["status", "--to", fleet.a, "--to", fleet.a_again, "--path", str(fleet.path)],
                        env=fleet.env)  # fmt: skip
    assert agreeing.status == 0, agreeing.output
    assert f"no drift: all 2 targets run {v2} (commit {'2' * 12})" in agreeing.stdout
