"""Recovery from faults: each fault of issue 4 against each tunnel keeper, timed and checked.

The jump host's sshd runs in a network namespace (ClientAliveInterval 5, CountMax 3); each keeper
holds ``-R PORT:127.0.0.1:<target sshd>``; after the fault a client on the jump host connects to
the port until it gets the target's SSH banner. Every row carries the issue's goal for it
(``goal_for``) and whether it was met (``Result.met``).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.tunnel_engines import Tunnel, start_engine
from bench.tunnel_lab import Lab, make_lab, wait_banner
from deployer.sandbox.servers import free_port
from tests.integration.netns import kill_sessions, stop_sshd, tcp_client_ports

CLIENT_ALIVE = (5, 3)  # the jump host's ClientAliveInterval, ClientAliveCountMax (sandbox defaults)
BACK_GOAL = 10.0  # back within this many seconds once the port is free (or with --reclaim)
SIGTERM_GOAL = 5.0  # "exit within a few seconds and release the port"
SIGTERM = "SIGTERM: exit / port released"  # the fault name of the SIGTERM rows


@dataclass
class Fault:
    """One fault: inject() causes it and returns when it ended (monotonic seconds)."""

    name: str
    inject: Callable[[Lab, Tunnel, int], float]  # returns the time the fault ended
    idle: bool = False  # nobody connects to the port until its holder changed


@dataclass
class Result:
    """One measurement. For SIGTERM: back = seconds to exit, freed = seconds until the port was released."""

    fault: str
    engine: str
    run: int
    # seconds from the end of the fault to a working tunnel; None: not within the timeout
    back: float | None
    # seconds from the end of the fault until the old holder left the port
    freed: float | None
    # the limit this row must meet; None: no keeper can (the port is never freed)
    goal: float | None
    note: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the row met its goal; None when no goal applies."""
        if self.goal is None:
            return None
        if self.fault == SIGTERM:
            return self.back is not None and self.back <= self.goal and self.freed is not None \
                and self.freed <= self.goal  # fmt: skip
        return self.back is not None and self.back <= self.goal


def _kill_session(lab: Lab, tunnel: Tunnel, port: int) -> float:
    kill_sessions(lab.jump)
    return time.monotonic()


def _restart(lab: Lab, tunnel: Tunnel, port: int) -> float:
    stop_sshd(lab.jump)
    time.sleep(2)
    assert lab.ns is not None
    lab.ns.start_sshd(lab.jump)
    return time.monotonic()


def _cut(seconds: float) -> Callable[[Lab, Tunnel, int], float]:
    def inject(lab: Lab, tunnel: Tunnel, port: int) -> float:
        assert lab.ns is not None
        lab.ns.cut()
        time.sleep(seconds)
        lab.ns.heal()
        return time.monotonic()

    return inject


def _drop_flow(lab: Lab, tunnel: Tunnel, port: int) -> float:
    assert lab.ns is not None
    ssh = tunnel.ssh_pid()
    if ssh is None:
        raise RuntimeError("no ssh process to drop the flow of")
    client = tcp_client_ports(ssh, lab.host, lab.jump.port)
    if len(client) != 1:
        raise RuntimeError(f"expected one connection of ssh {ssh} to the jump host, found {client}")
    lab.ns.drop_flow(lab.jump.port, client[0])
    return time.monotonic()


def goal_for(fault: str, engine: str, freed: float | None, back: float | None) -> float | None:
    """The issue's goal for this row (in seconds from the end of the fault)."""
    if fault == SIGTERM:
        return SIGTERM_GOAL
    if engine.endswith("--reclaim"):
        return BACK_GOAL
    if freed is None:
        # the old holder never left: fine if the tunnel survived, hopeless for any keeper otherwise
        return BACK_GOAL if back is not None else None
    return freed + BACK_GOAL  # the stale-port case: ClientAlive reaping (as measured) + 10 s


def measure(lab: Lab, fault: Fault, engine: str, timeout: float, run: int) -> Result:
    """Start engine, let it come up, inject the fault, time the recovery."""
    port = free_port()
    spec = f"{port}:127.0.0.1:{lab.target.port}"
    lab.allow_forwards([spec], reclaim=True)
    tunnel = start_engine(lab, engine, spec)
    assert lab.ns is not None
    try:
        if not wait_banner(lab, port, 30):
            raise RuntimeError(f"{engine} did not come up")
        time.sleep(1)
        holder = lab.ns.listener_pids(port)
        ended = fault.inject(lab, tunnel, port)
        freed: float | None = None
        back: float | None = None
        while time.monotonic() - ended < timeout:
            now_holder = lab.ns.listener_pids(port)
            if freed is None and now_holder != holder:
                freed = time.monotonic() - ended
            if (not fault.idle or now_holder != holder) and lab.banner(port, 1.0).startswith(
                b"SSH-2.0-"
            ):
                back = time.monotonic() - ended
                break
            time.sleep(0.2)
        return Result(
            fault.name, engine, run, back, freed, goal_for(fault.name, engine, freed, back)
        )
    finally:
        tunnel.stop()
        lab.ns.heal()
        kill_sessions(lab.jump)  # no stale session of this row outlives it
        time.sleep(1)


def measure_sigterm(lab: Lab, engine: str, run: int) -> Result:
    """SIGTERM to the keeper: seconds until it exited, and until the jump host stopped listening."""
    port = free_port()
    spec = f"{port}:127.0.0.1:{lab.target.port}"
    lab.allow_forwards([spec], reclaim=True)
    tunnel = start_engine(lab, engine, spec)
    assert lab.ns is not None
    try:
        if not wait_banner(lab, port, 30):
            raise RuntimeError(f"{engine} did not come up")
        time.sleep(1)
        ssh = tunnel.ssh_pid()
        if not lab.ns.listener_pids(port):
            raise RuntimeError(f"{engine} is up but nothing listens on the jump host's port {port}")
        sent = time.monotonic()
        tunnel.process.send_signal(signal.SIGTERM)
        exited: float | None = None
        released: float | None = None
        while time.monotonic() - sent < 20 and (exited is None or released is None):
            if exited is None and tunnel.process.poll() is not None:
                exited = time.monotonic() - sent
            if released is None and not lab.ns.listener_pids(port):
                released = time.monotonic() - sent
            time.sleep(0.02)
        orphan = ssh is not None and Path(f"/proc/{ssh}").exists() and \
            "zombie" not in Path(f"/proc/{ssh}/status").read_text()  # fmt: skip
        note = f"exit code {tunnel.process.returncode}" + (
            "; its ssh kept running" if orphan else ""
        )
        return Result(SIGTERM, engine, run, exited, released, SIGTERM_GOAL, note)
    finally:
        tunnel.stop()
        kill_sessions(lab.jump)
        time.sleep(1)


def fault_plan(quick: bool) -> list[Fault]:
    """The faults in the order they run; --quick cuts the long link cut to 20 s."""
    long_cut = 20 if quick else 60
    return [
        Fault("kill the jump-side session", _kill_session),
        Fault("restart the jump's sshd (2 s down)", _restart),
        Fault("cut the link 5 s", _cut(5)),
        Fault(f"cut the link {long_cut} s", _cut(long_cut)),
        Fault("drop the live flow, clients knocking", _drop_flow),
        Fault("stale port: drop the live flow, idle", _drop_flow, idle=True),
    ]


def faults(
    quick: bool, engines: list[str], repeat: int, timeout: float, only: str | None = None
) -> list[Result]:
    """Every fault against every engine, repeat times (a row that did not come back is not repeated)."""
    lab = make_lab(True)
    results: list[Result] = []
    try:
        plan: list[Fault | None] = [*fault_plan(quick), None]  # None: SIGTERM
        for fault in plan:
            if only and only not in (SIGTERM if fault is None else fault.name):
                continue
            for engine in engines:
                for run in range(1, repeat + 1):
                    if fault is None:
                        result = measure_sigterm(lab, engine, run)
                    else:
                        result = measure(lab, fault, engine, timeout, run)
                    results.append(result)
                    print(
                        f"  {result.fault:42} {engine:20} #{run} {cell(result)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if result.back is None:
                        break  # not back within the timeout: once is enough
    finally:
        lab.stop()
    return results


def cell(result: Result) -> str:
    """A row's seconds as the table shows them (SIGTERM rows: "exit / released")."""
    if result.fault == SIGTERM:
        exited = "not exited" if result.back is None else f"{result.back:.2f}"
        released = "held" if result.freed is None else f"{result.freed:.2f}"
        return f"{exited} / {released}"
    return "not back" if result.back is None else f"{result.back:.1f}"
