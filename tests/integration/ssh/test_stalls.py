"""What leaves together on the wire of a hop to a real sshd (deployer.ssh.stalls): the banner with
KEXINIT, NEWKEYS with the service request, a finished command's EOF and CLOSE with the next
command's request (and the request for the channel of the command after it), a small stdin
with its EOF; and a reply-less global request (sshd's hostkeys-00 after the login) is
answered with one packet. With AES-GCM the packet lengths travel in clear, so the test can
count the packets in each write."""

from __future__ import annotations

import time
from typing import Any

import paramiko
import pytest

from deployer.ssh.connection import Connection
from deployer.ssh.route import Endpoint, Route
from deployer.ssh.stalls import HOLD_SECONDS
from tests.integration.wire import (
    KEXINIT,
    NEWKEYS,
    Recording,
    behind_newkeys,
    gcm_packets,
)

pytestmark = pytest.mark.integration


def _wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


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
    assert behind_newkeys(recording.sends) == 1  # NEWKEYS + the service request

    # sshd sends hostkeys-00@openssh.com (no reply wanted) after the login: one IGNORE answers it
    after_login = len(recording.sends)
    _wait_for(lambda: len(recording.sends) > after_login)
    assert [gcm_packets(c) for c in recording.sends[after_login:]] == [1]

    first, spare = transport.open_session(), transport.open_session()
    first.exec_command("true")
    assert first.recv_exit_status() == 0
    _wait_for(lambda: first.closed)
    finished = len(recording.sends)
    time.sleep(HOLD_SECONDS / 3)
    assert len(recording.sends) == finished  # our EOF and CLOSE are held ...
    spare.exec_command("echo next")
    # ... and leave with the next command's request, in one write
    assert gcm_packets(recording.sends[finished]) == 3
    assert spare.makefile().read() == b"next\n"


def test_a_command_leaves_with_the_next_ones_channel_request_and_its_stdin_with_its_eof(
    wire: tuple[Recording, paramiko.Transport], topology: Any
) -> None:
    recording, transport = wire
    transport.start_client(timeout=10)
    key = paramiko.Ed25519Key.from_private_key_file(str(topology.box.ci_key))
    transport.auth_publickey(topology.user, key)
    route = Route(Endpoint(topology.user, "127.0.0.1", topology.box.target.port))
    connection = Connection(route, [transport])
    connection.run("true")  # the first command opens its own channel
    before = len(recording.sends)
    result = connection.run("cat >/dev/null; echo ok", upload=lambda out: out.write(b"x" * 100))
    assert result.stdout == b"ok\n"
    packets = [gcm_packets(c) for c in recording.sends[before:]]
    # [the held EOF and CLOSE of `true`, the next command's channel open, this command's exec],
    # then [its stdin, its EOF] once sshd opened the window (CLOSE and EOF of this one: held)
    assert packets[:2] == [4, 2]
