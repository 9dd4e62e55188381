"""Commands on one paramiko connection through jump host + tunnel, against real sshd: each command
after the first runs on a session channel opened while the one before it ran, and a refused or
failed spare channel only means the next command opens its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest

from deployer.ssh.access import Access, RouteRequest, build_routes, connect_options
from deployer.ssh.connect import connected
from deployer.ssh.connection import Connection

pytestmark = pytest.mark.integration


@pytest.fixture
def connection(topology: Any) -> Iterator[Connection]:
    access = Access(env=topology.env, local=False)
    route = topology.route
    (target,) = build_routes(RouteRequest(to=(route[1],), jump=(route[3],)), access)
    with connected(target, connect_options(target, access, lambda line: None)) as opened:
        yield opened


def _record_opens(monkeypatch: pytest.MonkeyPatch, *, refuse_spares: bool) -> list[str]:
    """Which thread opens each session channel (spares can be made to fail as MaxSessions does)."""
    opened_by: list[str] = []
    open_session = paramiko.Transport.open_session

    def recording(self: paramiko.Transport, *args: Any, **kwargs: Any) -> paramiko.Channel:
        name = threading.current_thread().name
        opened_by.append(name)
        if refuse_spares and name == SPARE:
            raise paramiko.ChannelException(1, "administratively prohibited")
        return open_session(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.Transport, "open_session", recording)
    return opened_by


SPARE = "deployer-spare-channel"


@pytest.mark.parametrize(
    ("refuse_spares", "expected"),
    [
        # the first command opens its own; each one opens the next one's in the background
        (False, ["MainThread", SPARE, SPARE, SPARE]),
        # a refused spare costs only the round trip: the next command opens its own
        (True, ["MainThread", SPARE, "MainThread", SPARE, "MainThread", SPARE]),
    ],
    ids=["spares-open", "spares-refused"],
)
def test_each_next_command_runs_on_the_spare_channel_when_it_came_up(
    connection: Connection,
    monkeypatch: pytest.MonkeyPatch,
    refuse_spares: bool,
    expected: list[str],
) -> None:
    opened_by = _record_opens(monkeypatch, refuse_spares=refuse_spares)
    outputs = [connection.run(f"echo {n}").stdout for n in range(3)]
    assert outputs == [b"0\n", b"1\n", b"2\n"]
    assert opened_by == expected


def test_a_spare_channel_the_server_closed_is_not_used(connection: Connection) -> None:
    connection.run("true")
    spare = connection._spare  # white box: the server may close an idle channel at any time
    assert spare is not None
    channel = spare.take()
    assert channel is not None
    channel.close()
    connection._spare = spare
    assert connection.run("echo still").stdout == b"still\n"
