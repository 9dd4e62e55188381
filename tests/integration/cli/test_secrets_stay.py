"""Secrets deployer reads never reach the processes it starts: `agent -- CMD`, a ProxyCommand."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.sandbox.servers import write_keypair
from tests.integration.helpers import live, make_app

pytestmark = pytest.mark.integration

# a value per variable a secret can arrive in; none of them may show in a child's environment
SECRETS = {
    "SSH_PRIVATE_KEY_PASSPHRASE": "passphrase-value-1",
    "SSH_JUMP_PRIVATE_KEY_PASSPHRASE": "passphrase-value-2",
    "DEPLOYER_WEBHOOK_SECRET": "webhook-secret-value-0123456789",
    "DEPLOYER_GITLAB_TOKEN": "glpat-receiver-token-value",
    "GITLAB_TOKEN": "glpat-setup-token-value",
    "DEPLOYER_PROXY_PASSWORD": "proxy-password-value",
    "CREDENTIALS_DIRECTORY": "/run/credentials/deployer-serve.service",
}


def env_names(dump: Path) -> dict[str, str]:
    """NAME -> value of an `env -0` dump."""
    entries = [item for item in dump.read_bytes().split(b"\0") if item]
    return dict(item.decode().partition("=")[::2] for item in entries)


def assert_no_secret(dump: Path, key_text: str) -> None:
    names = env_names(dump)
    leaked = sorted(set(names) & {*SECRETS, "SSH_PRIVATE_KEY"})
    assert leaked == [], f"the child saw {leaked}"
    text = dump.read_text(errors="replace")
    assert not any(value in text for value in SECRETS.values())
    assert "PRIVATE KEY" not in text and key_text.splitlines()[1] not in text
    assert names["HARMLESS_MARKER"] == "still-here"  # everything else is passed on


def test_agent_command_gets_the_agent_but_not_the_key(deployer, tmp_path: Path) -> None:
    write_keypair(tmp_path / "id", "ed25519")
    key_text = (tmp_path / "id").read_text()
    dump = tmp_path / "env"
    run = deployer(["agent", "--", "sh", "-c", f'ssh-add -L > "{tmp_path}/listed"; env -0 > "{dump}"'],
                   env={"SSH_PRIVATE_KEY": key_text, "HARMLESS_MARKER": "still-here", **SECRETS})  # fmt: skip
    assert run.status == 0, run.output
    assert (tmp_path / "listed").read_text().startswith("ssh-ed25519 ")  # the agent serves it
    assert_no_secret(dump, key_text)
    assert env_names(dump)["SSH_AUTH_SOCK"].endswith("/agent.sock")


def test_push_proxy_command_never_sees_the_key(topology, deployer, tmp_path: Path) -> None:
    """A ProxyCommand is someone else's program: it gets the route, not the credentials."""
    box = topology.box
    known = tmp_path / "jump_known_hosts"
    known.write_text("".join(f"[127.0.0.1]:{box.jump.port} {k}\n" for k in box.jump.host_keys))
    dump = tmp_path / "env"
    ssh_w = (f"ssh -F /dev/null -i {box.ci_key} -o IdentitiesOnly=yes -o BatchMode=yes"
             f" -o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes -p {box.jump.port}"
             f" -W %h:%p {topology.user}@127.0.0.1")  # fmt: skip
    target = topology.deploy_path(f"pc-env-{tmp_path.name}")
    run = deployer(["push", str(make_app(tmp_path, "e")), "--to", f"{topology.user}@localhost:{box.tunnel_port}",
                    "--path", str(target), "--proxy-command", f"sh -c 'env -0 > {dump}; exec {ssh_w}'"],
                   env={**topology.env, "HARMLESS_MARKER": "still-here", **SECRETS})  # fmt: skip
    assert run.status == 0, run.output
    assert live(target)
    assert_no_secret(dump, topology.env["SSH_PRIVATE_KEY"])
