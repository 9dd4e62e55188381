"""Commands on a target through its ControlMaster: an Executor whose bytes never pass through Python's SSH.

Each command is one mux session: the master gets a pipe for stdin and pipes for stdout and
stderr, and runs the command's channel itself. An upload is written into the stdin pipe (tar and
compression stay in this process; encryption, framing and flow control are OpenSSH's, in another
process and, through a jump host, another one per hop). Errors read as on the paramiko path: a
dead master is a ConnectError, a command past its time limit a CommandTimeout after its whole
process group on the target was stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from deployer.errors import CommandTimeout, ConnectError, DeployerError
from deployer.remote.executor import KILL_AFTER, Output, OutputSink, RunResult, upload_failure
from deployer.ssh.openssh.argv import remote_command, stop_command
from deployer.ssh.openssh.master import Master
from deployer.ssh.openssh.mux import ControlConnection, Message, MuxError, Reply, new_session
from deployer.ssh.route import Route

READ_CHUNK = 65536
PIPE_SIZE = 1 << 20  # a deeper stdin pipe: fewer wake-ups of the master per megabyte
WRITE_BUFFER = 64 << 10  # tar writes 512-byte headers; the pipe gets them in batches
OPEN_TIMEOUT = 30.0  # seconds for the master to open a session (one round trip)
SETTLE = 0.5  # seconds a master that dropped a session gets to exit before it counts as alive


class _Uploader(threading.Thread):
    """Writes the upload into the session's stdin pipe, then closes it (EOF on the target)."""

    def __init__(
        self, fd: int, upload: Callable[[BinaryIO], object], control: ControlConnection
    ) -> None:
        super().__init__(name="deployer-upload", daemon=True)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.writer = io.BufferedWriter(io.FileIO(fd, "wb"), buffer_size=WRITE_BUFFER)
        self.upload = upload
        self.control = control
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.upload(self.writer)
            self.writer.close()
        except BaseException as exc:  # reported by the caller, which owns the session
            self.error = exc
            with contextlib.suppress(OSError, ValueError):
                self.writer.close()
            # end the session, as closing the channel does on the paramiko path
            with contextlib.suppress(OSError):
                self.control.sock.shutdown(socket.SHUT_RDWR)


class OpenSSHConnection:
    """An authenticated session with a target through OpenSSH masters (one per hop)."""

    def __init__(self, route: Route, master: Master, host_key: tuple[str, bytes]) -> None:
        self.route = route
        self.label = str(route.target)
        self.host_key = host_key  # the target's key as deployer verified it: (type, blob)
        self._master = master

    def close(self) -> None:
        """Nothing to do: the client that made the masters stops them."""

    def __enter__(self) -> OpenSSHConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        script: str,
        *,
        upload: Callable[[BinaryIO], object] | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run a command on the target; optionally stream stdin from upload(writer)."""
        grouped = timeout is not None  # only a command with a limit may have to be stopped
        stdin, feed = os.pipe() if upload else (os.open(os.devnull, os.O_RDONLY), -1)
        out, out_w = os.pipe()
        err, err_w = os.pipe()
        try:
            control = self._open(
                remote_command(script, report_group=grouped), (stdin, out_w, err_w)
            )
        except BaseException:
            for fd in (feed, out, err):
                if fd >= 0:
                    os.close(fd)
            raise
        uploader = _Uploader(feed, upload, control) if upload else None
        try:
            if uploader is not None:
                uploader.start()
            result = self._collect(control, out, err, Output(on_output), timeout, grouped, uploader)
        except ConnectError:
            if uploader is not None and isinstance(uploader.error, DeployerError):
                raise uploader.error from None  # it ended the session: its own exit code
            raise
        finally:
            control.close()
            os.close(out)
            os.close(err)
        if uploader is not None:
            uploader.join(timeout=10)
            failure = upload_failure(uploader.error, result.status, self.label)
            if failure is not None:
                raise failure
        return result

    def _open(self, command: str, fds: tuple[int, int, int]) -> ControlConnection:
        """A mux session running command with fds as its stdin, stdout and stderr."""
        try:
            control = ControlConnection(self._master.control, OPEN_TIMEOUT)
            try:
                reply = control.request(new_session(1, command), fds)
            except BaseException:
                control.close()
                raise
        except MuxError as exc:
            self._master.stop()
            raise ConnectError(f"lost the connection to {self.label}: {exc}") from exc
        finally:
            for fd in fds:
                os.close(fd)  # the master has its own copies now
        if reply.kind is not Message.SESSION_OPENED:
            control.close()
            raise ConnectError(
                f"lost the connection to {self.label}: it refused a session ({reply.text})"
            )
        control.sock.settimeout(None)
        return control

    def _collect(
        self,
        control: ControlConnection,
        out: int,
        err: int,
        output: Output,
        timeout: float | None,
        grouped: bool,
        uploader: _Uploader | None,
    ) -> RunResult:
        """Read stdout/stderr into output until the session ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        names = {out: "stdout", err: "stderr"}
        head: bytearray | None = bytearray() if grouped else None  # the process group's line
        group: int | None = None
        status: int | None = None
        waiting = [out, err, control.fileno()]
        while waiting:
            if deadline is not None and time.monotonic() > deadline:
                self._stop(group, control)
                raise CommandTimeout(
                    f"command on {self.label} did not finish within {timeout:.0f} s"
                )
            if uploader is not None and isinstance(uploader.error, DeployerError):
                raise uploader.error
            ready, _, _ = select.select(waiting, [], [], 0.2)
            for fd in ready:
                if fd == control.fileno():
                    reply = self._receive(control)
                    if reply is None:
                        waiting.remove(fd)
                    elif reply.kind is Message.EXIT_MESSAGE:
                        status = reply.value
                    continue
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    waiting.remove(fd)
                    continue
                if fd == out and head is not None:
                    head += chunk
                    if b"\n" not in head:
                        continue
                    line, _, chunk = bytes(head).partition(b"\n")
                    group, head = (int(line) if line.strip().isdigit() else None), None
                    if not chunk:
                        continue
                output.add(names[fd], chunk)
        if status is None:
            if self._gone():
                raise ConnectError(
                    f"lost the connection to {self.label} while a command was running"
                )
            status = -1  # the target ended the command without a status: it was killed
        return output.result(status)

    @staticmethod
    def _receive(control: ControlConnection) -> Reply | None:
        try:
            return control.receive()
        except (OSError, MuxError):
            return None

    def _gone(self) -> bool:
        """Whether the master (and so the connection) died, rather than the command being killed."""
        settle = time.monotonic() + SETTLE
        while time.monotonic() < settle and self._master.process.poll() is None:
            time.sleep(0.05)
        if self._master.alive():
            return False
        self._master.stop()
        return True

    def _stop(self, group: int | None, control: ControlConnection) -> None:
        """Stop a command that ran too long: TERM to its process group, KILL 5 s later.

        The mux protocol cannot send a signal, so a second session runs `kill` on the target.
        """
        if group is None:
            return  # the target has no /proc: closing the session is all that is left
        for name in ("TERM", "KILL"):
            try:
                self.run(stop_command(group, name))
            except DeployerError:
                return  # the connection is gone: nothing more to ask
            if _exited(control, KILL_AFTER):
                return


def _exited(control: ControlConnection, seconds: float) -> bool:
    """Wait up to seconds for the session's exit message (or its end)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([control.fileno()], [], [], left)
        if not ready:
            return False
        try:
            reply = control.receive()
        except (OSError, MuxError):
            return True
        if reply is None or reply.kind is Message.EXIT_MESSAGE:
            return True
    return False
