"""What ssh logs on the OpenSSH path becomes the same error the paramiko path raises for it."""

from __future__ import annotations

from deployer.errors import AuthError, ConnectError, ExitCode
from deployer.ssh.openssh.classify import forward_failure, last_message, login_failure
from deployer.ssh.route import Endpoint, Route

JUMP = Endpoint("ci", "jump.example", 2200)
TARGET = Endpoint("deploy", "localhost", 22022)
ROUTE = Route(target=TARGET, jumps=(JUMP,))
HINT = "the public key is in ~{user}/.ssh/authorized_keys there"


def test_a_refused_key_names_the_hop_the_user_and_every_key_offered() -> None:
    error = login_failure(
        ROUTE, 1, ["deploy@localhost: Permission denied (publickey)."], key_checked=True,
        offered=["SHA256:aaa", "SHA256:bbb"], auth_hint=HINT,
    )  # fmt: skip
    assert isinstance(error, AuthError) and error.exit_code == ExitCode.AUTH
    assert str(error) == (
        "target deploy@localhost:22022 (through ci@jump.example:2200) refused the key (SHA256:aaa, SHA256:bbb) for user 'deploy'"
        " — check the user name and that the public key is in ~deploy/.ssh/authorized_keys there"
    )


def test_too_many_authentication_failures_is_a_refused_key_too() -> None:
    lines = ["Received disconnect from UNKNOWN port 65535:2: Too many authentication failures",
             "Disconnected from UNKNOWN port 65535"]  # fmt: skip
    error = login_failure(ROUTE, 0, lines, key_checked=True, offered=["SHA256:a"], auth_hint=HINT)
    assert isinstance(error, AuthError) and "jump host ci@jump.example:2200 refused the key" in str(
        error
    )


def test_a_closed_connection_before_the_host_key_is_a_handshake_failure() -> None:
    lines = ["kex_exchange_identification: Connection closed by remote host",
             "Connection closed by UNKNOWN port 65535"]  # fmt: skip
    error = login_failure(ROUTE, 0, lines, key_checked=False, offered=[], auth_hint=HINT)
    assert isinstance(error, ConnectError) and error.exit_code == ExitCode.CONNECT
    assert str(error) == (
        "jump host ci@jump.example:2200 closed the connection during the SSH handshake:"
        " Connection closed by UNKNOWN port 65535 — is this port an SSH server?"
    )


def test_behind_a_jump_host_the_message_says_the_tunnel_is_up_but_nothing_answers() -> None:
    error = login_failure(
        ROUTE, 1, ["Connection timed out during banner exchange"], key_checked=False,
        offered=[], auth_hint=HINT,
    )  # fmt: skip
    assert (
        "target deploy@localhost:22022 (through ci@jump.example:2200) closed the connection during the SSH handshake"
        in str(error)
    )
    assert "Connection timed out during banner exchange" in str(error)
    assert "the tunnel is up but nothing answers behind it" in str(error)


def test_a_connection_lost_after_the_host_key_was_accepted_is_lost_while_authenticating() -> None:
    error = login_failure(ROUTE, 1, [], key_checked=True, offered=["SHA256:a"], auth_hint=HINT)
    assert str(error) == (
        "target deploy@localhost:22022 (through ci@jump.example:2200) dropped the connection"
        " while authenticating:"
        " the connection closed"
    )


def test_forwards_refused_by_permitopen_and_a_tunnel_that_is_down() -> None:
    prohibited = forward_failure(
        ROUTE, 1, ["channel 2: open failed: administratively prohibited: open failed"],
        "Session open refused by peer",
    )  # fmt: skip
    assert str(prohibited) == (
        "jump host ci@jump.example:2200 refused to forward to localhost:22022 (administratively"
        ' prohibited) — allow it with permitopen="localhost:22022" on the jump host\'s key'
    )
    down = forward_failure(
        ROUTE, 1, ["channel 2: open failed: connect failed: Connection refused"], "refused"
    )
    assert str(down) == (
        "nothing listens on localhost:22022 on ci@jump.example:2200 — is the tunnel up?"
        " (check the intranet server's ssh -R / deployer tunnel)"
    )
    other = forward_failure(ROUTE, 1, [], "Session open refused by peer")
    assert str(other) == (
        "jump host ci@jump.example:2200 did not open a channel to localhost:22022:"
        " Session open refused by peer"
    )
    assert {e.exit_code for e in (prohibited, down, other)} == {ExitCode.CONNECT}


def test_last_message_skips_debug_output_and_the_final_period() -> None:
    assert last_message(["ssh: Could not resolve hostname x.", "debug1: Exit status 255", ""]) == (
        "Could not resolve hostname x"
    )
    assert last_message([]) == ""
