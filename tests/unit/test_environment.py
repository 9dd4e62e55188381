"""The one filter between deployer's environment and the processes it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.environment import child_environment, hook_variables, is_secret
from deployer.errors import ConfigError
from deployer.remote.local import LocalExecutor
from deployer.ssh.proxy import parse_proxy, parse_proxy_command
from deployer.tunnel.ssh_argv import RuntimePaths, ssh_environment


@pytest.mark.parametrize("name", [
    "SSH_PRIVATE_KEY", "SSH_JUMP_PRIVATE_KEY", "SSH_PRIVATE_KEY_PASSPHRASE", "SSH_JUMP_PRIVATE_KEY_PASSPHRASE",
    "ANY_PASSPHRASE", "SSH_KEY", "DEPLOYER_WEBHOOK_SECRET", "DEPLOYER_GITLAB_TOKEN", "GITLAB_TOKEN",
    "DEPLOYER_PROXY_PASSWORD", "CREDENTIALS_DIRECTORY",
])  # fmt: skip
def test_secret_variables(name: str) -> None:
    assert is_secret(name)
    assert child_environment({name: "x", "PATH": "/bin"}) == {"PATH": "/bin"}


@pytest.mark.parametrize("name", [
    "PATH", "HOME", "SSH_AUTH_SOCK", "SSH_KNOWN_HOSTS", "DEPLOYER_PATH", "DEPLOYER_TO", "CI_JOB_ID",
    "ssh_private_key_path_of_my_own",
])  # fmt: skip
def test_other_variables_are_passed_on(name: str) -> None:
    assert not is_secret(name)
    assert child_environment({name: "x"}) == {name: "x"}


def test_keep_and_extra() -> None:
    parent = {"DEPLOYER_PROXY_PASSWORD": "p", "SSH_PRIVATE_KEY": "k", "A": "1"}
    assert child_environment(parent, keep=["DEPLOYER_PROXY_PASSWORD"], extra={"B": "2"}) == {
        "DEPLOYER_PROXY_PASSWORD": "p", "A": "1", "B": "2"}  # fmt: skip


def test_local_executor_scripts_do_not_see_the_receivers_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`deployer serve` runs hooks through LocalExecutor in its own process environment."""
    monkeypatch.setenv("DEPLOYER_WEBHOOK_SECRET", "webhook-secret-value-0123456789")
    monkeypatch.setenv("DEPLOYER_GITLAB_TOKEN", "glpat-value")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/x")
    monkeypatch.setenv("HARMLESS_MARKER", "still-here")
    result = LocalExecutor().run("env")
    assert result.status == 0
    names = {line.partition("=")[0] for line in result.stdout.decode().splitlines()}
    hidden = {"DEPLOYER_WEBHOOK_SECRET", "DEPLOYER_GITLAB_TOKEN", "CREDENTIALS_DIRECTORY"}
    assert hidden.isdisjoint(names)
    assert "HARMLESS_MARKER" in names


def test_tunnel_ssh_gets_the_agent_and_only_its_own_proxys_password(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path, str(tmp_path / "agent.sock"))
    parent = {"SSH_PRIVATE_KEY": "k", "SSH_AGENT_PID": "42", "SSH_AUTH_SOCK": "/other", "PATH": "/bin",
              "DEPLOYER_PROXY_PASSWORD": "from-env", "DEPLOYER_WEBHOOK_SECRET": "s"}  # fmt: skip
    plain = ssh_environment(parent, paths, None)
    assert plain == {"PATH": "/bin", "SSH_AUTH_SOCK": str(tmp_path / "agent.sock")}
    # `deployer proxy-connect` (ssh's ProxyCommand for a proxy URL) reads the password here,
    # whether it came from the environment or from the URL
    proxy = parse_proxy("http://user:from-url@proxy:3128", {})
    assert ssh_environment(parent, paths, proxy)["DEPLOYER_PROXY_PASSWORD"] == "from-url"
    command = parse_proxy_command("ssh -W %h:%p bastion")
    assert "DEPLOYER_PROXY_PASSWORD" not in ssh_environment(parent, paths, command)


def test_hook_variables_take_values_from_the_job_or_the_flag() -> None:
    job = {"API_TOKEN": "t0ken-value", "EMPTY": ""}
    assert hook_variables(["API_TOKEN", "NOTE=a=b c", "EMPTY", "BLANK="], job) == {
        "API_TOKEN": "t0ken-value", "NOTE": "a=b c", "EMPTY": "", "BLANK": "",
    }  # fmt: skip


@pytest.mark.parametrize(("entry", "words"), [
    ("DATABASE_URL", "DATABASE_URL is not set in this job's environment"),
    ("1ST=x", "'1ST' is not a variable name"),
    ("MY-VAR=hunter2", "'MY-VAR' is not a variable name"),
    ("=hunter2", "'' is not a variable name"),
    ("SSH_PRIVATE_KEY", "never passes its own secrets on"),
    ("DEPLOYER_WEBHOOK_SECRET=hunter2", "never passes its own secrets on"),
])  # fmt: skip
def test_hook_variables_refuse_what_cannot_be_passed(entry: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        hook_variables([entry], {"SSH_PRIVATE_KEY": "key"})
    assert words in str(caught.value) and "hunter2" not in str(caught.value)
