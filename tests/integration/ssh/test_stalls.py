"""What leaves together on the wire of a hop to a real sshd (deployer.ssh.stalls): the banner with
KEXINIT, NEWKEYS with the service request, a finished command's EOF and CLOSE with the next
command's request; and a reply-less global request (sshd's hostkeys-00 after the login) is
answered with one packet. With AES-GCM the packet lengths travel in clear, so the test can
count the packets in each write."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest

from deployer.ssh.stalls import HOLD_SECONDS, stall_free_transport

pytestmark = pytest.mark.integration

KEXINIT, NEWKEYS = 20, 21
GCM_TAG = 16


class Recording:
    """A TCP socket that records every write."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: list[bytes] = []

    def send(self, data: bytes) -> int:
        sent = self.sock.send(data)
        self.sends.append(bytes(data[:sent]))
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def _gcm_packets(chunk: bytes) -> int:
    """How many whole AES-GCM packets chunk holds (it must hold nothing else)."""
    count, offset = 0, 0
    while offset < len(chunk):
        offset += 4 + int.from_bytes(chunk[offset : offset + 4], "big") + GCM_TAG
        count += 1
    assert offset == len(chunk), "a write that ends inside a packet"
    return count


def _wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def wire(topology: Any) -> Iterator[tuple[Recording, paramiko.Transport]]:
    sock = socket.create_connection(("127.0.0.1", topology.box.target.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recording = Recording(sock)
    transport = stall_free_transport(recording)
    transport.get_security_options().ciphers = ["aes128-gcm@openssh.com"]
    try:
        yield recording, transport
    finally:
        transport.close()


def test_unanswered_messages_leave_with_the_next_one(
    wire: tuple[Recording, paramiko.Transport], topology: Any
) -> None:
    recording, transport = wire
    transport.start_client(timeout=10)
    banner_line, _, rest = recording.sends[0].partition(b"\r\n")
    assert banner_line.startswith(b"SSH-2.0-")
    assert rest[5] == KEXINIT  # the banner went out with KEXINIT, in one write

    assert not any(chunk[5] == NEWKEYS for chunk in recording.sends if len(chunk) > 5)
    key = paramiko.Ed25519Key.from_private_key_file(str(topology.box.ci_key))
    transport.auth_publickey(topology.user, key)
    (with_newkeys,) = [c for c in recording.sends if len(c) > 5 and c[5] == NEWKEYS]
    newkeys_size = 4 + int.from_bytes(with_newkeys[:4], "big")
    assert _gcm_packets(with_newkeys[newkeys_size:]) == 1  # NEWKEYS + the service request

    # sshd sends hostkeys-00@openssh.com (no reply wanted) after the login: one IGNORE answers it
    after_login = len(recording.sends)
    _wait_for(lambda: len(recording.sends) > after_login)
    assert [_gcm_packets(c) for c in recording.sends[after_login:]] == [1]

    first, spare = transport.open_session(), transport.open_session()
    first.exec_command("true")
    assert first.recv_exit_status() == 0
    _wait_for(lambda: first.closed)
    finished = len(recording.sends)
    time.sleep(HOLD_SECONDS / 3)
    assert len(recording.sends) == finished  # our EOF and CLOSE are held ...
    spare.exec_command("echo next")
    # ... and leave with the next command's request, in one write
    assert _gcm_packets(recording.sends[finished]) == 3
    assert spare.makefile().read() == b"next\n"
