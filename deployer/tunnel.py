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

Pure parts (forward parsing, states, failure classification, backoff, ssh command lines, the
jump host's forced command, status documents, autossh variables) are plain functions.
"""

from __future__ import annotations

import base64
import contextlib
import json
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from deployer.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ExitCode,
    HostKeyError,
)
from deployer.proxy import ProxySpec, open_through, proxy_command_line
from deployer.route import Endpoint

if TYPE_CHECKING:
    import paramiko

    from deployer.hostkeys import HostKeyPolicy

# ---------------------------------------------------------------------------- forwards


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_LOOPBACK_BINDS = ("localhost", "127.0.0.1", "::1")
_WILDCARD_BINDS = ("", "*")


@dataclass(frozen=True)
class Forward:
    """One remote forward: the jump host listens on [bind:]port, we connect to host:host_port."""

    port: int
    host: str
    host_port: int
    bind: str | None = None  # None: not given (sshd listens on loopback); "" or "*": everywhere

    @property
    def spec(self) -> str:
        """The OpenSSH -R text."""
        bind = "" if self.bind is None else f"{_bracket(self.bind)}:"
        return f"{bind}{self.port}:{_bracket(self.host)}:{self.host_port}"

    @property
    def listen_host(self) -> str:
        """The listen address as sshd's permitlisten matches it ('localhost' when none given)."""
        if self.bind is None:
            return "localhost"
        return "*" if self.bind in _WILDCARD_BINDS else self.bind

    @property
    def probe_host(self) -> str:
        """Where, on the jump host, a connection reaches this forward's listener."""
        if self.bind in (None, "localhost", "127.0.0.1", "0.0.0.0", *_WILDCARD_BINDS):
            return "127.0.0.1"
        if self.bind in ("::", "::1"):
            return "::1"
        return str(self.bind)

    @property
    def needs_gateway_ports(self) -> bool:
        """Whether the listener is meant to be reachable from other hosts (GatewayPorts)."""
        return self.bind is not None and self.bind not in _LOOPBACK_BINDS

    def permitlisten(self) -> str:
        """The authorized_keys permitlisten value allowing this forward."""
        return f"{_bracket(self.listen_host)}:{self.port}"

    def permitopen(self) -> str:
        """The permitopen value for the tunnel key's own end-to-end check of this forward."""
        return f"{_bracket(self.probe_host)}:{self.port}"

    def __str__(self) -> str:
        return self.spec


def _split_fields(text: str) -> list[str]:
    """Split on ':' outside [brackets] (OpenSSH's forward syntax, IPv6 in brackets)."""
    fields: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "[":
            end = text.find("]", i)
            if end < 0:
                raise ValueError("an opening [ has no closing ]")
            current += text[i : end + 1]
            i = end + 1
            continue
        if char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
        i += 1
    fields.append(current)
    return fields


def _unbracket(value: str) -> str:
    return value[1:-1] if value.startswith("[") and value.endswith("]") else value


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"-R {spec!r}: {what} {text!r} is not a number")
    port = int(text)
    if port == 0 and what == "port":
        raise ConfigError(
            f"-R {spec!r}: port 0 asks the jump host for a random port — a tunnel needs a fixed"
            " one that CI can reach, e.g. -R 22022:localhost:22"
        )
    if not 0 < port < 65536:
        raise ConfigError(f"-R {spec!r}: {what} {port} is out of range (1-65535)")
    return port


def parse_forward(text: str) -> Forward:
    """Parse OpenSSH's -R syntax: [BIND:]PORT:HOST:HOSTPORT (IPv6 addresses in [brackets])."""
    spec = text.strip()
    usage = "use [BIND:]PORT:HOST:HOSTPORT, e.g. -R 22022:localhost:22"
    try:
        fields = _split_fields(spec)
    except ValueError as exc:
        raise ConfigError(f"-R {spec!r}: {exc} — {usage}") from None
    if any(f.startswith("/") for f in fields):
        raise ConfigError(f"-R {spec!r}: Unix socket forwarding is not supported — {usage}")
    if len(fields) in (1, 2) and fields[-1].isdigit():
        raise ConfigError(
            f"-R {spec!r}: reverse dynamic (SOCKS) forwarding is not supported — {usage}"
        )
    if len(fields) == 3:
        bind: str | None = None
        port_text, host, host_port_text = fields
    elif len(fields) == 4:
        bind = _unbracket(fields[0])
        port_text, host, host_port_text = fields[1:]
    else:
        raise ConfigError(f"-R {spec!r} is not a remote forward — {usage}")
    host = _unbracket(host)
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"-R {spec!r}: the host to connect to is missing — {usage}")
    if bind is not None and any(c.isspace() for c in bind):
        raise ConfigError(f"-R {spec!r}: the bind address contains spaces — {usage}")
    port = _port(port_text, "port", spec)
    host_port = _port(host_port_text, "host port", spec)
    return Forward(port=port, host=host, host_port=host_port, bind=bind)


def parse_forwards(values: Sequence[str]) -> tuple[Forward, ...]:
    """Parse every -R (whitespace- or comma-separated values too); refuse duplicate listeners."""
    forwards: list[Forward] = []
    for value in values:
        for item in value.replace(",", " ").split():
            forward = parse_forward(item)
            for other in forwards:
                if other.port == forward.port and other.listen_host == forward.listen_host:
                    raise ConfigError(f"-R {forward} and -R {other} listen on the same port")
            forwards.append(forward)
    return tuple(forwards)


def forwards_key(forwards: Sequence[Forward]) -> str:
    """A stable name for a set of forwards (the jump host's record of the session holding them)."""
    return "-".join(str(p) for p in sorted({f.port for f in forwards}))


# ---------------------------------------------------------------------------- settings

DEFAULT_ALIVE_INTERVAL = 2  # ServerAliveInterval: a dead flow is found after 3 silent intervals
DEFAULT_ALIVE_COUNT = 2
DEFAULT_CHECK_INTERVAL = 30.0  # end-to-end check of a running tunnel
DEFAULT_MAX_BACKOFF = 8.0  # < 10 s: back soon after the jump host frees the port
STABLE_SECONDS = 30.0  # up this long: the next failure starts the backoff from the beginning
SLOW_BACKOFF = 60.0  # authentication refused after having worked: do not hammer the jump host
REFUSED_BACKOFF = 4.0  # the jump host answers but a stale session holds the port: poll it closely
RECLAIM_COOLDOWN = 10.0
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


def parse_listen_address(text: str, option: str = "--healthz") -> tuple[str, int]:
    """[HOST:]PORT for the local health endpoint (default host 127.0.0.1)."""
    host, _, port = text.rpartition(":")
    host = _unbracket(host) or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option} {text!r}: expected [HOST:]PORT, e.g. {option} 127.0.0.1:8022")
    return host, int(port)


# ---------------------------------------------------------------------------- states


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
    State.VERIFYING: frozenset({State.UP, State.DEGRADED, State.BACKOFF, State.STOPPING}),
    State.UP: frozenset({State.DEGRADED, State.BACKOFF, State.STOPPING}),
    State.DEGRADED: frozenset({State.UP, State.BACKOFF, State.STOPPING}),
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


# ---------------------------------------------------------------------------- failures


class FailureKind(str, Enum):
    """Why an attempt or a running tunnel ended."""

    UNREACHABLE = "unreachable"  # TCP, DNS or handshake: the jump host was not reached
    HOST_KEY = "host-key"
    AUTH = "auth"
    REFUSED = "refused"  # the jump host refused a -R: port held, or not permitted
    LOST = "lost"  # an established connection ended (dead flow, session killed, sshd restart)
    BROKEN = "broken"  # connected and granted, but nothing came through end to end
    SETUP = "setup"  # --reclaim's forced command is not installed for the tunnel key


@dataclass(frozen=True)
class Failure:
    """One failure, with the line the log and the status file show."""

    kind: FailureKind
    message: str


_REFUSED = re.compile(
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
    refused = sorted({int(a or b) for a, b in _REFUSED.findall(text)})
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
            FailureKind.LOST,
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


# ---------------------------------------------------------------------------- backoff


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
    failure: Failure, backoff: Backoff, *, reclaim_available: bool, ever_up: bool
) -> Plan:
    """Retry what waiting can fix; exit on what needs a human (host key; auth before first success)."""
    if failure.kind is FailureKind.HOST_KEY:
        return Plan("exit", exit_code=ExitCode.HOST_KEY)
    if failure.kind is FailureKind.AUTH:
        if not ever_up:
            return Plan("exit", exit_code=ExitCode.AUTH)
        return Plan("retry", backoff.next_delay(slow=True))
    if failure.kind is FailureKind.REFUSED and reclaim_available:
        return Plan("reclaim")
    if failure.kind is FailureKind.SETUP:
        return Plan("retry", 0.2)  # again at once, without reclaim
    if failure.kind is FailureKind.REFUSED:
        # reachable, only the port is still held: take it over soon after the jump host frees it
        return Plan("retry", backoff.next_delay(refused=True))
    return Plan("retry", backoff.next_delay())


# ---------------------------------------------------------------------------- the jump host's side

HOLD_COMMAND = "hold"
RECLAIM_COMMAND = "reclaim"
HOLDING_LINE = "deployer-tunnel: holding"
RECORDED_PREFIX = "deployer-tunnel: recorded"
RECLAIMED_PREFIX = "deployer-tunnel: reclaimed"
NOTHING_LINE = "deployer-tunnel: nothing to reclaim"


def reclaim_forced_command(forwards: Sequence[Forward]) -> str:
    """The POSIX sh forced command that lets the tunnel key reclaim its own stale session.

    ``hold`` (the keeper's session): once the keeper says "up", record "pid start-time" of this
    session's sshd process (the one holding the listeners) in ~/.deployer-tunnel/<ports> and
    tell the keeper; then wait until the keeper's stdin closes. ``reclaim [PID START]``: kill
    the recorded process if it still is that same process (pid and start time), is not this
    session, and (when given) is the one the keeper names. The client's command only selects
    between the two; nothing else runs.
    """
    record = f"$HOME/.deployer-tunnel/{forwards_key(forwards)}"
    return (
        f'f="{record}"; case "$SSH_ORIGINAL_COMMAND" in '
        f'{HOLD_COMMAND}) mkdir -p "${{f%/*}}" || exit 1; echo {HOLDING_LINE}; '
        'read -r l && [ "$l" = up ] && s="$PPID $(cut -d\' \' -f22 /proc/$PPID/stat)"'
        f' && echo "$s" >"$f.new" && mv -f "$f.new" "$f" && echo "{RECORDED_PREFIX} $s"; '
        "exec cat >/dev/null;; "
        f'{RECLAIM_COMMAND}|"{RECLAIM_COMMAND} "*) read -r p t <"$f" 2>/dev/null; '
        f'w="${{SSH_ORIGINAL_COMMAND#{RECLAIM_COMMAND}}}"; '
        'if [ -n "$p" ] && [ "$p" != "$PPID" ] && { [ -z "$w" ] || [ "$w" = " $p $t" ]; }'
        ' && [ "$(cut -d\' \' -f22 /proc/$p/stat 2>/dev/null)" = "$t" ] && kill "$p" 2>/dev/null;'
        f' then echo "{RECLAIMED_PREFIX} $p"; else echo {NOTHING_LINE}; fi;; '
        "*) echo 'deployer-tunnel: only hold and reclaim are allowed' >&2; exit 1;; esac"
    )


def _options(options: Sequence[str]) -> str:
    return ",".join(options)


def _quote_option(value: str) -> str:
    """An authorized_keys option value: double quotes, inner double quotes escaped."""
    return '"' + value.replace('"', '\\"') + '"'


def tunnel_key_options(forwards: Sequence[Forward], *, reclaim: bool) -> str:
    """authorized_keys options for the tunnel key on the jump host."""
    options = ["restrict", "port-forwarding"]
    options += [f'permitlisten="{f.permitlisten()}"' for f in forwards]
    options += [f'permitopen="{p}"' for p in dict.fromkeys(f.permitopen() for f in forwards)]
    command = reclaim_forced_command(forwards) if reclaim else "/bin/false"
    options.append(f"command={_quote_option(command)}")
    return _options(options)


def ci_jump_key_options(forwards: Sequence[Forward]) -> str:
    """authorized_keys options for the CI key on the jump host: reach the tunnel ports, nothing else."""
    opens: list[str] = []
    for forward in forwards:
        hosts = ["localhost", "127.0.0.1"]
        if forward.bind not in (None, "localhost", "127.0.0.1", *_WILDCARD_BINDS, "0.0.0.0"):
            hosts = [forward.probe_host]
        opens += [f"{_bracket(h)}:{forward.port}" for h in hosts]
    options = ["restrict", "port-forwarding"]
    options += [f'permitopen="{p}"' for p in dict.fromkeys(opens)]
    options.append('command="/bin/false"')
    return _options(options)


def ci_target_key_options(forwards: Sequence[Forward]) -> str:
    """authorized_keys options for the CI key on the target (deploys run commands, no forwarding)."""
    local_only = all(f.host in ("localhost", "127.0.0.1", "::1") for f in forwards)
    return 'restrict,from="127.0.0.1,::1"' if local_only else "restrict"


def render_authorized_keys(
    forwards: Sequence[Forward],
    *,
    tunnel_key: str,
    ci_key: str,
    reclaim: bool,
    client_alive_interval: int = 5,
    client_alive_count: int = 3,
) -> str:
    """The authorized_keys lines per role and the jump host's sshd_config lines, with comments."""
    specs = " ".join(f"-R {f}" for f in forwards)
    ports = ", ".join(f.permitlisten() for f in forwards)
    gateway = [f for f in forwards if f.needs_gateway_ports]
    nominal = client_alive_interval * (client_alive_count + 1)
    lines = [
        f"# deployer authorized-keys for: deployer tunnel JUMP {specs}",
        "",
        "# 1. Jump host, ~/.ssh/authorized_keys of the tunnel's (dedicated) user — the tunnel key.",
        f"#    It may listen on {ports} and connect to those ports to check them; nothing else.",
    ]
    if reclaim:
        lines += [
            "#    With --reclaim its forced command records the session holding the ports and can kill",
            "#    only that session (needs a login shell such as /bin/sh and a writable home).",
        ]
    else:
        lines += ["#    Runs no command (add --reclaim to allow reclaiming a stale session)."]
    lines += [
        f"{tunnel_key_options(forwards, reclaim=reclaim)} {tunnel_key}",
        "",
        "# 2. Jump host, authorized_keys of the user CI logs in as — the CI key (deployer push --jump).",
        "#    It may only reach the tunnel port(s); it runs no command.",
        f"{ci_jump_key_options(forwards)} {ci_key}",
        "",
        "# 3. Target (this intranet server), ~/.ssh/authorized_keys of the deploy user — the CI key.",
    ]
    if ci_target_key_options(forwards).startswith('restrict,from="127.0.0.1'):
        lines += [
            "#    Deploys run commands; connections arrive through the tunnel, from loopback only."
        ]
    else:
        lines += [
            '#    Deploys run commands (add from="<this server\'s address>" to pin the source).'
        ]
    lines += [
        f"{ci_target_key_options(forwards)} {ci_key}",
        "",
        "# 4. Jump host, /etc/ssh/sshd_config (check with `sshd -t`, then reload sshd).",
        f"#    sshd reaps a dead tunnel session after {nominal}-{2 * nominal} s (OpenSSH 9.2 measured:",
        "#    ~2 x interval x (count+1)) and holds its port until then; deployer retries a refused",
        "#    port at least every 4 s, so it is back within that + 5 s. While clients keep",
        "#    connecting to the stale port, sshd does not reap the session at all: use --reclaim.",
        f"ClientAliveInterval {client_alive_interval}",
        f"ClientAliveCountMax {client_alive_count}",
        "AllowTcpForwarding yes",
    ]
    if gateway:
        binds = ", ".join(f.permitlisten() for f in gateway)
        lines += [
            f"#    {binds} should listen beyond loopback: let the client choose the address.",
            "GatewayPorts clientspecified",
        ]
    else:
        lines += [
            "#    GatewayPorts stays at its default (no): tunnel ports listen on loopback only and CI",
            "#    reaches them through sshd (permitopen above).",
        ]
    return "\n".join(lines) + "\n"


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
        argv += ["-L", f"{paths.check_socket(index)}:{_bracket(forward.probe_host)}:{forward.port}"]
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


# ---------------------------------------------------------------------------- end-to-end checks


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


# ---------------------------------------------------------------------------- status


def _utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Status:
    """The keeper's state as monitoring sees it."""

    state: State = State.STARTING
    since: float = field(default_factory=time.time)
    reason: str = ""
    attempt: int = 0
    connects: int = 0
    verified_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt_at: float | None = None

    def document(self, settings: TunnelSettings, now: float) -> dict[str, Any]:
        """The JSON document of the status file and /healthz."""
        return {
            "state": self.state.value,
            "healthy": self.state is State.UP,
            "since": _utc(self.since),
            "seconds_in_state": round(now - self.since, 1),
            "reason": self.reason,
            "jump": str(settings.jump),
            "forwards": [f.spec for f in settings.forwards],
            "attempt": self.attempt,
            "connects": self.connects,
            "verified_at": _utc(self.verified_at),
            "last_error": self.last_error,
            "last_error_at": _utc(self.last_error_at),
            "next_attempt_at": _utc(self.next_attempt_at),
            "pid": os.getpid(),
            "updated_at": _utc(now),
        }


class StatusBoard:
    """Holds the status; logs every state change; writes the status file; serves /healthz."""

    def __init__(self, settings: TunnelSettings, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.status = Status()
        self._log = log
        self._lock = threading.Lock()
        self._server: Any = None

    def set(self, state: State, reason: str = "") -> None:
        """Change state (validated against TRANSITIONS), log it, write the status file."""
        with self._lock:
            if state is not self.status.state:
                transition(self.status.state, state)
                self.status.state = state
                self.status.since = time.time()
            self.status.reason = reason
            if state is not State.BACKOFF:
                self.status.next_attempt_at = None
        self._log(f"tunnel: {state.value}" + (f" — {reason}" if reason else ""))
        self.write()

    def update(self, **changes: Any) -> None:
        """Change fields other than the state (no log line)."""
        with self._lock:
            for name, value in changes.items():
                setattr(self.status, name, value)
        self.write()

    def document(self) -> dict[str, Any]:
        """A consistent snapshot."""
        with self._lock:
            return self.status.document(self.settings, time.time())

    def write(self) -> None:
        """Atomically replace the status file (when one was asked for)."""
        path = self.settings.status_file
        if path is None:
            return
        text = json.dumps(self.document(), indent=2, sort_keys=True) + "\n"
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(text)
            temporary.chmod(0o644)  # not secret; monitoring may run as another user
            os.replace(temporary, path)
        except OSError as exc:
            self._log(f"tunnel: cannot write the status file {path}: {exc.strerror or exc}")

    def serve(self) -> None:
        """Start the /healthz endpoint (200 when up, 503 otherwise) if one was asked for."""
        if self.settings.healthz is None:
            return
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        board = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/healthz", "/status"):
                    self.send_error(404)
                    return
                document = board.document()
                body = (json.dumps(document, sort_keys=True) + "\n").encode()
                self.send_response(200 if document["healthy"] else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # monitoring polls; do not fill the log

        host, port = self.settings.healthz
        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"--healthz {host}:{port}: cannot listen there ({exc.strerror or exc})"
            ) from exc
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="deployer-healthz", daemon=True
        ).start()

    def close(self) -> None:
        """Stop serving /healthz."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ---------------------------------------------------------------------------- autossh compatibility

AUTOSSH_VARIABLES = (
    "SSH_REMOTE_USER", "SSH_REMOTE_HOST", "SSH_REMOTE_PORT", "SSH_TUNNEL_PORT", "SSH_TARGET_HOST",
    "SSH_TARGET_PORT", "SSH_BIND_IP", "SSH_SERVER_ALIVE_INTERVAL", "SSH_SERVER_ALIVE_COUNT_MAX",
    "SSH_KEY_FILE", "SSH_KNOWN_HOSTS_FILE",
)  # fmt: skip


@dataclass(frozen=True)
class AutosshConfig:
    """jnovack/autossh's environment, translated."""

    jump: str
    forward: str
    key_file: Path | None
    known_hosts_file: Path | None
    key_text: str | None
    alive_interval: int | None
    alive_count: int | None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r} is not a whole number")
    return int(value)


def autossh_config(env: Mapping[str, str], exists: Callable[[str], bool]) -> AutosshConfig:
    """Map jnovack/autossh's variables (same defaults where they are safe) to deployer's options."""
    if env.get("SSH_MODE", "-R").strip() not in ("", "-R"):
        raise ConfigError(
            f"SSH_MODE={env['SSH_MODE']} is not supported — deployer tunnel keeps remote (-R) forwards"
        )
    host = env.get("SSH_REMOTE_HOST", "").strip()
    if not host:
        raise ConfigError("SSH_REMOTE_HOST is not set — name the jump host (autossh's 'remote')")
    tunnel_port = env.get("SSH_TUNNEL_PORT", "").strip()
    if not tunnel_port:
        raise ConfigError(
            "SSH_TUNNEL_PORT is not set — autossh picks a random port, but CI needs a fixed one"
        )
    user = env.get("SSH_REMOTE_USER", "").strip() or "root"
    port = env.get("SSH_REMOTE_PORT", "").strip() or "22"
    bind = env.get("SSH_BIND_IP", "").strip() or "127.0.0.1"
    target = env.get("SSH_TARGET_HOST", "").strip() or "localhost"
    target_port = env.get("SSH_TARGET_PORT", "").strip() or "22"
    forward = f"{_bracket(bind)}:{tunnel_port}:{_bracket(target)}:{target_port}"
    parse_forward(forward)  # validate now, naming the variables' values
    key_file_text = env.get("SSH_KEY_FILE", "").strip()
    key_text = env.get("SSH_KEY", "").strip() or None
    key_file: Path | None = None
    if key_file_text:
        key_file = Path(key_file_text)
    elif key_text is None and exists("/id_rsa"):
        key_file = Path("/id_rsa")  # the image's documented mount point
    known = env.get("SSH_KNOWN_HOSTS_FILE", "").strip() or "/known_hosts"
    known_hosts_file = Path(known) if exists(known) else None
    if env.get("SSH_KNOWN_HOSTS_FILE", "").strip() and known_hosts_file is None:
        raise ConfigError(f"SSH_KNOWN_HOSTS_FILE={known} does not exist")
    return AutosshConfig(
        jump=f"{user}@{_bracket(host)}:{port}",
        forward=forward,
        key_file=key_file,
        known_hosts_file=known_hosts_file,
        key_text=key_text,
        alive_interval=_env_int(env, "SSH_SERVER_ALIVE_INTERVAL"),
        alive_count=_env_int(env, "SSH_SERVER_ALIVE_COUNT_MAX"),
    )


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
        from deployer.agent import MemoryAgent

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
                )
                if failure.kind is FailureKind.SETUP:
                    self._reclaim_ok = False
                if plan.action == "exit":
                    self._shutdown(failure.message)
                    error = HostKeyError if failure.kind is FailureKind.HOST_KEY else AuthError
                    raise error(failure.message)
                if plan.action == "reclaim":
                    self.board.set(State.RECLAIMING, failure.message)
                    if self._reclaim():
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
            elif _REFUSED.search(line):
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
        from deployer.hostkeys import fingerprint

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
                down.append(f"{_bracket(forward.host)}:{forward.host_port}")
                continue
            problem = check_through(
                self._paths.check_socket(index), expect, self.settings.check_timeout
            )
            if problem is not None and not refresh:
                # the target may have changed (restart, upgrade): look again before blaming the tunnel
                fresh = self._expectation(index, forward)
                if fresh is None:
                    down.append(f"{_bracket(forward.host)}:{forward.host_port}")
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
                f"{f.permitlisten()} -> {_bracket(f.host)}:{f.host_port} ({self._expect[i].describe()})"
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

    def _reclaim(self) -> bool:
        """Kill our own stale session on the jump host; True if it was killed.

        If our last session recorded itself (pid, start time) the jump host kills exactly that
        one. Otherwise (e.g. after a keeper restart) the recorded holder is killed only if a
        connection to the port gets no answer from the target: a live holder is left alone.
        """
        assert self._paths is not None and self._pinned is not None
        self._last_reclaim = time.monotonic()
        if self._own_holder is not None:
            holder, self._own_holder = self._own_holder, None
            output = self._reclaim_call(holder)
            if RECLAIMED_PREFIX in output:
                self._log(
                    f"tunnel: reclaimed the port from our stale session (sshd pid {holder[0]} on the jump host)"
                )
                return True
            if NOTHING_LINE not in output:
                return self._reclaim_unavailable(output)
        if not self._holder_silent():
            return False
        output = self._reclaim_call(None)
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

    def _reclaim_call(self, holder: tuple[int, int] | None) -> str:
        assert self._paths is not None and self._pinned is not None
        argv = reclaim_argv(self.settings, self._paths, self._pinned[0], holder)
        try:
            return str(
                self._call(lambda: self._helper_output(argv), self.settings.connect_timeout + 15)
            )
        except TimeoutError:
            return "timed out"

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

    def _helper_output(self, argv: list[str]) -> str:
        process = self._spawn_helper(argv, subprocess.DEVNULL)
        try:
            out, err = process.communicate(timeout=self.settings.connect_timeout + 10)
        except subprocess.TimeoutExpired:
            out, err = b"", b"timed out"
        finally:
            _terminate(process)
            self._helpers.discard(process)
        return (out + b"\n" + err).decode("utf-8", "replace")

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

    from deployer.hostkeys import fingerprint

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
