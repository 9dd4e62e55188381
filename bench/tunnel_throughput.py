"""Throughput through the tunnel: plain `ssh -R` vs `deployer tunnel` vs a paramiko forward.

A client on the jump host's side sends a given number of bytes into the tunnel port; the forward's
target is a Sink on the intranet side, which notes when each connection's bytes all arrived. The
engines alternate run by run; the intranet side's CPU time (keeper and its children) is measured
per GiB sent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.tunnel_engines import start_deployer, start_paramiko, start_plain_ssh
from bench.tunnel_lab import Lab, make_lab, wait_listening
from deployer.sandbox.servers import free_port
from tests.integration.netns import children

# ---------------------------------------------------------------------------- throughput

SENDER = """
import socket, sys, time
port, size = int(sys.argv[1]), int(sys.argv[2])
buf = b"x" * (1 << 20)
s = socket.create_connection(("127.0.0.1", port))
start = time.monotonic()
sent = 0
while sent < size:
    s.sendall(buf)
    sent += len(buf)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(start)
"""


class Sink:
    """The forward's target: counts bytes per connection and notes when each one ended."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.done: list[tuple[int, float]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        total = 0
        with conn:
            while data := conn.recv(1 << 20):
                total += len(data)
            if total:  # the keeper's end-to-end checks connect too, and send nothing
                self.done.append((total, time.monotonic()))


def send_through(lab: Lab, sink: Sink, port: int, size: int) -> float:
    """MB/s for size bytes sent from the jump host's side into the tunnel port."""
    count = len(sink.done)
    argv = [sys.executable, "-c", SENDER, str(port), str(size)]
    if lab.ns is not None:
        argv = lab.ns.argv(*argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    start = float(done.stdout.strip())
    deadline = time.monotonic() + 60
    while len(sink.done) == count and time.monotonic() < deadline:
        time.sleep(0.01)
    received, end = sink.done[-1]
    if received != size:
        raise RuntimeError(f"sent {size} bytes, the sink got {received}")
    return size / (end - start) / 1e6


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def throughput(
    size_mb: int, runs: int, in_namespace: bool, rate: str | None = None
) -> list[tuple[str, list[float], list[float]]]:
    """Per engine: MB/s of each run, and intranet-side CPU seconds per GiB of each run."""
    lab = make_lab(in_namespace)
    if rate is not None and lab.ns is not None:  # the jump host's uplink towards the intranet side
        lab.ns.run("tc", "qdisc", "add", "dev", lab.ns.ns_if, "root", "tbf", "rate", rate, "burst", "256kb",
                   "latency", "50ms")  # fmt: skip
    sink = Sink()
    names = ("ssh -R", "deployer tunnel", "paramiko forward")
    speed: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    try:
        size = size_mb * 1024 * 1024
        spec_port = {name: free_port() for name in names}
        specs = [f"{port}:127.0.0.1:{sink.port}" for port in spec_port.values()]
        lab.allow_forwards(specs, reclaim=False)  # one key line allowing every port
        for run in range(runs):
            order = names if run % 2 == 0 else tuple(reversed(names))  # no engine always goes first
            for name in order:
                port = spec_port[name]
                spec = f"{port}:127.0.0.1:{sink.port}"
                if name == "paramiko forward":
                    engine = start_paramiko(lab, port, sink.port)
                elif name == "ssh -R":
                    engine = start_plain_ssh(lab, spec)
                else:
                    engine = start_deployer(lab, spec)
                try:
                    wait_listening(lab, port)
                    time.sleep(
                        3 if name == "deployer tunnel" else 0.5
                    )  # let its end-to-end check finish
                    pids = [engine.process.pid, *children(engine.process.pid)]
                    before = cpu_seconds(pids)
                    speed[name].append(send_through(lab, sink, port, size))
                    cpu[name].append((cpu_seconds(pids) - before) / (size / 2**30))
                finally:
                    engine.stop()
                time.sleep(0.5)
    finally:
        sink.sock.close()
        lab.stop()
    return [(name, speed[name], cpu[name]) for name in names]
