"""One hop's ControlMaster ``ssh``: it logs in once; every session and channel then goes through it.

The master's connection is a socket deployer hands it on stdin and stdout: a TCP connection (or a
proxy's) to the first hop, or one end of a socketpair whose other end a jump host's master
carries as a stdio forward. It is ready when its control socket appears (OpenSSH listens there
only once logged in); it logs to a file of its own, which says why when it is not.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from deployer.ssh.openssh import processes
from deployer.ssh.openssh.argv import MasterSpec, master_argv
from deployer.ssh.openssh.mux import ControlConnection, Message, MuxError, stdio_forward, terminate

Spawn = Callable[[list[str], int, IO[bytes]], subprocess.Popen[bytes]]
"""Starts argv with a descriptor as its stdin and stdout and a file as its stderr."""

_POLL = 0.005  # seconds between looks at the control socket while the master logs in
# Seconds a master asked to exit over its control socket gets before it is signalled. OpenSSH
# before 9.3 may sleep through a SIGTERM that arrives while it is busy (until its next event);
# a request on the control socket is an event, and an exit it always honours at once.
EXIT_WAIT = 2.0


class ForwardRefused(Exception):
    """The master's hop refused to open a channel to where a stdio forward was to go."""

    def __init__(self, said: str, log: list[str]) -> None:
        super().__init__(said)
        self.said = said
        self.log = log  # what the master logged meanwhile (the reason is there)


class Master:
    """A running ControlMaster for one hop."""

    def __init__(
        self,
        spec: MasterSpec,
        hop_id: str,
        connection: socket.socket,
        log: Path,
        spawn: Spawn,
        carrier: ControlConnection | None = None,
    ) -> None:
        """Start ssh over `connection` (which it takes over; ours is closed).

        hop_id: what the broker knows the hop's host key check by. carrier: the previous hop's
        control connection whose stdio forward is `connection`'s other end; it must stay open
        as long as this master lives.
        """
        self.control = spec.control
        self.hop_id = hop_id
        self.log = log
        self.broken = False
        self._carrier = carrier
        try:
            with log.open("wb") as sink:
                self.process = spawn(master_argv(spec), connection.fileno(), sink)
        except BaseException:
            if carrier is not None:
                carrier.close()
            raise
        finally:
            connection.close()

    @property
    def pid(self) -> int:
        """The master's process id."""
        return self.process.pid

    def wait_ready(self, deadline: float) -> bool | None:
        """True once logged in; False if ssh ended first; None if the deadline passed."""
        while not os.path.exists(self.control):
            if self.process.poll() is not None:
                return os.path.exists(self.control)
            if time.monotonic() > deadline:
                return None
            time.sleep(_POLL)
        return True

    def usable(self) -> bool:
        """Whether sessions may still be opened through this master."""
        return not self.broken and self.process.poll() is None

    def log_size(self) -> int:
        """How much the master has logged so far (to read only what a request adds)."""
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_lines(self, start: int = 0) -> list[str]:
        """What the master logged (from byte `start` on)."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(start)
                return handle.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def forward(
        self, host: str, port: int, timeout: float
    ) -> tuple[socket.socket, ControlConnection]:
        """A channel from this hop to host:port, as one end of a socketpair, and its carrier.

        Raises ForwardRefused when the hop refuses it, MuxError when the master does not answer.
        """
        mark = self.log_size()
        ours, theirs = socket.socketpair()
        control: ControlConnection | None = None
        try:
            control = ControlConnection(self.control, timeout)
            reply = control.request(
                stdio_forward(1, host, port), (theirs.fileno(), theirs.fileno())
            )
        except BaseException:
            ours.close()
            if control is not None:
                control.close()
            raise
        finally:
            theirs.close()
        if reply.kind is not Message.SESSION_OPENED:
            ours.close()
            control.close()
            raise ForwardRefused(reply.text, self.log_lines(mark))
        control.sock.settimeout(None)  # it only has to stay open
        return ours, control

    def alive(self, timeout: float = 2.0) -> bool:
        """Whether the master still answers on its control socket."""
        if self.process.poll() is not None:
            return False
        try:
            control = ControlConnection(self.control, timeout)
        except MuxError:
            return False
        control.close()
        return True

    def stop(self) -> None:
        """End the master (and its connection); nothing goes through it afterwards."""
        self.broken = True
        if self.process.poll() is None:
            with contextlib.suppress(MuxError):
                control = ControlConnection(self.control, EXIT_WAIT)
                try:
                    control.request(terminate(1))
                finally:
                    control.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=EXIT_WAIT)
        processes.terminate(self.process)
        if self._carrier is not None:
            self._carrier.close()
        with contextlib.suppress(OSError):
            os.unlink(self.control)
