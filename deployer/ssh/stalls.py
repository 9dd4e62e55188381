"""Keeping a tunnelled hop free of 40 ms stalls: hold the messages that nothing answers.

Through a reverse tunnel (``ssh -R``), the bytes of a hop cross TCP connections that OpenSSH
opens without TCP_NODELAY (sshd sets it only for a terminal). There Nagle's rule holds a small
segment while an earlier one is unacknowledged, and the receiver delays that ACK by up to 40 ms
unless it has something to send back. So every time a side sends two small messages in a row
and the first gets no answer (our banner before KEXINIT, our NEWKEYS before the service request;
our EOF and CLOSE after a command before the next command's request, which goes right behind
the one for the following command's channel; a small stdin before its EOF; the server's unsolicited
``hostkeys-00@openssh.com`` before its answer to our first channel open), the second waits about
40 ms. A one-file push met five such stalls, more than its round trips on a 10 ms link.

``HeldWrites`` sits between paramiko's packetizer and the hop's socket (or the previous hop's
channel) and keeps the bytes of an unanswered message back until the next message goes, so both
leave in one write and cross every hop as one segment; when nothing follows within 0.1 s (an
idle read times out, every 0.1 s in paramiko's transport thread), they go alone. ``avoid_stalls``
marks which messages to hold, and answers a server's reply-less global request with an
SSH_MSG_IGNORE so that the tunnel acknowledges it at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paramiko
from paramiko.common import (
    MSG_CHANNEL_CLOSE,
    MSG_GLOBAL_REQUEST,
    cMSG_IGNORE,
    cMSG_NEWKEYS,
)

# How long held bytes wait for a message to go along with; then the next idle read sends them.
HOLD_SECONDS = 0.1
# Held bytes go out once this many are held: a write of that size is not held back by Nagle's
# rule (full segments go at once), and a long upload must stream.
HOLD_LIMIT = 64 * 1024


class HeldWrites:
    """A hop's byte stream whose marked writes wait for the next one (or for the line to idle).

    The first write (the identification line, which the server does not answer: it sent its
    own already) is held; so is every write made inside ``hold()`` by the same thread, up to
    HOLD_LIMIT bytes. Held bytes go out in front of the next write, in the same one; or, once
    they have waited HOLD_SECONDS, when a read times out for want of data.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._held = b""
        self._held_since = 0.0
        self._lock = threading.Lock()
        self._holding = threading.local()
        self._first = True

    def __getattr__(self, name: str) -> Any:  # settimeout, getpeername, fileno, close, ...
        return getattr(self._sock, name)

    @contextlib.contextmanager
    def hold(self, on_held: Callable[[], object] | None = None) -> Iterator[None]:
        """Hold what this thread writes in the block (until the next write, or the line idles);
        on_held is called after each write held."""
        self._holding.on = True
        self._holding.on_held = on_held
        try:
            yield
        finally:
            self._holding.on = False
            self._holding.on_held = None

    def send(self, data: bytes) -> int:
        """Send data behind whatever is held, in one write; or hold it, when marked."""
        with self._lock:
            holding = self._first or getattr(self._holding, "on", False)
            if holding and len(self._held) + len(data) <= HOLD_LIMIT:
                self._first = False
                if not self._held:
                    self._held_since = time.monotonic()
                self._held += bytes(data)
                on_held = getattr(self._holding, "on_held", None)
                if on_held is not None:
                    on_held()
                return len(data)
            while self._held:
                # a short write keeps the rest held: the packetizer retries with the same data
                sent = int(self._sock.send(self._held + bytes(data)))
                if sent < len(self._held):
                    self._held = self._held[sent:]
                    continue
                sent -= len(self._held)
                self._held = b""
                if sent:
                    return sent
            return int(self._sock.send(data))

    def recv(self, size: int) -> bytes:
        """Read; when the read times out (the line idles), send what has been held long enough."""
        try:
            return bytes(self._sock.recv(size))
        except TimeoutError:
            self._release()
            raise

    def _release(self) -> None:
        if not self._held or time.monotonic() - self._held_since < HOLD_SECONDS:
            return
        if not self._lock.acquire(blocking=False):
            return  # a writer is sending, and takes the held bytes along
        try:
            while self._held:
                self._held = self._held[int(self._sock.send(self._held)) :]
        except OSError:  # TimeoutError included: the next write or idle read tries again
            pass
        finally:
            self._lock.release()


def holding(
    transport: paramiko.Transport, on_held: Callable[[], object] | None = None
) -> contextlib.AbstractContextManager[None]:
    """A block in which what this thread sends on transport is held (see HeldWrites): nothing
    is, on a transport not made by stall_free_transport (on_held: see HeldWrites.hold)."""
    stream = transport.sock
    if isinstance(stream, HeldWrites):
        return stream.hold(on_held)
    return contextlib.nullcontext()


def avoid_stalls(transport: paramiko.Transport, stream: HeldWrites) -> None:
    """Hold transport's unanswered messages in stream (see the module docstring).

    Held: NEWKEYS (our next message follows at once) and the EOF and CLOSE with which paramiko
    answers a server's CLOSE (the next command's request follows). Answered with an IGNORE: a
    global request that wants no reply.
    """
    send_message = transport.packetizer.send_message

    def send(message: paramiko.Message) -> None:
        if message.asbytes()[:1] == cMSG_NEWKEYS:
            with stream.hold():
                send_message(message)
        else:
            send_message(message)

    transport.packetizer.send_message = send

    channel_handlers = dict(transport._channel_handler_table)
    on_close = channel_handlers[MSG_CHANNEL_CLOSE]

    def close(channel: paramiko.Channel, message: paramiko.Message) -> None:
        with stream.hold():
            on_close(channel, message)

    channel_handlers[MSG_CHANNEL_CLOSE] = close
    transport._channel_handler_table = channel_handlers

    on_global = transport._handler_table[MSG_GLOBAL_REQUEST]

    def global_request(message: paramiko.Message) -> None:
        request = paramiko.Message(message.asbytes())
        request.get_byte()
        request.get_string()  # its name
        wants_reply = request.get_boolean()
        on_global(message)
        if not wants_reply:
            ignore = paramiko.Message()
            ignore.add_byte(cMSG_IGNORE)
            ignore.add_string(b"")
            transport._send_message(ignore)

    transport._handler_table[MSG_GLOBAL_REQUEST] = global_request


def stall_free_transport(sock: Any) -> paramiko.Transport:
    """A paramiko client transport over sock (a socket or the previous hop's channel) that
    avoids the stalls above."""
    stream = HeldWrites(sock)
    transport = paramiko.Transport(stream)
    avoid_stalls(transport, stream)
    return transport
