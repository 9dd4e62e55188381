"""Host keys against a real sshd: a pinned host offering another key type is a changed host."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.errors import ExitCode
from deployer.sandbox.servers import SshServer
from tests.integration.netns import stop_sshd

pytestmark = pytest.mark.integration


@pytest.fixture
def ecdsa_only(topology) -> Iterator[SshServer]:
    """An sshd that has an ed25519 key but offers only its ECDSA key (as a man in the middle
    holding only an ECDSA key would)."""
    base = Path(tempfile.mkdtemp(prefix="deployer-hostkeys-"))
    base.chmod(0o755)
    server = SshServer("ecdsa-only", base / "sshd", topology.user)
    server.prepare("HostKeyAlgorithms ecdsa-sha2-nistp256")
    server.authorize(
        topology.box.ci_key.with_name(topology.box.ci_key.name + ".pub").read_text().strip()
    )
    server.start()
    try:
        yield server
    finally:
        stop_sshd(server)


def test_accept_new_never_takes_another_key_type_for_a_pinned_host(topology, deployer,
                                                                   ecdsa_only: SshServer) -> None:  # fmt: skip
    ident = f"[127.0.0.1]:{ecdsa_only.port}"
    ed25519, ecdsa = (
        next(k for k in ecdsa_only.host_keys if k.startswith(t)) for t in ("ssh-ed25519", "ecdsa")
    )
    to = ["--to", f"{topology.user}@127.0.0.1:{ecdsa_only.port}", "--accept-new-host-keys"]
    pinned = deployer(["exec", *to, "--", "echo reached"],
                      env={**topology.env, "SSH_KNOWN_HOSTS": f"{ident} {ed25519}\n"})  # fmt: skip
    assert pinned.status == ExitCode.HOST_KEY, pinned.output
    assert "reached" not in pinned.stdout
    [line] = pinned.stderr.strip().splitlines()
    assert f"CHANGED: {ident} presented ecdsa-sha2-nistp256" in line and "has ssh-ed25519" in line
    # a host nothing is known about is taken on first use, and said so
    fresh = deployer(
        ["exec", *to, "--", "echo reached"], env={**topology.env, "SSH_KNOWN_HOSTS": ""}
    )
    assert fresh.status == 0, fresh.output
    assert fresh.stdout == "reached\n"
    assert "accepted a new host key on first use (--accept-new-host-keys)" in fresh.stderr
    assert f"{ident} {ecdsa}" in fresh.stderr
