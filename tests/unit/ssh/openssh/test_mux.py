"""The mux protocol's messages, byte for byte as OpenSSH's mux.c reads and writes them."""

from __future__ import annotations

import struct

import pytest

from deployer.ssh.openssh.mux import (
    Message,
    MuxError,
    alive_check,
    frame,
    hello,
    new_session,
    parse_reply,
    stdio_forward,
    terminate,
)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def string(data: bytes) -> bytes:
    return u32(len(data)) + data


def test_hello_is_type_and_version_4() -> None:
    assert hello() == u32(0x00000001) + u32(4)
    assert frame(hello()) == u32(8) + hello()


def test_new_session_asks_for_no_tty_no_forwarding_and_no_escape() -> None:
    message = new_session(7, "/bin/sh -c 'true'")
    expected = (
        u32(0x10000002) + u32(7) + string(b"")  # type, request id, reserved
        + u32(0) * 4  # want tty, X11, agent, subsystem: uint32 in mux.c, not bytes
        + u32(0xFFFFFFFF)  # escape char: none
        + string(b"")  # terminal type
        + string(b"/bin/sh -c 'true'")
    )  # fmt: skip
    assert message == expected


def test_stdio_forward_sends_the_port_as_uint32_as_mux_c_reads_it() -> None:
    assert stdio_forward(3, "localhost", 22022) == (
        u32(0x10000008) + u32(3) + string(b"") + string(b"localhost") + u32(22022)
    )


def test_alive_check_and_terminate() -> None:
    assert alive_check(2) == u32(0x10000004) + u32(2)
    assert terminate(9) == u32(0x10000005) + u32(9)


@pytest.mark.parametrize(
    ("payload", "kind", "ident", "value", "text"),
    [
        (u32(0x80000006) + u32(1) + u32(5), Message.SESSION_OPENED, 1, 5, ""),
        (u32(0x80000004) + u32(5) + u32(127), Message.EXIT_MESSAGE, 5, 127, ""),
        (u32(0x80000005) + u32(1) + u32(4242), Message.ALIVE, 1, 4242, ""),
        (u32(0x80000001) + u32(3), Message.OK, 3, 0, ""),
        (
            u32(0x80000003) + u32(1) + string(b"Session open refused by peer"),
            Message.FAILURE, 1, 0, "Session open refused by peer",
        ),
        (u32(0x80000002) + u32(2) + string(b"Permission denied"), Message.PERMISSION_DENIED, 2, 0,
         "Permission denied"),
        (u32(0x00000001) + u32(4), Message.HELLO, 0, 4, ""),
    ],
)  # fmt: skip
def test_replies_are_decoded(
    payload: bytes, kind: Message, ident: int, value: int, text: str
) -> None:
    reply = parse_reply(payload)
    assert (reply.kind, reply.ident, reply.value, reply.text) == (kind, ident, value, text)


@pytest.mark.parametrize(
    "payload",
    [b"", u32(0x80000006) + u32(1), u32(0x12345678) + u32(1), b"\x80\x00"],
)
def test_what_is_not_a_reply_is_a_mux_error(payload: bytes) -> None:
    with pytest.raises(MuxError, match="unexpected message from the master"):
        parse_reply(payload)
