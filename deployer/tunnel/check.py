"""End-to-end checks of a forward: what the target says first, and whether it says it through the tunnel."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Expectation:
    """What a connection to the target sends first (its banner line), or None for a silent service."""

    banner: bytes | None

    def describe(self) -> str:
        """For log lines: the banner, or 'accepts connections'."""
        if self.banner is None:
            return "accepts connections"
        return self.banner.decode("ascii", "replace")[:80]


def _read_line(sock: socket.socket, deadline: float) -> bytes | None:
    """Read up to the first newline (at most 256 bytes); None on EOF, b'' on timeout."""
    data = b""
    while b"\n" not in data and len(data) < 256:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data.split(b"\n")[0].rstrip(b"\r") if data else b""
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(256)
        except TimeoutError:
            continue
        if not chunk:
            return data.rstrip(b"\r") if data else None
        data += chunk
    return data.split(b"\n")[0].rstrip(b"\r")


def read_expectation(host: str, port: int, timeout: float = 2.0) -> Expectation:
    """Connect to the target directly (from here) and note its first line; OSError if it is down."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        line = _read_line(sock, time.monotonic() + min(timeout, 1.5))
    return Expectation(line or None)


QUIET_WINDOW = 1.0  # a silent service: the connection must stay open this long through the tunnel


def check_through(path: Path, expect: Expectation, timeout: float) -> str | None:
    """Connect through the tunnel's -L socket; None when the target answered as expected, else why."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            if expect.banner is None:
                line = _read_line(sock, min(deadline, time.monotonic() + QUIET_WINDOW))
                if line is None:
                    return "the jump host closed the connection: nothing reachable behind the port"
                return None
            line = _read_line(sock, deadline)
    except OSError as exc:
        return f"the check socket failed: {exc.strerror or exc}"
    if line is None:
        return "the jump host closed the connection: nothing reachable behind the port"
    if not line:
        return f"no answer through the tunnel within {timeout:g} s"
    if line != expect.banner:
        return f"a different service answered: {line[:60].decode('ascii', 'replace')!r}"
    return None
