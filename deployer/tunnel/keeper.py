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

This module holds the Keeper's loop: attempt, verify, supervise, back off. Around it: settings,
ssh_argv (the command lines), session (what ssh's output says), policy (states, failure
classification, backoff: pure), check (end-to-end checks), reclaim, processes (children that
never outlive the keeper), status (status file, /healthz); ssh.forwards and ssh.authorized_keys
hold the -R syntax and the jump host's lines.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from deployer.addresses import bracket
from deployer.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ExitCode,
    HostKeyError,
)
from deployer.ssh.forwards import Forward
from deployer.ssh.openssh.processes import parent_death_signal, private_directory, terminate
from deployer.ssh.proxy import ProxySpec
from deployer.ssh.route import Endpoint
from deployer.tunnel.check import QUIET_WINDOW, Expectation, check_through, read_expectation
from deployer.tunnel.policy import (
    STABLE_SECONDS,
    Backoff,
    Failure,
    FailureKind,
    Plan,
    State,
    classify_ssh_exit,
    plan_after_failure,
)
from deployer.tunnel.processes import Helpers
from deployer.tunnel.reclaim import Reclaimer
from deployer.tunnel.session import Event, Session
from deployer.tunnel.settings import TunnelSettings
from deployer.tunnel.ssh_argv import (
    RuntimePaths,
    pinned_known_hosts,
    ssh_environment,
    tunnel_argv,
)
from deployer.tunnel.status import StatusBoard

if TYPE_CHECKING:
    import paramiko

    from deployer.ssh.hostkeys import HostKeyPolicy

# ---------------------------------------------------------------------------- settings


# ---------------------------------------------------------------------------- ssh command lines


# ---------------------------------------------------------------------------- the keeper


class _Stop(Exception):
    """SIGTERM/SIGINT arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


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
        self._session: Session | None = None
        self._pinned: tuple[str, bytes] | None = None
        self._paths: RuntimePaths | None = None
        self._expect: dict[int, Expectation] = {}
        self._ever_up = False
        self._up_since: float | None = None
        self._preexec = parent_death_signal()
        self.helpers = Helpers(self._ssh_env, self._preexec, settings.connect_timeout)
        self.reclaimer = Reclaimer(settings, self.helpers, self._call, log)

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
                private_directory("deployer-tunnel-") as directory,
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
                    reclaim_available=self.reclaimer.ready(),
                    ever_up=self._ever_up,
                    holder_known=self.reclaimer.own_holder is not None,
                    elapsed=time.monotonic() - started,
                )
                if failure.kind is FailureKind.SETUP:
                    self.reclaimer.available = False
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
        session.take(kind, payload)
        if session.recorded is not None:
            self.reclaimer.own_holder = session.recorded

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

    def _start(self) -> Session:
        assert self._paths is not None and self._pinned is not None
        self._gen += 1
        hold = self.reclaimer.available
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
        session = Session(self._gen, process, hold)
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
        return ssh_environment(os.environ, self._paths, self.settings.proxy)

    def _failure(self, session: Session) -> Failure:
        return classify_ssh_exit(
            list(session.lines),
            jump=self.settings.jump,
            authenticated=session.authenticated,
            granted=session.all_granted,
            hold=session.hold,
            holding=session.holding,
            settings=self.settings,
        )

    def _establish(self, session: Session) -> Failure | None:
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

    def _check(self, session: Session, *, refresh: bool) -> tuple[str | None, list[str]]:
        """Check every forward end to end; (what failed through the tunnel, targets down here)."""
        down: list[str] = []
        for index, forward in enumerate(self.settings.forwards):
            problem, target_down = self._check_forward(index, forward, refresh=refresh)
            if target_down:
                down.append(f"{bracket(forward.host)}:{forward.host_port}")
            elif problem is not None:
                return f"-R {forward.spec}: {problem}", down
        return None, down

    def _check_forward(
        self, index: int, forward: Forward, *, refresh: bool
    ) -> tuple[str | None, bool]:
        """One forward: (what failed through the tunnel, or None; whether its target is down here)."""
        assert self._paths is not None
        expect = None if refresh else self._expect.get(index)
        problem: str | None = None
        # a failed check is repeated with a fresh look at the target: it may have changed
        # (restart, upgrade) since it was last read, and that is not the tunnel's fault
        for attempt in range(1 if refresh else 2):
            if expect is None or attempt:
                expect = self._expectation(index, forward)
            if expect is None:
                return None, True
            problem = check_through(
                self._paths.check_socket(index), expect, self.settings.check_timeout
            )
            if problem is None:
                break
        return problem, False

    def _run_check(self, session: Session, *, refresh: bool) -> tuple[str | None, list[str]] | None:
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

    def _verify(self, session: Session) -> Failure | None:
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

    def _mark_up(self, session: Session, down: list[str]) -> None:
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

    def _supervise(self, session: Session) -> Failure:
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

    def _end(self, session: Session) -> None:
        """Stop ssh (if still running) and wait for its exit to be processed."""
        terminate(session.process)
        try:
            self._wait(lambda: session.exited, 5.0)
        except _Stop as stop:
            self._events.put(("stop", 0, stop.signum))  # handled by the caller's next wait

    def _reclaim(self, *, refused: bool) -> bool:
        """Ask the jump host to free the port from our stale session; True: connect again at once."""
        assert self._paths is not None and self._pinned is not None

        def expectation(index: int, forward: Forward) -> Expectation | None:
            return self._expect.get(index) or self._expectation(index, forward)

        return self.reclaimer.reclaim(
            self._paths, self._pinned[0], refused=refused, expectation=expectation
        )

    def _kill_everything(self) -> None:
        if self._session is not None:
            terminate(self._session.process)
        self.helpers.stop_all()


# ---------------------------------------------------------------------------- the jump host's key


def verify_jump_host(
    jump: Endpoint,
    keys: Sequence[paramiko.PKey],
    policy: HostKeyPolicy,
    timeout: float,
    proxy: ProxySpec | None = None,
) -> tuple[str, bytes, str | None]:
    """Connect to the jump host as push does (policy-checked key, a real login); (type, blob, notice)."""
    from deployer.ssh.connect import ConnectOptions, connect
    from deployer.ssh.credentials import Credentials
    from deployer.ssh.route import Route

    notices: list[str] = []
    options = ConnectOptions(
        credentials=Credentials(tuple(keys)),
        host_keys=policy,
        keyscan_hint=f"deployer keyscan --to {jump}",
        timeout=timeout,
        on_notice=notices.append,
        auth_hint="the tunnel key is in ~{user}/.ssh/authorized_keys there"
        " (`deployer authorized-keys` prints the line)",
    )
    with connect(Route(jump, proxy=proxy), options) as connection:
        key_type, blob = connection.host_key
    return key_type, blob, notices[0] if notices else None


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
