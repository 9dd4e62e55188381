"""Host keys on the OpenSSH path are judged by deployer's own rules, before ssh logs in anywhere.

Every ssh deployer starts has ``KnownHostsCommand`` set to ``knownhosts_command.py``, which hands
the key a hop presented to this broker over a private Unix socket. The broker runs the hop's
check (``HostKeyPolicy.check``, exactly as on the paramiko path: the same verdicts, messages and
--accept-new-host-keys notices) and answers yes or no; ssh is told about a key only when deployer
trusts it, so its strict checking refuses everything else. What each hop's check concluded is
kept for the caller: the refusal to report, or the key that was accepted.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deployer.errors import ConfigError, DeployerError, InternalError
from deployer.ssh.agent import peer_is_allowed

SOCKET_NAME = "hostkeys.sock"
MAX_REQUEST = 64 * 1024
TRUSTED = b"trusted\n"
CLIENT_TIMEOUT = 5.0  # seconds a helper gets to send its one line

Check = Callable[[str, bytes], None]
"""Raises HostKeyError unless (key type, key blob) is trusted for its hop."""


@dataclass
class HopVerdict:
    """What the check of one hop's host key concluded (nothing yet: neither field set)."""

    check: Check
    key: tuple[str, bytes] | None = None  # (key type, blob) once accepted
    error: DeployerError | None = None  # the refusal to report

    @property
    def checked(self) -> bool:
        """Whether ssh got as far as presenting this hop's key."""
        return self.key is not None or self.error is not None


class HostKeyBroker:
    """Answers ssh's KnownHostsCommand with deployer's verdict on the key of each hop it expects."""

    def __init__(self, directory: Path) -> None:
        self.socket_path = str(directory / SOCKET_NAME)
        self._hops: dict[str, HopVerdict] = {}
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(self.socket_path)
            self._listener.listen(64)
        except OSError as exc:
            self._listener.close()
            raise ConfigError(
                f"cannot create a socket in {directory}: {exc.strerror or exc}"
                " — set TMPDIR to a short, writable directory"
            ) from exc
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="deployer-hostkeys", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Answer one helper at a time (each asks once, about one key, and is answered at once)."""
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue  # close() wakes accept() with an error; anything else: keep serving
            with conn:
                if not peer_is_allowed(conn):
                    continue
                conn.settimeout(CLIENT_TIMEOUT)
                with contextlib.suppress(OSError):
                    conn.sendall(self.answer(conn.makefile("rb").readline(MAX_REQUEST)))

    def expect(self, hop: str, check: Check) -> None:
        """Judge keys presented for `hop` (an id in ssh's KnownHostsCommand) with `check`."""
        with self._lock:
            self._hops[hop] = HopVerdict(check)

    def verdict(self, hop: str) -> HopVerdict:
        """What the check of `hop` concluded so far."""
        with self._lock:
            return self._hops[hop]

    def answer(self, request: bytes) -> bytes:
        """TRUSTED or nothing for one request line: HOP, key type and base64 key, tab-separated."""
        try:
            hop, key_type, key = request.decode().rstrip("\n").split("\t")
            blob = base64.b64decode(key, validate=True)
        except (UnicodeDecodeError, ValueError, binascii.Error):
            return b""
        with self._lock:
            verdict = self._hops.get(hop)
            if verdict is None:
                return b""
            if verdict.key is not None:  # asked again (a re-key): the key must not have changed
                return TRUSTED if verdict.key == (key_type, blob) else b""
            if verdict.error is not None:
                return b""
            try:
                verdict.check(key_type, blob)
            except DeployerError as exc:
                verdict.error = exc
                return b""
            except Exception as exc:  # a bug must refuse the key, and be reported as one
                verdict.error = InternalError(
                    f"internal error checking a host key ({type(exc).__name__}: {exc})"
                    " — rerun with --traceback and report it"
                )
                return b""
            verdict.key = (key_type, blob)
            return TRUSTED

    def close(self) -> None:
        """Stop answering and remove the socket."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once
        self._thread.join(timeout=CLIENT_TIMEOUT + 1)
        self._listener.close()
        with contextlib.suppress(OSError):
            Path(self.socket_path).unlink()
