"""Local use (a real ssh-agent, ~/.ssh/config aliases, --key-file) and settings precedence."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import live, make_app

pytestmark = pytest.mark.integration


def local_env(topology, home: Path) -> dict[str, str]:
    """A developer's shell: no CI variables, known hosts in ~/.ssh/known_hosts."""
    (home / ".ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    # a line ssh itself would skip must not stop deployer from reading the rest
    (home / ".ssh" / "known_hosts").write_text(
        "garbage-without-a-key\n" + topology.box.known_hosts()
    )
    return {"HOME": str(home), "CI": "", "SSH_PRIVATE_KEY": "", "SSH_KNOWN_HOSTS": ""}


@pytest.fixture
def ssh_agent(topology, tmp_path: Path):
    """A real OpenSSH ssh-agent holding the sandbox's CI key; killed by pid afterwards."""
    out = subprocess.run(["ssh-agent", "-s", "-a", str(tmp_path / "agent.sock")], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    pid = int(re.search(r"SSH_AGENT_PID=(\d+)", out).group(1))  # type: ignore[union-attr]
    env = {"SSH_AUTH_SOCK": str(tmp_path / "agent.sock")}
    try:
        subprocess.run(
            ["ssh-add", "-q", str(topology.box.ci_key)], env={**os.environ, **env}, check=True
        )
        yield env
    finally:
        os.kill(pid, 15)


def test_existing_ssh_agent_and_ssh_config_alias(
    topology, deployer, tmp_path: Path, ssh_agent
) -> None:
    home = tmp_path / "home"
    env = {**local_env(topology, home), **ssh_agent}
    (home / ".ssh" / "config").write_text(
        f"Host prod\n  HostName localhost\n  Port {topology.box.tunnel_port}\n  User {topology.user}\n"
        "  ProxyJump bastion\n"
        f"Host bastion\n  HostName 127.0.0.1\n  Port {topology.box.jump.port}\n  User {topology.user}\n"
    )
    target = topology.deploy_path("alias")
    run = deployer(
        ["push", str(make_app(tmp_path, "a")), "--to", "prod", "--path", str(target)], env=env
    )
    assert run.status == 0, run.output
    assert live(target)
    # in CI the developer's ssh_config is ignored: the alias is just an unknown host name
    ci = deployer(["exec", "--to", "prod", "--", "true"], env={**env, "CI": "true"})
    assert ci.status == 7 and "cannot resolve prod" in ci.stderr


def test_key_file_locally(topology, deployer, tmp_path: Path) -> None:
    env = local_env(topology, tmp_path / "home")
    run = deployer(
        ["exec", *topology.route, "--key-file", str(topology.box.ci_key), "--", "echo ok"], env=env
    )
    assert run.status == 0, run.output
    assert run.stdout == "ok\n"


def test_settings_precedence_flags_env_file(topology, deployer, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    from_file = topology.deploy_path("from-file")
    from_env = topology.deploy_path("from-env")
    from_flag = topology.deploy_path("from-flag")
    to, jump = topology.route[1], topology.route[3]
    (project / "deployer.toml").write_text(
        f'to = ["{to}"]\njump = "{jump}"\npath = "{from_file}"\nbefore = ["echo from-toml-hook"]\n'
    )
    app = str(make_app(tmp_path, "p"))
    by_file = deployer(["push", app, "--dry-run"], env=topology.env, cwd=project)
    assert by_file.status == 0, by_file.output
    assert (
        str(from_file) in by_file.stderr
        and "would run before hook: echo from-toml-hook" in by_file.stderr
    )
    env = {**topology.env, "DEPLOYER_PATH": str(from_env), "DEPLOYER_BEFORE": "echo one\necho two"}
    by_env = deployer(["push", app, "--dry-run"], env=env, cwd=project)
    assert str(from_env) in by_env.stderr and str(from_file) not in by_env.stderr
    assert (
        "would run before hook: echo one" in by_env.stderr
        and "would run before hook: echo two" in by_env.stderr
    )
    by_flag = deployer(["push", app, "--dry-run", "--path", str(from_flag)], env=env, cwd=project)
    assert str(from_flag) in by_flag.stderr and str(from_env) not in by_flag.stderr
    (project / "deployer.toml").write_text('pth = "/typo"\n')
    typo = deployer(["push", app, "--dry-run"], env=topology.env, cwd=project)
    assert typo.status == 2 and "unknown setting 'pth'" in typo.stderr


def test_pyproject_tool_section(topology, deployer, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    target = topology.deploy_path("pyproject")
    to, jump = topology.route[1], topology.route[3]
    (project / "pyproject.toml").write_text(
        f'[tool.deployer]\nto = "{to}"\njump = "{jump}"\npath = "{target}"\n'
    )
    run = deployer(["releases"], env=topology.env, cwd=project)
    assert run.status == 0, run.output
    assert "(no releases)" in run.stdout
