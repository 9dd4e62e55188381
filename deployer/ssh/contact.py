"""The first hop's connection, dialled as early as the route is known.

A push knows its route long before it can log in: it still has to load the SSH layer (paramiko
and what it imports: about 0.1 s) and read the artifact. ``FirstContact`` dials the first hop in
a thread of its own meanwhile, so that the TCP handshake and the server's banner (one and a half
round trips, 60 ms at 40 ms RTT) cross the network while the process loads. It also notes how
soon the server spoke, which ``--ssh-client auto`` judges the link by. The connection is the
same socket the login would have dialled; a failed dial is raised where the login takes it.
"""

from __future__ import annotations

import select
import socket
import threading
import time

from deployer.errors import ConnectError
from deployer.ssh.proxy import dial, open_through
from deployer.ssh.route import Route


def first_hop_socket(route: Route, timeout: float) -> socket.socket:
    """A connection to the route's first hop: dialled, or through its proxy."""
    first = route.hops[0]
    what = route.describe(0)
    if route.proxy is not None:
        return open_through(
            route.proxy, first.host, first.port, user=first.user, timeout=timeout, hop=what
        )
    return dial(
        first.host, first.port, timeout, what, "is sshd listening on that port?", ConnectError
    )


def answers_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer has sent something (an SSH banner) within seconds (nothing is read)."""
    readable, _, _ = select.select([sock], [], [], max(0.0, seconds))
    return bool(readable)


class FirstContact:
    """route's first hop, dialled in the background from the moment this is made.

    watch: for how long after the start to look out for the server's first bytes (its banner),
    for ``answered_within``; the thread ends once the dial is done and that time is up.
    """

    def __init__(self, route: Route, timeout: float, watch: float = 0.0) -> None:
        self.route = route
        self._timeout = timeout
        self._watch = watch
        self._started = time.monotonic()
        self._lock = threading.Lock()  # guards _sock and _done
        self._sock: socket.socket | None = None
        self._done = False  # taken or closed
        self._error: BaseException | None = None
        self._answered: float | None = None
        self._thread = threading.Thread(target=self._dial, name="deployer-dial", daemon=True)
        self._thread.start()

    def _dial(self) -> None:
        try:
            sock = first_hop_socket(self.route, self._timeout)
        except BaseException as exc:  # raised by take(), in the thread that logs in
            self._error = exc
            return
        with self._lock:
            if self._done:  # closed while dialling: nobody wants it
                sock.close()
                return
            self._sock = sock
        try:
            if answers_within(sock, self._started + self._watch - time.monotonic()):
                self._answered = time.monotonic()
        except (OSError, ValueError):  # closed meanwhile
            pass

    def answered_within(self, seconds: float) -> bool:
        """Whether the first hop's server spoke within seconds of the dial's start (seconds at
        most the watch time)."""
        self._thread.join()
        return self._answered is not None and self._answered - self._started <= seconds

    def take(self) -> socket.socket:
        """The connection (once); raises what dialling raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        with self._lock:
            sock, self._sock = self._sock, None
            assert sock is not None and not self._done, "a first contact is taken once"
            self._done = True
        return sock

    def close(self) -> None:
        """Close the connection unless it was taken (at once: a dial still under way closes
        what it gets)."""
        with self._lock:
            sock, self._sock = self._sock, None
            self._done = True
        if sock is not None:
            sock.close()


def taken(first: FirstContact | None) -> socket.socket | None:
    """first's connection, taken (see FirstContact.take); None without a first contact."""
    return first.take() if first is not None else None
