"""HeldWrites over a real socket pair: what is held leaves with the next write, in the same one;
a short write keeps the rest held; an idle read sends bytes held long enough, and no sooner."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from deployer.ssh.stalls import HOLD_LIMIT, HOLD_SECONDS, HeldWrites


class Recording:
    """One end of a socket pair that records every send (optionally cut short to `limit`)."""

    def __init__(self, sock: socket.socket, limit: int | None = None) -> None:
        self.sock = sock
        self.limit = limit
        self.sends: list[bytes] = []

    def send(self, data: bytes) -> int:
        chunk = data[: self.limit] if self.limit else data
        sent = self.sock.send(chunk)
        self.sends.append(bytes(chunk[:sent]))
        return sent

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.settimeout(2)
        yield ours, theirs


def _drain(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return data


def _send_all(stream: HeldWrites, data: bytes) -> None:
    """What paramiko's packetizer does: send until every byte is taken."""
    while data:
        data = data[stream.send(data) :]


def test_the_first_write_waits_for_the_second_and_both_leave_in_one(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    wire = Recording(ours)
    stream = HeldWrites(wire)
    _send_all(stream, b"SSH-2.0-banner\r\n")
    assert wire.sends == []
    _send_all(stream, b"KEXINIT")
    assert wire.sends == [b"SSH-2.0-banner\r\nKEXINIT"]
    _send_all(stream, b"next")
    assert wire.sends[-1] == b"next"
    assert _drain(theirs, 27) == b"SSH-2.0-banner\r\nKEXINITnext"


def test_writes_in_a_hold_block_wait_only_in_the_thread_that_holds(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    wire = Recording(ours)
    stream = HeldWrites(wire)
    _send_all(stream, b"first")
    _send_all(stream, b"-")
    with stream.hold():
        _send_all(stream, b"EOF")
        _send_all(stream, b"CLOSE")
        other = threading.Thread(target=_send_all, args=(stream, b"other"))
        other.start()
        other.join()
    assert wire.sends == [b"first-", b"EOFCLOSEother"]
    _send_all(stream, b"EXEC")
    assert wire.sends[-1] == b"EXEC"
    assert _drain(theirs, 23) == b"first-EOFCLOSEotherEXEC"


def test_a_short_write_keeps_the_rest_held_and_nothing_is_lost_or_reordered(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    wire = Recording(ours, limit=3)
    stream = HeldWrites(wire)
    _send_all(stream, b"0123456789")  # held (the first write)
    _send_all(stream, b"abcdefgh")
    assert b"".join(wire.sends) == b"0123456789abcdefgh"
    assert all(len(chunk) <= 3 for chunk in wire.sends)
    assert _drain(theirs, 18) == b"0123456789abcdefgh"


def test_an_idle_read_sends_what_was_held_long_enough_and_not_before(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    ours.settimeout(0.01)
    wire = Recording(ours)
    stream = HeldWrites(wire)
    _send_all(stream, b"banner")
    held_at = time.monotonic()
    deadline = held_at + 2
    while not wire.sends and time.monotonic() < deadline:
        with pytest.raises(TimeoutError):
            stream.recv(16)
        if time.monotonic() - held_at < HOLD_SECONDS * 0.9:
            assert wire.sends == []
    assert wire.sends == [b"banner"]
    assert time.monotonic() - held_at >= HOLD_SECONDS
    assert _drain(theirs, 6) == b"banner"


def test_reads_pass_through(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = HeldWrites(Recording(ours))
    theirs.sendall(b"SSH-2.0-server\r\n")
    assert stream.recv(64) == b"SSH-2.0-server\r\n"


def test_a_hold_lets_a_long_stream_go_and_says_when_it_held_a_write(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    wire = Recording(ours)
    stream = HeldWrites(wire)
    _send_all(stream, b"banner")
    _send_all(stream, b"!")
    held: list[int] = []
    big = b"y" * HOLD_LIMIT
    with stream.hold(on_held=lambda: held.append(1)):
        _send_all(stream, b"small")
        assert held == [1]
        _send_all(stream, big)  # more than HOLD_LIMIT in all: out at once, with what was held
    assert held == [1]
    assert any(chunk.startswith(b"smally") for chunk in wire.sends)  # "small" went along
    assert _drain(theirs, 12 + HOLD_LIMIT) == b"banner!small" + big
