"""An authenticated connection to a target, and commands run on it (an Executor over SSH).

Commands start without waiting for the server's reply, stream stdin from an upload function and
their output to a sink; a dead channel is a ConnectError, a command that runs too long a
TransferError. paramiko's errors are translated here and in ``ssh.connect``, nowhere else.

An interrupt (Ctrl-C, SIGTERM) raised inside paramiko can leave half a packet on the connection or
a lock of a channel's buffer held, and the transport's thread then waits forever: the cleanup that
follows (switch back, unlock) would hang with it. Every call into paramiko from the main thread
here runs under ``interrupts.whole()``; an interrupt is raised between them, while waiting.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

import paramiko

from deployer.errors import (
    CommandTimeout,
    ConnectError,
    reason,
)
from deployer.interrupts import whole
from deployer.remote.executor import KILL_AFTER, Output, OutputSink, RunResult, upload_failure
from deployer.ssh.hostkeys import stored_key_type
from deployer.ssh.route import Route
from deployer.ssh.stalls import holding

READ_CHUNK = 32768
# Seconds a spare channel's request may take to be queued (microseconds, as a rule)
QUEUE_WAIT = 1.0


class _ChannelWriter:
    """A minimal binary file object over a channel's stdin, for streaming uploads."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> int:
        self._channel.sendall(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: sendall already handed the bytes to the transport."""


class Connection:
    """An authenticated session with a target, possibly through jump hosts."""

    def __init__(self, route: Route, transports: list[paramiko.Transport]) -> None:
        self.route = route
        self.label = str(route.target)
        self._transports = transports
        self._spare: _SpareChannel | None = None

    @property
    def transport(self) -> paramiko.Transport:
        """The target's transport (the last hop)."""
        return self._transports[-1]

    @property
    def host_key(self) -> tuple[str, bytes]:
        """The target's host key as verified: (key type, blob)."""
        key = self.transport.get_remote_server_key()
        return stored_key_type(key.get_name()), key.asbytes()

    def close(self) -> None:
        """Close every hop, innermost first."""
        for transport in reversed(self._transports):
            transport.close()

    def __enter__(self) -> Connection:
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
        try:
            channel = self._session()
            # the next command's channel opens while this one runs. Through a reverse tunnel a
            # message sent right behind another can wait 40 ms for an ACK (see ssh.stalls), so
            # its request is held to leave with this command's, in one write. (Not this one's
            # with its stdin: sshd opens a session's window only once it has the command.)
            self._spare = _SpareChannel(self.transport)
            with whole():
                # our scripts are POSIX sh whatever the login shell is (fish, csh, ...)
                _exec_without_reply(channel, f"/bin/sh -c {shlex.quote(script)}")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"lost the connection to {self.label}: {reason(exc)}") from exc
        uploader = _start_upload(channel, upload) if upload else None
        try:
            result = _collect(channel, Output(on_output), timeout, self.label)
        finally:
            # held like the answer to sshd's CLOSE, when ours goes first (ssh.stalls)
            with whole(), holding(self.transport):
                channel.close()
        if uploader is not None:
            uploader.join(timeout=10)
            failure = upload_failure(uploader.error, result.status, self.label)
            if failure is not None:
                raise failure
        return result

    def _session(self) -> paramiko.Channel:
        """A session channel for the next command: the spare one opened meanwhile, if it came
        up, else a new one."""
        spare, self._spare = self._spare, None
        channel = spare.take() if spare is not None else None
        if channel is None:
            with whole():
                channel = self.transport.open_session(timeout=30)
        return channel


class _SpareChannel(threading.Thread):
    """A session channel opened in the background while a command runs, for the next one.

    Opening a channel takes a round trip; a push runs its commands one after another, so the
    next one finds its channel open. One that is never used goes with the connection. Its
    request is held (ssh.stalls), to leave with the next message the connection sends: made,
    this object has queued it.
    """

    def __init__(self, transport: paramiko.Transport) -> None:
        super().__init__(name="deployer-spare-channel", daemon=True)
        self._transport = transport
        self._channel: paramiko.Channel | None = None
        self._queued = threading.Event()
        self.start()
        self._queued.wait(timeout=QUEUE_WAIT)

    def run(self) -> None:
        try:
            with (
                contextlib.suppress(paramiko.SSHException, OSError, EOFError),
                holding(self._transport, on_held=self._queued.set),
            ):
                self._channel = self._transport.open_session(timeout=30)
        finally:
            self._queued.set()

    def take(self) -> paramiko.Channel | None:
        """The channel once its open is answered; None if it failed (the caller opens anew)."""
        self.join()
        channel = self._channel
        return None if channel is None or channel.closed else channel


def _exec_without_reply(channel: paramiko.Channel, command: str) -> None:
    """Start a command without waiting for the server's reply, like OpenSSH's client does.

    paramiko's exec_command waits one round trip for the reply; stdin may follow the request at
    once (the server buffers it). A refused command closes the channel, which _collect reports.
    """
    _request_without_reply(channel, "exec", command)


def _request_without_reply(channel: paramiko.Channel, kind: str, value: str) -> None:
    """Send a channel request ("exec", "signal") that asks for no reply."""
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string(kind)
    message.add_boolean(False)
    message.add_string(value)
    with whole():
        channel.transport._send_user_message(message)


class _Uploader(threading.Thread):
    def __init__(self, channel: paramiko.Channel, upload: Callable[[BinaryIO], object]) -> None:
        super().__init__(name="deployer-upload", daemon=True)
        self.channel = channel
        self.upload = upload
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # a small stdin leaves whole with its EOF (a long one streams: see HOLD_LIMIT)
            with holding(self.channel.get_transport()):
                self.upload(_ChannelWriter(self.channel))  # type: ignore[arg-type]
            self.channel.shutdown_write()
        except BaseException as exc:  # reported by the caller, which owns the channel
            self.error = exc
            self.channel.close()


def _start_upload(channel: paramiko.Channel, upload: Callable[[BinaryIO], object]) -> _Uploader:
    uploader = _Uploader(channel, upload)
    uploader.start()
    return uploader


def _collect(
    channel: paramiko.Channel, output: Output, timeout: float | None, label: str
) -> RunResult:
    """Read stdout/stderr into output until the command exits."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if deadline is not None and time.monotonic() > deadline:
            _stop(channel)
            raise CommandTimeout(f"command on {label} did not finish within {timeout:.0f} s")
        select.select([channel], [], [], 0.2)  # an interrupt lands here, between packets
        with whole():
            progressed, done = _drain(channel, output)
        if done:
            break
        if channel.closed and not progressed and not channel.exit_status_ready():
            raise ConnectError(f"the connection to {label} closed while a command was running")
    with whole():
        status = channel.recv_exit_status()
    if status == -1 and _lost(channel):
        # paramiko reports a channel that died with the connection as exit status -1
        raise ConnectError(f"lost the connection to {label} while a command was running")
    return output.result(status)


def _drain(channel: paramiko.Channel, output: Output) -> tuple[bool, bool]:
    """Read what has arrived into output: (anything read, the command exited and all read)."""
    readers = {"stdout": channel.recv, "stderr": channel.recv_stderr}
    ready = {"stdout": channel.recv_ready, "stderr": channel.recv_stderr_ready}
    progressed = False
    for name in ("stdout", "stderr"):
        while ready[name]():
            chunk = readers[name](READ_CHUNK)
            if not chunk:
                break
            progressed = True
            output.add(name, chunk)
    done = (
        channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready()
    )
    return progressed, done


def _lost(channel: paramiko.Channel) -> bool:
    """No exit status came: the connection died, or the server says the command was killed."""
    if not channel.eof_received:  # a killed command's output still ends before the close
        return True
    settle = time.monotonic() + 0.5  # the transport marks itself dead just after its channels
    while time.monotonic() < settle:
        if not channel.get_transport().is_active():
            return True
        time.sleep(0.05)
    return False


def _stop(channel: paramiko.Channel) -> None:
    """Ask the server to stop a command that ran too long: TERM, then KILL 5 s later.

    OpenSSH answers a "signal" request with killpg() on the session's process group, so the
    command's children go too (it refuses for forced commands; then only closing is left).
    """
    for name in ("TERM", "KILL"):
        try:
            _request_without_reply(channel, "signal", name)
        except (paramiko.SSHException, OSError, EOFError):
            return  # the connection is gone: nothing more to ask
        wait = time.monotonic() + KILL_AFTER
        while time.monotonic() < wait and not channel.exit_status_ready():
            time.sleep(0.1)
        if channel.exit_status_ready():
            return
