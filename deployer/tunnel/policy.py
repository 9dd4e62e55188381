"""The keeper's decisions: states, why an attempt failed (from ssh's output), backoff, what next."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal

from deployer.errors import ExitCode

if TYPE_CHECKING:
    from deployer.ssh.route import Endpoint
    from deployer.tunnel.settings import TunnelSettings


DEFAULT_MAX_BACKOFF = 8.0  # < 10 s: back soon after the jump host frees the port
STABLE_SECONDS = 30.0  # up this long: the next failure starts the backoff from the beginning
SLOW_BACKOFF = 60.0  # authentication refused after having worked: do not hammer the jump host
REFUSED_BACKOFF = 4.0  # the jump host answers but a stale session holds the port: poll it closely


class State(str, Enum):
    """What the keeper is doing; every change is logged and written to the status file."""

    STARTING = "starting"
    CONNECTING = (
        "connecting"  # checking the jump host's key, starting ssh, waiting for the forwards
    )
    VERIFYING = "verifying"  # forwards granted: checking them end to end through the jump host
    UP = "up"  # verified end to end
    DEGRADED = (
        "degraded"  # forwards up, but the target does not answer here (not the tunnel's fault)
    )
    BACKOFF = "backoff"  # waiting before the next attempt
    RECLAIMING = "reclaiming"  # removing our own stale session that still holds the port
    STOPPING = "stopping"
    STOPPED = "stopped"


TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.STARTING: frozenset({State.CONNECTING, State.STOPPING}),
    State.CONNECTING: frozenset({State.VERIFYING, State.BACKOFF, State.RECLAIMING, State.STOPPING}),
    # a dead flow (from verifying, up or degraded) may go straight to reclaiming our old session
    State.VERIFYING: frozenset(
        {State.UP, State.DEGRADED, State.BACKOFF, State.RECLAIMING, State.STOPPING}
    ),
    State.UP: frozenset({State.DEGRADED, State.BACKOFF, State.RECLAIMING, State.STOPPING}),
    State.DEGRADED: frozenset({State.UP, State.BACKOFF, State.RECLAIMING, State.STOPPING}),
    State.BACKOFF: frozenset({State.CONNECTING, State.STOPPING}),
    State.RECLAIMING: frozenset({State.CONNECTING, State.BACKOFF, State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


def transition(current: State, new: State) -> State:
    """Return new if the state machine allows current -> new, else raise ValueError."""
    if new not in TRANSITIONS[current]:
        raise ValueError(f"tunnel state cannot go from {current.value} to {new.value}")
    return new


class FailureKind(str, Enum):
    """Why an attempt or a running tunnel ended."""

    UNREACHABLE = "unreachable"  # TCP, DNS or handshake: the jump host was not reached
    HOST_KEY = "host-key"
    AUTH = "auth"
    REFUSED = "refused"  # the jump host refused a -R: port held, or not permitted
    LOST = "lost"  # an established connection ended (session killed, sshd restart)
    DEAD = "dead"  # the connection stopped answering: the jump host may still hold our session
    BROKEN = "broken"  # connected and granted, but nothing came through end to end
    SETUP = "setup"  # --reclaim's forced command is not installed for the tunnel key


@dataclass(frozen=True)
class Failure:
    """One failure, with the line the log and the status file show."""

    kind: FailureKind
    message: str


FORWARD_REFUSED = re.compile(
    r"remote port forwarding failed for listen port (\d+)|remote forward failure for: listen (?:.*:)?(\d+),"
)
_HOST_KEY = re.compile(
    r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No \S+ host key is known"
    r"|host key for \S+ has changed"
)
_AUTH = re.compile(r"Permission denied \(|Too many authentication failures|no mutual signature")
_DEAD = re.compile(r"Timeout, server \S+ not responding")
_UNREACHABLE = re.compile(
    r"Could not resolve hostname|Connection refused|Connection timed out|Network is unreachable"
    r"|No route to host|Operation timed out|kex_exchange_identification|banner exchange"
    r"|Connection closed by \S+ port \d+|Connection reset by \S+ port \d+"
)
_LOCAL_FORWARD = re.compile(r"Could not request local forwarding|local forwarding failed")


_NOISE = ("debug", "OpenSSH_", "Authenticated to ", "Transferred: ", "Bytes per second: ")


def _last_message(lines: Sequence[str]) -> str:
    """The last line ssh printed that is not debug output or statistics, as a short reason."""
    for line in reversed(lines):
        if line.strip() and not line.startswith(_NOISE):
            return line.strip().rstrip(".").removeprefix("ssh: ")
    return ""


def classify_ssh_exit(
    lines: Sequence[str],
    *,
    jump: Endpoint,
    authenticated: bool,
    granted: bool,
    hold: bool,
    holding: bool,
    settings: TunnelSettings,
) -> Failure:
    """Turn ssh's output (with -v) into a Failure with a one-line explanation."""
    text = "\n".join(lines)
    if _HOST_KEY.search(text):
        return Failure(
            FailureKind.HOST_KEY,
            f"the jump host {jump} presented a host key other than the verified one — refusing to"
            " connect; if it was reinstalled, verify the new key and update the known hosts",
        )
    if _AUTH.search(text) and not authenticated:
        return Failure(
            FailureKind.AUTH,
            f"the jump host {jump} refused the key for user '{jump.user}' — add the tunnel key to"
            f" ~{jump.user}/.ssh/authorized_keys there (`deployer authorized-keys` prints the line)",
        )
    refused = sorted({int(a or b) for a, b in FORWARD_REFUSED.findall(text)})
    if refused:
        held = ", ".join(f.permitlisten() for f in settings.forwards if f.port in refused)
        return Failure(
            FailureKind.REFUSED,
            f"the jump host refused to listen on {held}: still held by a stale session of ours"
            " (until the jump host's ClientAlive timeout reaps it"
            + ("" if settings.reclaim else "; --reclaim frees it at once")
            + "), by another program, or not allowed by the key's permitlisten",
        )
    if hold and authenticated and not holding:
        said = _last_message(lines)
        return Failure(
            FailureKind.SETUP,
            "--reclaim needs the tunnel key's command= from `deployer authorized-keys --reclaim` on"
            " the jump host (and a login shell and writable home for its user)"
            + (f"; the jump host said: {said}" if said else ""),
        )
    if _DEAD.search(text):
        return Failure(
            FailureKind.DEAD,
            f"the connection to {jump} stopped answering (no reply for {settings.dead_after} s):"
            " the flow is dead",
        )
    if _LOCAL_FORWARD.search(text):
        return Failure(
            FailureKind.LOST, f"ssh could not open its check socket: {_last_message(lines)}"
        )
    reason = _last_message(lines) or "ssh exited"
    if not authenticated and (_UNREACHABLE.search(text) or not granted):
        return Failure(FailureKind.UNREACHABLE, f"cannot reach the jump host {jump}: {reason}")
    return Failure(FailureKind.LOST, f"the connection to {jump} ended: {reason}")


@dataclass
class Backoff:
    """Exponential backoff with "equal jitter": attempt n waits in [d/2, d], d = min(cap, base*2^(n-1))."""

    base: float = 0.5
    cap: float = DEFAULT_MAX_BACKOFF
    slow_cap: float = SLOW_BACKOFF
    refused_cap: float = REFUSED_BACKOFF
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def ceiling(self, failures: int, *, slow: bool = False, refused: bool = False) -> float:
        """The upper bound of the delay after this many consecutive failures."""
        cap = max(self.cap, self.slow_cap) if slow else self.cap
        if refused:
            cap = min(cap, self.refused_cap)
        return min(cap, self.base * 2.0 ** min(max(failures, 1) - 1, 30))

    def next_delay(self, *, slow: bool = False, refused: bool = False) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        self.failures += 1
        ceiling = self.ceiling(self.failures, slow=slow, refused=refused)
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """The tunnel was stable: start again from the shortest delay."""
        self.failures = 0


@dataclass(frozen=True)
class Plan:
    """What to do after a failure."""

    action: Literal["retry", "reclaim", "exit"]
    delay: float = 0.0
    exit_code: ExitCode | None = None


def plan_after_failure(
    failure: Failure,
    backoff: Backoff,
    *,
    reclaim_available: bool,
    ever_up: bool,
    holder_known: bool = False,
    elapsed: float = 0.0,
) -> Plan:
    """Retry what waiting can fix; exit on what needs a human (host key; auth before first success).

    holder_known: our last session told us its pid on the jump host, so after a dead flow it can
    be reclaimed before the next -R runs into it. elapsed: how long the failed attempt took;
    attempts start at least the backoff delay apart, so an attempt that already waited out a
    connect timeout is followed at once by the next (back soon after a long cut heals).
    """
    plan = _plan(failure, backoff, reclaim_available, ever_up, holder_known)
    if plan.action == "retry" and elapsed > 0:
        return Plan("retry", max(0.0, plan.delay - elapsed))
    return plan


def _plan(
    failure: Failure, backoff: Backoff, reclaim_available: bool, ever_up: bool, holder_known: bool
) -> Plan:
    if failure.kind is FailureKind.HOST_KEY:
        return Plan("exit", exit_code=ExitCode.HOST_KEY)
    if failure.kind is FailureKind.AUTH:
        if not ever_up:
            return Plan("exit", exit_code=ExitCode.AUTH)
        return Plan("retry", backoff.next_delay(slow=True))
    if failure.kind is FailureKind.REFUSED and reclaim_available:
        return Plan("reclaim")
    if failure.kind is FailureKind.DEAD and reclaim_available and holder_known:
        # the dead flow's session most likely still holds the port (until ClientAlive reaps it)
        return Plan("reclaim")
    if failure.kind is FailureKind.SETUP:
        return Plan("retry", 0.2)  # again at once, without reclaim
    if failure.kind is FailureKind.REFUSED:
        # reachable, only the port is still held: take it over soon after the jump host frees it
        return Plan("retry", backoff.next_delay(refused=True))
    return Plan("retry", backoff.next_delay())
