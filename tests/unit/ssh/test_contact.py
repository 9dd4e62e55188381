"""FirstContact against real listening sockets on loopback: the connection it dials in the
background is the one the login takes, a failed dial is raised where it is taken, and how soon
the server spoke is judged from the dial's start."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from deployer.errors import ConnectError
from deployer.ssh.contact import FirstContact, answers_within
from deployer.ssh.route import Endpoint, Route

BANNER = b"SSH-2.0-OpenSSH_9.2\r\n"


@pytest.fixture
def server() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listening socket and the connections it accepted (none is answered by itself)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(listener.accept()[0])
        except OSError:
            pass  # closed

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener, accepted
    finally:
        listener.close()
        for sock in accepted:
            sock.close()


def _route(port: int) -> Route:
    return Route(Endpoint("deploy", "127.0.0.1", port))


def _wait_for(accepted: list[socket.socket], index: int = 0) -> socket.socket:
    """The index-th connection accepted, once it is."""
    deadline = time.monotonic() + 5
    while len(accepted) <= index:
        assert time.monotonic() < deadline, "nothing connected"
        time.sleep(0.005)
    return accepted[index]


def test_the_login_takes_the_connection_dialled_in_the_background(
    server: tuple[socket.socket, list[socket.socket]],
) -> None:
    listener, accepted = server
    contact = FirstContact(_route(listener.getsockname()[1]), timeout=5)
    peer = _wait_for(accepted)  # connected before anyone asked for it
    peer.sendall(BANNER)
    sock = contact.take()
    with sock:
        assert sock.getpeername() == peer.getsockname()
        sock.settimeout(5)
        assert sock.recv(64) == BANNER  # nothing of the banner was consumed
    contact.close()  # taken: not closed twice, no error


def test_a_server_that_speaks_at_once_answered_within_the_watch_and_a_silent_one_did_not(
    server: tuple[socket.socket, list[socket.socket]],
) -> None:
    listener, accepted = server
    port = listener.getsockname()[1]
    silent = FirstContact(_route(port), timeout=5, watch=0.05)
    assert not silent.answered_within(0.05)
    silent.close()

    speaking = FirstContact(_route(port), timeout=5, watch=1.0)
    _wait_for(accepted, 1).sendall(BANNER)
    assert speaking.answered_within(1.0)
    assert not speaking.answered_within(0.0)  # it took longer than no time at all
    speaking.close()


def test_a_failed_dial_is_raised_where_the_connection_is_taken() -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    contact = FirstContact(_route(port), timeout=5, watch=0.05)
    assert not contact.answered_within(0.05)
    with pytest.raises(ConnectError) as caught:
        contact.take()
    assert str(caught.value) == (
        f"target deploy@127.0.0.1:{port} refused the connection on 127.0.0.1:{port}"
        " — is sshd listening on that port?"
    )
    contact.close()


def test_closing_before_the_login_closes_the_connection(
    server: tuple[socket.socket, list[socket.socket]],
) -> None:
    listener, accepted = server
    contact = FirstContact(_route(listener.getsockname()[1]), timeout=5)
    peer = _wait_for(accepted)
    contact.close()
    peer.settimeout(5)
    assert peer.recv(1) == b""  # the other end sees the connection closed


def test_a_peer_answers_within_a_time_only_once_it_has_sent_something() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not answers_within(ours, 0.05)
        theirs.sendall(BANNER)
        assert answers_within(ours, 0.05)
        assert answers_within(ours, -1)  # time already spent dialling: look, do not wait
        assert ours.recv(64).startswith(b"SSH-2.0-")  # nothing was taken from the stream
