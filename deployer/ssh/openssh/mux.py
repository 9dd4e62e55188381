"""A client of OpenSSH's connection multiplexing protocol (PROTOCOL.mux, version 4).

A ControlMaster ``ssh`` listens on a Unix socket; a client asks it for a session (a remote
command) or a stdio forward (a channel to host:port) and hands it file descriptors over that
socket. The master then moves every byte between those descriptors and the SSH channel itself,
in C: this process only writes into a pipe. One request per control connection; the session
lasts as long as that connection stays open. The message layouts are OpenSSH's mux.c (booleans
are uint32 there, and a stdio forward's port too).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

PROTOCOL_VERSION = 4
NO_ESCAPE = 0xFFFFFFFF
MAX_MESSAGE = 256 * 1024  # replies are a few bytes; anything longer is not a master talking

_UINT32 = struct.Struct(">I")


class Message(IntEnum):
    """Message types (PROTOCOL.mux section 11)."""

    HELLO = 0x00000001
    NEW_SESSION = 0x10000002
    ALIVE_CHECK = 0x10000004
    TERMINATE = 0x10000005
    NEW_STDIO_FWD = 0x10000008
    OK = 0x80000001
    PERMISSION_DENIED = 0x80000002
    FAILURE = 0x80000003
    EXIT_MESSAGE = 0x80000004
    ALIVE = 0x80000005
    SESSION_OPENED = 0x80000006
    REMOTE_PORT = 0x80000007
    TTY_ALLOC_FAIL = 0x80000008


class MuxError(Exception):
    """The master could not be reached, refused a request, or spoke out of turn."""


@dataclass(frozen=True)
class Reply:
    """One message from the master: its type, the id it answers or names, and what it carries."""

    kind: Message
    ident: int = 0  # the request id answered, or the session id (exit message)
    value: int = 0  # session id (opened), exit status (exit message), pid (alive)
    text: str = ""  # the reason of a failure or a refusal


def _string(data: bytes) -> bytes:
    return _UINT32.pack(len(data)) + data


def frame(payload: bytes) -> bytes:
    """A message on the wire: its length, then the payload."""
    return _UINT32.pack(len(payload)) + payload


def hello() -> bytes:
    """The client's hello (no extensions)."""
    return _UINT32.pack(Message.HELLO) + _UINT32.pack(PROTOCOL_VERSION)


def new_session(request: int, command: str) -> bytes:
    """Ask for a session running command: no tty, no X11, no agent, no escape character."""
    flags = _UINT32.pack(0) * 4  # want tty, X11 forwarding, agent forwarding, subsystem
    return (
        _UINT32.pack(Message.NEW_SESSION)
        + _UINT32.pack(request)
        + _string(b"")  # reserved
        + flags
        + _UINT32.pack(NO_ESCAPE)
        + _string(b"")  # terminal type
        + _string(command.encode())
    )


def stdio_forward(request: int, host: str, port: int) -> bytes:
    """Ask for a channel to host:port, carried over the descriptors that follow."""
    return (
        _UINT32.pack(Message.NEW_STDIO_FWD)
        + _UINT32.pack(request)
        + _string(b"")  # reserved
        + _string(host.encode())
        + _UINT32.pack(port)
    )


def alive_check(request: int) -> bytes:
    """Ask the master for its pid (it answers while its process runs)."""
    return _UINT32.pack(Message.ALIVE_CHECK) + _UINT32.pack(request)


def terminate(request: int) -> bytes:
    """Ask the master to exit (what `ssh -O exit` sends; it answers OK first)."""
    return _UINT32.pack(Message.TERMINATE) + _UINT32.pack(request)


def parse_reply(payload: bytes) -> Reply:
    """Decode one message from the master; MuxError if it is not one this client understands."""
    try:
        (number,) = _UINT32.unpack_from(payload, 0)
        kind = Message(number)
        if kind is Message.HELLO:
            (version,) = _UINT32.unpack_from(payload, 4)
            return Reply(kind, value=version)
        (ident,) = _UINT32.unpack_from(payload, 4)
        if kind in (Message.FAILURE, Message.PERMISSION_DENIED):
            (length,) = _UINT32.unpack_from(payload, 8)
            text = payload[12 : 12 + length].decode(errors="replace")
            return Reply(kind, ident, text=text)
        if kind in (Message.SESSION_OPENED, Message.EXIT_MESSAGE, Message.ALIVE):
            (value,) = _UINT32.unpack_from(payload, 8)
            return Reply(kind, ident, value)
        return Reply(kind, ident)
    except (struct.error, ValueError) as exc:
        raise MuxError(f"unexpected message from the master ({payload[:16].hex()})") from exc


class ControlConnection:
    """One connection to a master's control socket: a hello, then one request and its replies."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            self.sock.sendall(frame(hello()))
            reply = self.receive()
        except OSError as exc:
            self.sock.close()
            raise MuxError(f"the control socket does not answer ({exc.strerror or exc})") from exc
        except MuxError:
            self.sock.close()
            raise
        if reply is None or reply.kind is not Message.HELLO or reply.value != PROTOCOL_VERSION:
            self.sock.close()
            raise MuxError("the master does not speak mux protocol version 4")

    def request(self, payload: bytes, fds: tuple[int, ...] = ()) -> Reply:
        """Send a request (and the descriptors it needs) and return the master's answer."""
        try:
            self.sock.sendall(frame(payload))
            for fd in fds:  # one descriptor per one-byte message, as mm_send_fd() sends them
                socket.send_fds(self.sock, [b"\0"], [fd])
            reply = self.receive()
        except OSError as exc:
            raise MuxError(f"the master stopped answering ({exc.strerror or exc})") from exc
        if reply is None:
            raise MuxError("the master closed the control connection")
        return reply

    def receive(self) -> Reply | None:
        """The next message, or None when the master closed the connection."""
        header = self._exactly(4)
        if header is None:
            return None
        (length,) = _UINT32.unpack(header)
        if not 4 <= length <= MAX_MESSAGE:
            raise MuxError(f"a message of {length} bytes from the master")
        payload = self._exactly(length)
        if payload is None:
            return None
        return parse_reply(payload)

    def _exactly(self, size: int) -> bytes | None:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def fileno(self) -> int:
        """The socket's descriptor (to wait on it with select)."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the control connection (a session still open on it ends)."""
        self.sock.close()
