"""What a client writes on a real TCP connection, counted in SSH packets (AES-GCM keeps the
packet lengths in clear)."""

from __future__ import annotations

import socket
from typing import Any

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


def gcm_packets(chunk: bytes) -> int:
    """How many whole AES-GCM packets chunk holds (it must hold nothing else)."""
    count, offset = 0, 0
    while offset < len(chunk):
        offset += 4 + int.from_bytes(chunk[offset : offset + 4], "big") + GCM_TAG
        count += 1
    assert offset == len(chunk), "a write that ends inside a packet"
    return count


def behind_newkeys(sends: list[bytes]) -> int:
    """How many packets the one write that carried NEWKEYS (plaintext) held behind it."""
    (with_newkeys,) = [chunk for chunk in sends if len(chunk) > 5 and chunk[5] == NEWKEYS]
    return gcm_packets(with_newkeys[4 + int.from_bytes(with_newkeys[:4], "big") :])


def stall_free_wire(port: int) -> tuple[Recording, Any]:
    """A recorded connection to an sshd on loopback and its transport (AES-GCM only)."""
    from deployer.ssh.stalls import stall_free_transport

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recording = Recording(sock)
    transport = stall_free_transport(recording)
    transport.get_security_options().ciphers = ["aes128-gcm@openssh.com"]
    return recording, transport
