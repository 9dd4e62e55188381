"""deployer tunnel: keep ``ssh -R`` forwards on a jump host up, verified end to end.

The engine is a supervised OpenSSH ``ssh`` (measured against paramiko forwarding: OpenSSH moves
data as fast as a plain ``ssh -R``, paramiko did not; see docs/tunnel.md). deployer adds what a
bare ``ssh``/autossh lacks for a keeper that must never sit broken:

- the jump host's key is checked with deployer's own policy (SSH_KNOWN_HOSTS, --known-hosts,
  pins), then pinned for ssh in a private known_hosts file with StrictHostKeyChecking=yes; the
  private key is served from memory by deployer's agent and never touches disk;
- "up" means a connection through the jump host reached the target (its SSH banner, or for a
  silent service an accepted connection), made over the tunnel's own SSH connection through a
  ``-L`` Unix socket, so a refused forward, a dead flow and a broken target leg all show;
- ExitOnForwardFailure makes a refused forward a failure; ServerAlive finds a dead flow within
  seconds; retries use bounded, jittered backoff short enough to be back soon after the jump
  host reaps a stale session, and --reclaim removes our own stale session at once.

The pure parts live in their own modules: forwards (-R parsing), tunnel_policy (states, failure
classification, backoff), authorized_keys (the jump host's lines and forced command), tunnel_check
(end-to-end checks), tunnel_status (status file, /healthz), autossh_env (autossh's variables).
This module holds the settings, the ssh command lines and the Keeper that supervises ssh.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from deployer.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ExitCode,
    HostKeyError,
)
from deployer.ssh.authorized_keys import (
    HOLD_COMMAND,
    HOLDING_LINE,
    NOTHING_LINE,
    RECLAIM_COMMAND,
    RECLAIMED_PREFIX,
    RECORDED_PREFIX,
)
from deployer.ssh.forwards import Forward, bracket
from deployer.ssh.proxy import ProxySpec, open_through, proxy_command_line
from deployer.ssh.route import Endpoint
from deployer.tunnel.check import QUIET_WINDOW, Expectation, check_through, read_expectation
from deployer.tunnel.policy import (
    DEFAULT_MAX_BACKOFF,
    FORWARD_REFUSED,
    STABLE_SECONDS,
    Backoff,
    Failure,
    FailureKind,
    Plan,
    State,
    classify_ssh_exit,
    plan_after_failure,
)
from deployer.tunnel.status import StatusBoard

if TYPE_CHECKING:
    import paramiko

    from deployer.ssh.hostkeys import HostKeyPolicy

# ---------------------------------------------------------------------------- settings

DEFAULT_ALIVE_INTERVAL = 2  # ServerAliveInterval: a dead flow is found after 3 silent intervals
DEFAULT_ALIVE_COUNT = 2
DEFAULT_CHECK_INTERVAL = 30.0  # end-to-end check of a running tunnel
RECLAIM_COOLDOWN = 10.0
SSH_ERROR = 255  # ssh's own failures (connect, auth, host key); a remote command's status otherwise
GUARD_BANNER_WAIT = 2.0  # after logging in: a live holder's target answers well within this


@dataclass(frozen=True)
class TunnelSettings:
    """Everything the keeper needs besides credentials and host keys."""

    jump: Endpoint
    forwards: tuple[Forward, ...]
    connect_timeout: float = 10.0
    alive_interval: int = DEFAULT_ALIVE_INTERVAL
    alive_count: int = DEFAULT_ALIVE_COUNT
    check_interval: float = DEFAULT_CHECK_INTERVAL
    check_timeout: float = 5.0
    max_backoff: float = DEFAULT_MAX_BACKOFF
    reclaim: bool = False
    status_file: Path | None = None
    healthz: tuple[str, int] | None = None
    ssh_binary: str = "ssh"
    proxy: ProxySpec | None = None  # how the jump host is reached, when not directly

    def __post_init__(self) -> None:
        if not self.forwards:
            raise ConfigError(
                "no forward given — pass -R PORT:HOST:HOSTPORT, e.g. -R 22022:localhost:22"
            )
        if self.alive_interval < 1 or self.alive_count < 1:
            raise ConfigError("--alive-interval and --alive-count must be at least 1")
        if self.max_backoff < 1:
            raise ConfigError("--max-backoff must be at least 1 second")
        if self.check_interval < 0 or self.check_timeout <= 0:
            raise ConfigError("--check-interval must be >= 0 (0: off) and --check-timeout > 0")

    @property
    def dead_after(self) -> int:
        """Seconds of silence after which ssh gives a connection up (ServerAlive)."""
        return self.alive_interval * (self.alive_count + 1)


# ---------------------------------------------------------------------------- ssh command lines


HOST_KEY_ALIAS = "deployer-jump"
_ALGORITHMS = {"ssh-rsa": "rsa-sha2-512,rsa-sha2-256"}


def host_key_algorithms(key_type: str) -> str:
    """HostKeyAlgorithms that make ssh ask for exactly the verified key's type."""
    return _ALGORITHMS.get(key_type, key_type)


def pinned_known_hosts(key_type: str, key_blob: bytes) -> str:
    """A known_hosts file holding only the verified jump host key, under HOST_KEY_ALIAS."""
    return f"{HOST_KEY_ALIAS} {key_type} {base64.b64encode(key_blob).decode()}\n"


@dataclass(frozen=True)
class RuntimePaths:
    """The keeper's private files: pinned known_hosts, check sockets, the agent's socket."""

    directory: Path
    agent_socket: str

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file ssh verifies the jump host against."""
        return self.directory / "known_hosts"

    def check_socket(self, index: int) -> Path:
        """The -L Unix socket through which forward number index is checked."""
        return self.directory / f"check-{index}.sock"


def common_ssh_options(settings: TunnelSettings, paths: RuntimePaths, key_type: str) -> list[str]:
    """Options for every ssh the keeper runs: no config files, only the pinned key, agent only."""
    jump = settings.jump
    return [
        settings.ssh_binary,
        "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "IdentityFile=none",
        "-o", f"IdentityAgent={paths.agent_socket}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={paths.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"HostKeyAlias={HOST_KEY_ALIAS}",
        "-o", f"HostKeyAlgorithms={host_key_algorithms(key_type)}",
        "-o", "UpdateHostKeys=no",
        "-o", "CheckHostIP=no",
        "-o", f"ConnectTimeout={max(1, round(settings.connect_timeout))}",
        "-o", "ConnectionAttempts=1",
        "-o", "TCPKeepAlive=yes",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "PermitLocalCommand=no",
        # a proxy is run by `deployer proxy-connect` (same code as push) as ssh's ProxyCommand
        *(["-o", f"ProxyCommand={proxy_command_line(settings.proxy, sys.executable)}"]
          if settings.proxy else []),
        "-l", jump.user,
        "-p", str(jump.port),
    ]  # fmt: skip


def tunnel_argv(
    settings: TunnelSettings, paths: RuntimePaths, key_type: str, *, hold: bool
) -> list[str]:
    """The supervised ssh: the -R forwards, a -L check socket per forward, keepalives, -v for events."""
    argv = common_ssh_options(settings, paths, key_type)
    argv += [
        "-v",
        "-T",
        "-o", "ExitOnForwardFailure=yes",
        "-o", f"ServerAliveInterval={settings.alive_interval}",
        "-o", f"ServerAliveCountMax={settings.alive_count}",
        "-o", "StreamLocalBindUnlink=yes",
    ]  # fmt: skip
    for forward in settings.forwards:
        argv += ["-R", forward.spec]
    for index, forward in enumerate(settings.forwards):
        argv += ["-L", f"{paths.check_socket(index)}:{bracket(forward.probe_host)}:{forward.port}"]
    if hold:
        return [*argv, settings.jump.host, HOLD_COMMAND]
    return [*argv, "-N", settings.jump.host]


def guard_argv(
    settings: TunnelSettings, paths: RuntimePaths, key_type: str, forward: Forward
) -> list[str]:
    """A separate ssh that connects to a forward's port on the jump host (is its holder alive?)."""
    argv = common_ssh_options(settings, paths, key_type)
    return [
        *argv,
        "-o",
        "LogLevel=VERBOSE",  # "Authenticated to": from then on a live holder answers at once
        "-W",
        f"{forward.probe_host}:{forward.port}",
        settings.jump.host,
    ]


def reclaim_argv(
    settings: TunnelSettings, paths: RuntimePaths, key_type: str, holder: tuple[int, int] | None
) -> list[str]:
    """A separate ssh that runs the forced command's reclaim (of exactly holder, when known)."""
    argv = common_ssh_options(settings, paths, key_type)
    command = RECLAIM_COMMAND + ("" if holder is None else f" {holder[0]} {holder[1]}")
    return [*argv, "-o", "LogLevel=ERROR", "-T", settings.jump.host, command]


# ---------------------------------------------------------------------------- the keeper


class _Stop(Exception):
    """SIGTERM/SIGINT arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class _Session:
    """One running ssh and what its output told us so far."""

    gen: int
    process: subprocess.Popen[bytes]
    hold: bool
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    granted: set[int] = field(default_factory=set)
    all_granted: bool = False
    authenticated: bool = False
    holding: bool = False
    recorded: tuple[int, int] | None = None  # our sshd session on the jump host (pid, start time)
    refused: bool = False
    exit_code: int | None = None

    @property
    def exited(self) -> bool:
        """ssh has exited and its output was read to the end."""
        return self.exit_code is not None


_SUCCESS = re.compile(r"remote forward success for: listen (?:.*:)?(\d+),")
_ALL_GRANTED = re.compile(
    r"forwarding_success: all expected forwarding replies received|All remote forwarding requests processed"
)
Event = tuple[str, int, Any]


def _set_parent_death_signal() -> Callable[[], None] | None:
    """On Linux, make ssh get SIGTERM if the keeper dies without cleaning up (no orphan tunnels)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


@contextlib.contextmanager
def _private_directory() -> Iterator[Path]:
    """A 0700 directory short enough for Unix socket paths (108 bytes)."""
    base = None if len(tempfile.gettempdir()) < 60 else "/tmp"
    path = Path(tempfile.mkdtemp(prefix="deployer-tunnel-", dir=base))
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Keeper:
    """Runs the tunnel until SIGTERM/SIGINT: connect, verify, watch, back off, reconnect."""

    def __init__(
        self,
        settings: TunnelSettings,
        keys: Sequence[paramiko.PKey],
        host_keys: HostKeyPolicy,
        log: Callable[[str], None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._keys = list(keys)
        self._host_keys = host_keys
        self._log = log
        self.board = StatusBoard(settings, log)
        self.backoff = Backoff(cap=settings.max_backoff, rng=rng or random.Random())
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._gen = 0
        self._session: _Session | None = None
        self._helpers: set[subprocess.Popen[bytes]] = set()
        self._pinned: tuple[str, bytes] | None = None
        self._paths: RuntimePaths | None = None
        self._expect: dict[int, Expectation] = {}
        self._reclaim_ok = settings.reclaim
        self._last_reclaim = 0.0
        self._own_holder: tuple[int, int] | None = None  # our last session that held the ports
        self._ever_up = False
        self._up_since: float | None = None
        self._preexec = _set_parent_death_signal()

    # -- running

    def run(self) -> int:
        """Keep the tunnel up until a signal; return the exit status (0 after SIGTERM)."""
        from deployer.ssh.agent import MemoryAgent

        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            with (
                MemoryAgent(self._keys, comment="deployer-tunnel") as agent,
                _private_directory() as directory,
            ):
                self._paths = RuntimePaths(directory, agent.socket_path)
                self.board.serve()
                self.board.write()
                return self._loop()
        finally:
            self._kill_everything()
            self.board.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._events.put(("stop", 0, signum))  # SimpleQueue.put is safe in a signal handler

    def _loop(self) -> int:
        forwards = ", ".join(f.spec for f in self.settings.forwards)
        self._log(
            f"tunnel: keeping {forwards} on {self.settings.jump} (dead flow found within"
            f" {self.settings.dead_after} s, retries at most every {self.settings.max_backoff:g} s"
            + (", reclaim on" if self.settings.reclaim else "")
            + ")"
        )
        try:
            while True:
                started = time.monotonic()
                failure = self._attempt()
                if (
                    self._up_since is not None
                    and time.monotonic() - self._up_since >= STABLE_SECONDS
                ):
                    self.backoff.reset()
                self._up_since = None
                self.board.update(last_error=failure.message, last_error_at=time.time())
                plan = plan_after_failure(
                    failure,
                    self.backoff,
                    reclaim_available=self._reclaim_ok
                    and time.monotonic() - self._last_reclaim > RECLAIM_COOLDOWN,
                    ever_up=self._ever_up,
                    holder_known=self._own_holder is not None,
                    elapsed=time.monotonic() - started,
                )
                if failure.kind is FailureKind.SETUP:
                    self._reclaim_ok = False
                if plan.action == "exit":
                    self._shutdown(failure.message)
                    error = HostKeyError if failure.kind is FailureKind.HOST_KEY else AuthError
                    raise error(failure.message)
                if plan.action == "reclaim":
                    self.board.set(State.RECLAIMING, failure.message)
                    if self._reclaim(refused=failure.kind is FailureKind.REFUSED):
                        continue
                    plan = Plan("retry", self.backoff.next_delay(refused=True))
                self.board.update(next_attempt_at=time.time() + plan.delay)
                self.board.set(
                    State.BACKOFF, f"{failure.message}; next attempt in {plan.delay:.1f} s"
                )
                self._sleep(plan.delay)
        except _Stop as stop:
            name = signal.Signals(stop.signum).name
            self._shutdown(f"{name} received")
            return int(ExitCode.INTERRUPTED) if stop.signum == signal.SIGINT else 0

    def _shutdown(self, reason: str) -> None:
        self.board.set(State.STOPPING, reason)
        self._kill_everything()
        self.board.set(State.STOPPED, "ssh stopped" if self._session is not None else "")

    # -- events

    def _next_event(self, timeout: float | None) -> Event | None:
        try:
            event = self._events.get(timeout=None if timeout is None else max(timeout, 0.0))
        except queue.Empty:
            return None
        if event[0] == "stop":
            raise _Stop(int(event[2]))
        self._apply(event)
        return event

    def _apply(self, event: Event) -> None:
        """Fold ssh's output into the session it belongs to (events of old sessions are dropped)."""
        kind, gen, payload = event
        session = self._session
        if session is None or gen != session.gen:
            return
        if kind == "exit":
            session.exit_code = int(payload)
        elif kind == "stderr":
            line = str(payload)
            session.lines.append(line)
            if line.startswith("Authenticated to "):
                session.authenticated = True
            elif match := _SUCCESS.search(line):
                session.granted.add(int(match.group(1)))
            elif _ALL_GRANTED.search(line):
                session.all_granted = True
            elif FORWARD_REFUSED.search(line):
                session.refused = True
        elif kind == "stdout":
            line = str(payload).strip()
            if line == HOLDING_LINE:
                session.holding = True
            elif line.startswith(RECORDED_PREFIX):
                fields = line.removeprefix(RECORDED_PREFIX).split()
                if len(fields) == 2 and all(f.isdigit() for f in fields):
                    session.recorded = (int(fields[0]), int(fields[1]))
                    self._own_holder = session.recorded

    def _wait(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Handle events until done() or the timeout; True if done()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._next_event(remaining)
        return True

    def _sleep(self, seconds: float) -> None:
        self._wait(lambda: False, seconds)

    def _call(self, function: Callable[[], Any], timeout: float) -> Any:
        """Run function in a thread while still handling events and signals; re-raise its errors."""
        token = object()
        result: list[Any] = []

        def work() -> None:
            try:
                result.append((True, function()))
            except BaseException as exc:  # handed to the waiting thread
                result.append((False, exc))
            self._events.put(("done", 0, token))

        threading.Thread(target=work, name="deployer-tunnel-work", daemon=True).start()
        if not self._wait(lambda: bool(result), timeout):
            raise TimeoutError(f"no result within {timeout:g} s")
        ok, value = result[0]
        if not ok:
            raise value
        return value

    # -- one attempt

    def _attempt(self) -> Failure:
        status = self.board.status
        self.board.update(attempt=status.attempt + 1)
        self.board.set(State.CONNECTING, f"attempt {status.attempt}")
        if self._pinned is None:
            failure = self._preflight()
            if failure is not None:
                return failure
        session = self._start()
        failure = self._establish(session)
        if failure is None:
            failure = self._verify(session)
        if failure is None:
            failure = self._supervise(session)
        self._end(session)
        if failure.kind is FailureKind.HOST_KEY:
            self._pinned = None
        return failure

    def _preflight(self) -> Failure | None:
        """Verify the jump host's key with deployer's policy and the key with a real login (paramiko)."""
        jump = self.settings.jump
        try:
            key_type, blob, notice = self._call(
                lambda: verify_jump_host(
                    jump,
                    self._keys,
                    self._host_keys,
                    self.settings.connect_timeout,
                    self.settings.proxy,
                ),
                self.settings.connect_timeout * 3 + 5,
            )
        except HostKeyError as exc:
            return Failure(FailureKind.HOST_KEY, str(exc))
        except AuthError as exc:
            return Failure(FailureKind.AUTH, str(exc))
        except (ConnectError, TimeoutError) as exc:
            return Failure(FailureKind.UNREACHABLE, str(exc))
        if notice:
            self._log(f"tunnel: {notice}")
        from deployer.ssh.hostkeys import fingerprint

        self._log(
            f"tunnel: jump host key verified ({key_type} {fingerprint(blob)}), pinned for ssh"
        )
        assert self._paths is not None
        self._paths.known_hosts.write_text(pinned_known_hosts(key_type, blob))
        self._pinned = (key_type, blob)
        return None

    def _start(self) -> _Session:
        assert self._paths is not None and self._pinned is not None
        self._gen += 1
        hold = self._reclaim_ok
        argv = tunnel_argv(self.settings, self._paths, self._pinned[0], hold=hold)
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if hold else subprocess.DEVNULL,
            stdout=subprocess.PIPE if hold else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._ssh_env(),
            start_new_session=True,  # a Ctrl-C in a terminal reaches us, and we stop ssh in order
            preexec_fn=self._preexec,  # only a prctl; see _set_parent_death_signal
        )
        session = _Session(self._gen, process, hold)
        self._session = session
        readers = [self._reader(process.stderr, "stderr", session.gen)]
        if hold:
            readers.append(self._reader(process.stdout, "stdout", session.gen))

        def wait_exit() -> None:
            code = process.wait()
            for reader in readers:
                reader.join(timeout=5)
            self._events.put(("exit", session.gen, code))

        threading.Thread(target=wait_exit, name="deployer-tunnel-wait", daemon=True).start()
        return session

    def _reader(self, stream: Any, kind: str, gen: int) -> threading.Thread:
        def read() -> None:
            for raw in iter(stream.readline, b""):
                self._events.put((kind, gen, raw.decode("utf-8", "replace").rstrip("\r\n")))

        thread = threading.Thread(target=read, name=f"deployer-tunnel-{kind}", daemon=True)
        thread.start()
        return thread

    def _ssh_env(self) -> dict[str, str]:
        assert self._paths is not None
        env = {k: v for k, v in os.environ.items() if k != "SSH_AGENT_PID"}
        env["SSH_AUTH_SOCK"] = self._paths.agent_socket
        return env

    def _failure(self, session: _Session) -> Failure:
        return classify_ssh_exit(
            list(session.lines),
            jump=self.settings.jump,
            authenticated=session.authenticated,
            granted=session.all_granted,
            hold=session.hold,
            holding=session.holding,
            settings=self.settings,
        )

    def _establish(self, session: _Session) -> Failure | None:
        """Wait until the jump host granted every forward (and, with --reclaim, the hold runs)."""
        ports = {f.port for f in self.settings.forwards}

        def ready() -> bool:
            granted = session.all_granted or ports <= session.granted
            return (
                session.exited
                or session.refused
                or (granted and (session.holding or not session.hold))
            )

        timeout = self.settings.connect_timeout * 2 + 10
        if not self._wait(ready, timeout):
            self._end(session)
            if session.hold and session.authenticated and not session.holding:
                return self._failure(session)
            return Failure(
                FailureKind.UNREACHABLE,
                f"the jump host {self.settings.jump} did not grant the forwards within {timeout:g} s",
            )
        if session.exited or session.refused:
            self._end(session)
            return self._failure(session)
        return None

    def _expectation(self, index: int, forward: Forward) -> Expectation | None:
        """What the target sends, read directly from here; None if the target is down."""
        try:
            expect = read_expectation(forward.host, forward.host_port, self.settings.check_timeout)
        except OSError:
            return None
        self._expect[index] = expect
        return expect

    def _check(self, session: _Session, *, refresh: bool) -> tuple[str | None, list[str]]:
        """Check every forward end to end; (what failed through the tunnel, targets down here)."""
        assert self._paths is not None
        down: list[str] = []
        for index, forward in enumerate(self.settings.forwards):
            expect = self._expect.get(index)
            if expect is None or refresh:
                expect = self._expectation(index, forward)
            if expect is None:
                down.append(f"{bracket(forward.host)}:{forward.host_port}")
                continue
            problem = check_through(
                self._paths.check_socket(index), expect, self.settings.check_timeout
            )
            if problem is not None and not refresh:
                # the target may have changed (restart, upgrade): look again before blaming the tunnel
                fresh = self._expectation(index, forward)
                if fresh is None:
                    down.append(f"{bracket(forward.host)}:{forward.host_port}")
                    continue
                problem = check_through(
                    self._paths.check_socket(index), fresh, self.settings.check_timeout
                )
            if problem is not None:
                return f"-R {forward.spec}: {problem}", down
        return None, down

    def _run_check(
        self, session: _Session, *, refresh: bool
    ) -> tuple[str | None, list[str]] | None:
        """_check in a worker; None when ssh exited meanwhile."""
        budget = (
            (self.settings.check_timeout * 2 + QUIET_WINDOW + 2) * len(self.settings.forwards) * 2
        )
        try:
            result: tuple[str | None, list[str]] = self._call(
                lambda: self._check(session, refresh=refresh), budget
            )
        except TimeoutError:
            return ("the end-to-end check did not finish", [])
        return None if session.exited else result

    def _verify(self, session: _Session) -> Failure | None:
        """Forwards granted: prove them end to end before calling the tunnel up."""
        granted = ", ".join(f.permitlisten() for f in self.settings.forwards)
        self.board.set(State.VERIFYING, f"the jump host granted {granted}")
        problem: str | None = "not checked"
        for attempt in range(3):
            result = self._run_check(session, refresh=attempt == 0)
            if result is None:
                return self._failure(session)
            problem, down = result
            if problem is None:
                self._mark_up(session, down)
                return None
            self._wait(lambda: session.exited, 1.0)
            if session.exited:
                return self._failure(session)
        self._end(session)
        return Failure(FailureKind.BROKEN, f"forward granted but not working end to end: {problem}")

    def _mark_up(self, session: _Session, down: list[str]) -> None:
        first = not self._ever_up or self.board.status.state not in (State.UP, State.DEGRADED)
        if first:
            self.board.update(connects=self.board.status.connects + 1)
            self._up_since = time.monotonic()
            if session.hold and session.process.stdin is not None:
                with contextlib.suppress(OSError):
                    session.process.stdin.write(b"up\n")  # the jump host records the session
                    session.process.stdin.flush()
        self._ever_up = True
        self.board.update(verified_at=time.time())
        if down:
            reason = (
                f"forwards up, but {', '.join(down)} does not answer here (is the service running?)"
            )
            if self.board.status.state is not State.DEGRADED:
                self.board.set(State.DEGRADED, reason)
            return
        if self.board.status.state is not State.UP:
            what = "; ".join(
                f"{f.permitlisten()} -> {bracket(f.host)}:{f.host_port} ({self._expect[i].describe()})"
                for i, f in enumerate(self.settings.forwards)
                if i in self._expect
            )
            self.board.set(State.UP, f"checked end to end through the jump host: {what}")

    def _supervise(self, session: _Session) -> Failure:
        """Watch a verified tunnel: ssh's exit, and periodic end-to-end checks."""
        interval = self.settings.check_interval or None
        failures = 0
        while True:
            self._wait(lambda: session.exited, interval)
            if session.exited:
                return self._failure(session)
            result = self._run_check(session, refresh=False)
            if result is None:
                return self._failure(session)
            problem, down = result
            if problem is None:
                failures = 0
                self._mark_up(session, down)
                continue
            failures += 1
            self._log(f"tunnel: end-to-end check failed ({failures}/2): {problem}")
            if failures >= 2:
                self._end(session)
                return Failure(
                    FailureKind.BROKEN, f"the tunnel stopped working end to end: {problem}"
                )

    def _end(self, session: _Session) -> None:
        """Stop ssh (if still running) and wait for its exit to be processed."""
        _terminate(session.process)
        try:
            self._wait(lambda: session.exited, 5.0)
        except _Stop as stop:
            self._events.put(("stop", 0, stop.signum))  # handled by the caller's next wait

    # -- reclaim

    def _reclaim(self, *, refused: bool) -> bool:
        """Kill our own stale session on the jump host; True: connect again at once.

        If our last session recorded itself (pid, start time) the jump host kills exactly that
        one: after a refused -R, and right after a dead flow, before the next -R runs into it.
        Otherwise (e.g. after a keeper restart) the recorded holder of a refused port is killed
        only if a connection to the port gets no answer from the target: a live holder is left
        alone. When the jump host cannot be asked (unreachable), reclaim stays on for next time.
        """
        assert self._paths is not None and self._pinned is not None
        self._last_reclaim = time.monotonic()
        if self._own_holder is not None:
            holder = self._own_holder
            asked, output = self._reclaim_call(holder)
            if not asked:
                return False
            self._own_holder = None
            if RECLAIMED_PREFIX in output:
                self._log(
                    f"tunnel: reclaimed the port from our stale session (sshd pid {holder[0]} on the jump host)"
                )
                return True
            if NOTHING_LINE not in output:
                return self._reclaim_unavailable(output)
        if not refused:
            return True  # after a dead flow: its session is gone already, the port is free
        if not self._holder_silent():
            return False
        asked, output = self._reclaim_call(None)
        if not asked:
            return False
        if RECLAIMED_PREFIX in output:
            pid = output.split(RECLAIMED_PREFIX, 1)[1].split()[:1]
            self._log(
                f"tunnel: reclaimed the port from a stale session (sshd pid {''.join(pid)} on the jump host)"
            )
            return True
        if NOTHING_LINE in output:
            self._log(
                "tunnel: no recorded session of ours holds the port — it is held by another user or"
                " program, or by a session from before the keeper recorded it"
            )
            return False
        return self._reclaim_unavailable(output)

    def _reclaim_call(self, holder: tuple[int, int] | None) -> tuple[bool, str]:
        """Run the forced command's reclaim; (whether the jump host answered, what it said)."""
        assert self._paths is not None and self._pinned is not None
        argv = reclaim_argv(self.settings, self._paths, self._pinned[0], holder)
        try:
            code, output = self._call(
                lambda: self._helper_output(argv), self.settings.connect_timeout + 15
            )
        except TimeoutError:
            code, output = None, "timed out"
        if code is None or code == SSH_ERROR:
            said = output.strip().splitlines()[-1:] or ["no answer"]
            self._log(f"tunnel: could not ask the jump host to reclaim the port: {said[0][:120]}")
            return False, output
        return True, str(output)

    def _holder_silent(self) -> bool:
        """Guard for an unknown holder: False if the port answers like our target (a live tunnel)."""
        assert self._paths is not None and self._pinned is not None
        for index, forward in enumerate(self.settings.forwards):
            expect = self._expect.get(index) or self._expectation(index, forward)
            if expect is None or expect.banner is None:
                continue  # nothing to compare with: cannot tell a live holder from a stale one
            argv = guard_argv(self.settings, self._paths, self._pinned[0], forward)
            try:
                answer = self._call(
                    lambda argv=argv: self._helper_first_line(argv),  # type: ignore[misc]
                    self.settings.connect_timeout + 10,
                )
            except TimeoutError:
                answer = None
            if answer == expect.banner:
                self._log(
                    f"tunnel: {forward.permitlisten()} is held by a tunnel that works (another keeper"
                    " with this key?) — not reclaiming it"
                )
                return False
        return True

    def _reclaim_unavailable(self, output: str) -> bool:
        self._reclaim_ok = False
        said = output.strip().splitlines()[-1:] or ["nothing"]
        self._log(
            "tunnel: reclaim is not set up on the jump host (it said: "
            f"{said[0][:120]}) — install the tunnel key line from `deployer authorized-keys --reclaim`;"
            " continuing without reclaim"
        )
        return False

    def _spawn_helper(self, argv: list[str], stdin: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._ssh_env(),
            start_new_session=True,
            preexec_fn=self._preexec,
        )
        self._helpers.add(process)
        return process

    def _helper_first_line(self, argv: list[str]) -> bytes | None:
        """Run ssh -W; the first line that comes back, or None (nothing soon after logging in)."""
        process = self._spawn_helper(argv, subprocess.PIPE)
        try:
            assert process.stdout is not None and process.stderr is not None
            deadline = time.monotonic() + self.settings.connect_timeout + GUARD_BANNER_WAIT
            streams = {process.stdout.fileno(): b"", process.stderr.fileno(): b""}
            out = process.stdout.fileno()
            while b"\n" not in streams[out]:
                remaining = deadline - time.monotonic()
                ready, _, _ = select.select(list(streams), [], [], max(0.0, remaining))
                if not ready:
                    return None
                for fd in ready:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        return None
                    streams[fd] += chunk
                    if fd != out and b"Authenticated to " in streams[fd]:
                        deadline = min(deadline, time.monotonic() + GUARD_BANNER_WAIT)
                        streams[fd] = b""
            return streams[out].split(b"\n")[0].rstrip(b"\r")
        finally:
            _terminate(process)
            self._helpers.discard(process)

    def _helper_output(self, argv: list[str]) -> tuple[int | None, str]:
        """Run a helper ssh to its end; (exit status or None on timeout, stdout and stderr)."""
        process = self._spawn_helper(argv, subprocess.DEVNULL)
        try:
            out, err = process.communicate(timeout=self.settings.connect_timeout + 10)
            code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            out, err, code = b"", b"timed out", None
        finally:
            _terminate(process)
            self._helpers.discard(process)
        return code, (out + b"\n" + err).decode("utf-8", "replace")

    def _kill_everything(self) -> None:
        if self._session is not None:
            _terminate(self._session.process)
        for process in list(self._helpers):
            _terminate(process)


def _terminate(process: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM (ssh closes the connection, the jump host frees the port), SIGKILL after grace."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=grace)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


# ---------------------------------------------------------------------------- the jump host's key


def verify_jump_host(
    jump: Endpoint,
    keys: Sequence[paramiko.PKey],
    policy: HostKeyPolicy,
    timeout: float,
    proxy: ProxySpec | None = None,
) -> tuple[str, bytes, str | None]:
    """Handshake with the jump host, check its key with the policy, log in; (type, blob, notice)."""
    import paramiko

    from deployer.ssh.hostkeys import fingerprint

    what = f"jump host {jump}"
    try:
        sock = (
            open_through(proxy, jump.host, jump.port, user=jump.user, timeout=timeout, hop=what)
            if proxy is not None
            else socket.create_connection((jump.host, jump.port), timeout=timeout)
        )
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve {jump.host} ({what}): {exc.strerror}") from exc
    except OSError as exc:
        raise ConnectError(f"cannot reach {what} on {jump.address}: {exc.strerror or exc}") from exc
    if proxy is None:  # open_through tunes its own sockets (a ProxyCommand's is not TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        known = policy.algorithms_for(jump.host, jump.port)
        if known:
            security = transport.get_security_options()
            offered = list(security.key_types)
            security.key_types = [a for a in known if a in offered] + [
                a for a in offered if a not in known
            ]
        try:
            transport.start_client(timeout=timeout)
            key = transport.get_remote_server_key()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(
                f"{what} closed the connection during the SSH handshake: {exc}"
            ) from exc
        key_type = "ssh-rsa" if key.get_name().startswith("rsa-sha2-") else key.get_name()
        notice = policy.check(
            what,
            jump.host,
            jump.port,
            key.get_name(),
            key.asbytes(),
            f"deployer keyscan --to {jump}",
        )
        for candidate in keys:
            try:
                transport.auth_publickey(jump.user, candidate)
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ConnectError(
                    f"{what} dropped the connection while authenticating: {exc}"
                ) from exc
            if transport.is_authenticated():
                return key_type, key.asbytes(), notice
        offered_keys = ", ".join(fingerprint(k.asbytes()) for k in keys) or "none"
        raise AuthError(
            f"{what} refused the key ({offered_keys}) for user '{jump.user}' — add it to"
            f" ~{jump.user}/.ssh/authorized_keys there (`deployer authorized-keys` prints the line)"
        )
    finally:
        transport.close()


def run_keeper(
    settings: TunnelSettings,
    keys: Sequence[paramiko.PKey],
    host_keys: HostKeyPolicy,
    log: Callable[[str], None],
) -> int:
    """Check the settings against this machine, then keep the tunnel until a signal."""
    if shutil.which(settings.ssh_binary) is None:
        raise ConfigError(
            f"OpenSSH's ssh ({settings.ssh_binary}) is not installed — apt-get install -y openssh-client"
        )
    if not keys:
        raise ConfigError("no key for the tunnel — set SSH_PRIVATE_KEY or pass --key-file")
    if settings.status_file is not None and not settings.status_file.parent.is_dir():
        raise ConfigError(f"--status-file {settings.status_file}: the directory does not exist")
    return Keeper(settings, keys, host_keys, log).run()
