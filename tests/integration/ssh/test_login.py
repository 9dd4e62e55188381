"""login_with_key against a real sshd: one write carries NEWKEYS, the service request and the
signed login (two packets behind NEWKEYS, by their AES-GCM lengths); a refused key fails as
paramiko's own login does; an RSA key logs in paramiko's way."""

from __future__ import annotations

from typing import Any

import paramiko
import pytest

from deployer.ssh.login import login_with_key
from tests.integration.wire import Recording, behind_newkeys

pytestmark = pytest.mark.integration


def test_the_signed_login_leaves_with_the_service_request_in_one_write(
    wire: tuple[Recording, paramiko.Transport], topology: Any
) -> None:
    recording, transport = wire
    transport.start_client(timeout=10)
    key = paramiko.Ed25519Key.from_private_key_file(str(topology.box.ci_key))
    assert login_with_key(transport, topology.user, key) == []
    assert transport.is_authenticated()
    assert behind_newkeys(recording.sends) == 2  # the service request and the login
    channel = transport.open_session()
    channel.exec_command("echo in")
    assert channel.makefile().read() == b"in\n"


def test_a_refused_key_fails_as_paramikos_login_does(
    wire: tuple[Recording, paramiko.Transport], topology: Any
) -> None:
    _, transport = wire
    transport.start_client(timeout=10)
    stranger = paramiko.Ed25519Key.from_private_key_file(
        str(topology.box.keys_dir / "tunnel_ed25519")
    )
    with pytest.raises(paramiko.AuthenticationException):
        login_with_key(transport, topology.user, stranger)
    assert not transport.is_authenticated()
    key = paramiko.Ed25519Key.from_private_key_file(str(topology.box.ci_key))
    assert login_with_key(transport, topology.user, key) == []  # the next key may still log in
    assert transport.is_authenticated()


def test_an_rsa_key_logs_in_the_way_paramiko_does(
    wire: tuple[Recording, paramiko.Transport], topology: Any
) -> None:
    _, transport = wire
    transport.start_client(timeout=10)
    rsa = paramiko.RSAKey.generate(2048)
    topology.box.target.authorize(f"{rsa.get_name()} {rsa.get_base64()} login-test")
    assert login_with_key(transport, topology.user, rsa) == []
    assert transport.is_authenticated()
