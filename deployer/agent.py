"""A read-only ssh-agent serving keys from this process's memory (draft-miller-ssh-agent).

``deployer agent -- CMD`` runs CMD with SSH_AUTH_SOCK pointing here, so plain ssh, rsync and git
authenticate with the CI key while no key file ever exists. Only listing identities and signing
are answered; adding, removing and locking are refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

import paramiko

from deployer.errors import ConfigError

REQUEST_IDENTITIES = 11
IDENTITIES_ANSWER = 12
SIGN_REQUEST = 13
SIGN_RESPONSE = 14
FAILURE = 5
RSA_SHA2_256 = 2
RSA_SHA2_512 = 4
MAX_FRAME = 256 * 1024


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_string(buf: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">I", buf, offset)
    start = offset + 4
    if start + length > len(buf):
        raise ValueError("truncated string")
    return buf[start : start + length], start + length


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class MemoryAgent:
    """An ssh-agent serving keys held in this process's memory, on a private Unix socket."""

    def __init__(self, keys: Sequence[paramiko.PKey], comment: str = "deployer") -> None:
        self._keys = {key.asbytes(): key for key in keys}
        self._comment = comment
        self._dir = ""
        self.socket_path = ""
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()

    def __enter__(self) -> MemoryAgent:
        self._dir = tempfile.mkdtemp(prefix="deployer-agent-")
        os.chmod(self._dir, 0o700)
        self.socket_path = os.path.join(self._dir, "agent.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._serve, name="deployer-agent", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            if not self._same_user(conn):
                conn.close()
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    @staticmethod
    def _same_user(conn: socket.socket) -> bool:
        """Only this user (or root) may use the agent (SO_PEERCRED on Linux)."""
        peercred = getattr(socket, "SO_PEERCRED", None)
        if peercred is None:
            return True
        creds = conn.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        return uid in (os.geteuid(), 0)

    def _client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            while not self._stopping.is_set():
                try:
                    header = _recv_exact(conn, 4)
                    if header is None:
                        return
                    (length,) = struct.unpack(">I", header)
                    if length == 0 or length > MAX_FRAME:
                        return
                    body = _recv_exact(conn, length)
                    if body is None:
                        return
                    reply = self._answer(body)
                    conn.sendall(struct.pack(">I", len(reply)) + reply)
                except (OSError, ValueError, struct.error):
                    return

    def _answer(self, body: bytes) -> bytes:
        kind = body[0]
        if kind == REQUEST_IDENTITIES:
            items = b"".join(_string(blob) + _string(self._comment.encode()) for blob in self._keys)
            return bytes([IDENTITIES_ANSWER]) + struct.pack(">I", len(self._keys)) + items
        if kind == SIGN_REQUEST:
            try:
                blob, offset = _read_string(body, 1)
                data, offset = _read_string(body, offset)
                (flags,) = struct.unpack_from(">I", body, offset)
            except (ValueError, struct.error):
                return bytes([FAILURE])
            key = self._keys.get(blob)
            if key is None:
                return bytes([FAILURE])
            algorithm = None
            if key.get_name() in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"):
                algorithm = (
                    "rsa-sha2-512"
                    if flags & RSA_SHA2_512
                    else "rsa-sha2-256"
                    if flags & RSA_SHA2_256
                    else "ssh-rsa"
                )
            signature = key.sign_ssh_data(data, algorithm) if algorithm else key.sign_ssh_data(data)
            return bytes([SIGN_RESPONSE]) + _string(signature.asbytes())
        return bytes([FAILURE])


def run_with_agent(
    keys: Sequence[paramiko.PKey], argv: Sequence[str], env: Mapping[str, str] | None = None
) -> int:
    """Run argv with SSH_AUTH_SOCK set to a MemoryAgent holding keys; return its exit status."""
    if not argv or shutil.which(argv[0]) is None:
        raise ConfigError(
            f"command not found: {argv[0] if argv else '(none)'} — give the command after --"
        )
    with MemoryAgent(keys) as agent:
        child_env = dict(os.environ if env is None else env)
        child_env["SSH_AUTH_SOCK"] = agent.socket_path
        child_env.pop("SSH_AGENT_PID", None)
        child = subprocess.Popen(list(argv), env=child_env)

        def forward(signum: int, _frame: FrameType | None) -> None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            status = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 128 - status if status < 0 else status
