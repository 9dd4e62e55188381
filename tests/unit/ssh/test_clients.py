"""Which SSH client a push gets: --ssh-client as asked, auto by what it carries and how far it goes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deployer.errors import ConfigError, ExitCode
from deployer.ssh.clients import (
    AUTO_OPENSSH_BYTES,
    LinkChoice,
    ParamikoClient,
    SshClient,
    open_client,
)
from deployer.ssh.openssh.client import OpenSSHClient


def with_ssh() -> dict[str, str]:
    real = shutil.which("ssh")
    assert real is not None, "the tests need OpenSSH's client (apt-get install openssh-client)"
    return {"PATH": str(Path(real).parent)}


def opened(*args: object, **kwargs: object) -> tuple[type, list[str]]:
    notices: list[str] = []
    client: SshClient = open_client(*args, on_notice=notices.append, **kwargs)  # type: ignore[arg-type, misc]
    try:
        return type(client), notices
    finally:
        client.close()  # an OpenSSH client made a private directory: gone again


def test_paramiko_is_taken_as_asked_whatever_the_push() -> None:
    assert opened("paramiko", with_ssh(), targets=20, artifact_bytes=1 << 30) == (
        ParamikoClient,
        [],
    )


def test_openssh_is_taken_as_asked_even_for_one_small_artifact() -> None:
    assert opened("openssh", with_ssh(), targets=1, artifact_bytes=10) == (OpenSSHClient, [])


@pytest.mark.parametrize(
    ("targets", "size", "kind"),
    [
        (1, AUTO_OPENSSH_BYTES - 1, ParamikoClient),  # its shorter login wins
        (2, 10, OpenSSHClient),  # a fleet: one jump master, streams in processes of their own
        (1, AUTO_OPENSSH_BYTES, LinkChoice),  # decided by how soon the first hop answers
    ],
)
def test_auto_weighs_the_fleet_and_the_artifact(targets: int, size: int, kind: type) -> None:
    assert opened("auto", with_ssh(), targets=targets, artifact_bytes=size) == (kind, [])


def test_auto_says_so_when_it_wanted_openssh_and_found_none(tmp_path: Path) -> None:
    empty = {"PATH": str(tmp_path)}
    assert opened("auto", empty, targets=3) == (
        ParamikoClient,
        ["the SSH client is paramiko: no ssh on the PATH (OpenSSH is faster on fast links)"],
    )
    assert opened("auto", empty, targets=1, artifact_bytes=10) == (ParamikoClient, [])
    with pytest.raises(ConfigError) as caught:
        opened("openssh", empty)
    assert caught.value.exit_code == ExitCode.USAGE
    assert str(caught.value) == (
        "--ssh-client openssh: no ssh on the PATH — install OpenSSH's client 8.5 or newer"
        " (openssh-client), or use --ssh-client auto"
    )
