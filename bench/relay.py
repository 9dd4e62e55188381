#!/usr/bin/env python3
"""A userspace WAN link for the benchmark: a TCP relay that delays (and can rate-cap) each direction.

The kernel here has no ``netem`` qdisc, so latency is emulated in userspace. Every chunk read
from one side is stamped with the time it may leave the far side (arrival + one-way delay, after a
token bucket when a rate cap is set) and kept in a bounded per-direction queue; a writer thread
releases it when that time comes. Both directions are independent, so a request/reply exchange
costs one full round trip, as on a real link. The relay also waits one round trip before it
connects upstream, standing in for the TCP handshake that a real long link would cost.

What it does not emulate: TCP itself sees only the short hop to the relay, so slow start and loss
recovery over the long RTT are not reproduced (only application-level round trips and windows,
such as SSH's channel window, feel the delay). The benchmark says so next to its numbers.

Subcommands (each bounded in time by ``--max-seconds``):

    relay.py relay --forward LISTEN_HOST:PORT=TARGET_HOST:PORT ... --rtt-ms 40 [--rate-mbit 100]
    relay.py serve --echo HOST:PORT --sink HOST:PORT      # verification servers
    relay.py probe --echo HOST:PORT --sink HOST:PORT      # ping-pong RTT + bulk throughput, JSON out
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = 256 * 1024
Address = tuple[str, int]


@dataclass(frozen=True)
class Link:
    """One direction of the emulated link."""

    delay: float = 0.0  # one-way propagation delay, seconds
    rate: float | None = None  # bytes per second through a token bucket; None: no cap here
    burst: int = 64 * 1024  # token bucket depth, bytes
    limit: int = 8 << 20  # bytes held (in flight + queued) before the reader stops reading

    @classmethod
    def for_profile(
        cls, rtt_ms: float, rate_mbit: float | None, *, capacity_mbit: float | None = None
    ) -> Link:
        """A direction of an RTT/rate link; capacity_mbit sizes the buffer when rate is shaped elsewhere."""
        delay = rtt_ms / 2000.0
        rate = rate_mbit * 1e6 / 8 if rate_mbit else None
        fill = (rate or (capacity_mbit or 1000) * 1e6 / 8) * delay  # bytes "on the wire"
        if rate:
            # what is on the wire plus ~25 ms of queue (a modest router buffer)
            limit = int(fill + max(64 * 1024, rate * 0.025))
            burst = int(max(16 * 1024, rate * 0.002))
        else:
            limit = int(2 * fill + (1 << 20))  # never the bottleneck: the shaper is elsewhere
            burst = CHUNK
        return cls(delay=delay, rate=rate, burst=burst, limit=limit)

    @property
    def piece(self) -> int:
        """Largest piece released at once: ~2 ms of the rate, so a cap does not release in lumps."""
        if self.rate is None:
            return CHUNK
        return int(min(CHUNK, max(8192, self.rate * 0.002)))


class _Direction:
    """Moves bytes src -> dst through a delay line with an optional token bucket."""

    def __init__(self, src: socket.socket, dst: socket.socket, link: Link, conn: _Connection):
        self.src, self.dst, self.link, self.conn = src, dst, link, conn
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.held = 0
        self.cond = threading.Condition()
        self.tokens = float(link.burst)
        self.tokens_at = time.monotonic()
        self.next_free = 0.0
        self.moved = 0

    def _release_time(self, now: float, size: int) -> float:
        """When the last byte of `size` bytes leaves the token bucket (serialization)."""
        rate = self.link.rate
        if rate is None:
            return now
        start = max(now, self.next_free)
        self.tokens = min(float(self.link.burst), self.tokens + (start - self.tokens_at) * rate)
        self.tokens_at = start
        if self.tokens >= size:
            self.tokens -= size
            release = start
        else:
            release = start + (size - self.tokens) / rate
            self.tokens = 0.0
            self.tokens_at = release
        self.next_free = release
        return release

    def _put(self, due: float, data: bytes | None) -> bool:
        size = len(data) if data else 0
        with self.cond:
            while self.held and self.held + size > self.link.limit and not self.conn.aborted:
                self.cond.wait(0.5)
            if self.conn.aborted:
                return False
            self.queue.append((due, data))
            self.held += size
            self.cond.notify_all()
        return True

    def read_loop(self) -> None:
        try:
            while not self.conn.aborted:
                data = self.src.recv(CHUNK)
                now = time.monotonic()
                if not data:
                    self._put(now + self.link.delay, None)
                    return
                piece = self.link.piece
                for offset in range(0, len(data), piece):
                    part = data[offset : offset + piece]
                    due = self._release_time(now, len(part)) + self.link.delay
                    if not self._put(due, part):
                        return
        except OSError:
            self.conn.abort()

    def write_loop(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.conn.aborted:
                        self.cond.wait(0.5)
                    if self.conn.aborted:
                        return
                    due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with self.cond:
                    self.queue.popleft()
                if data is None:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
                self.moved += len(data)
                with self.cond:
                    self.held -= len(data)
                    self.cond.notify_all()
        except OSError:
            self.conn.abort()
        finally:
            self.conn.direction_done()


class _Connection:
    """A relayed client connection: two directions, closed when both are done or one fails."""

    def __init__(self, relay: Relay, client: socket.socket, target: Address) -> None:
        self.relay, self.client, self.target = relay, client, target
        self.upstream: socket.socket | None = None
        self.aborted = False
        self.done = 0
        self.lock = threading.Lock()
        self.directions: list[_Direction] = []

    def run(self) -> None:
        # a real long link costs a round trip for the TCP handshake before any data moves
        time.sleep(self.relay.up.delay + self.relay.down.delay)
        try:
            self.upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            self.client.close()
            return
        self.upstream.settimeout(None)
        for sock in (self.client, self.upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.directions = [
            _Direction(self.client, self.upstream, self.relay.up, self),
            _Direction(self.upstream, self.client, self.relay.down, self),
        ]
        for direction in self.directions:
            for loop in (direction.read_loop, direction.write_loop):
                threading.Thread(target=loop, daemon=True, name="relay-pump").start()

    def abort(self) -> None:
        with self.lock:
            if self.aborted:
                return
            self.aborted = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for direction in self.directions:
            with direction.cond:
                direction.cond.notify_all()

    def direction_done(self) -> None:
        with self.lock:
            self.done += 1
            finished = self.done == 2
        if finished:
            self.relay.account(self)
            for sock in (self.client, self.upstream):
                if sock is not None:
                    sock.close()
            self.relay.forget(self)


class Relay:
    """Listens on each forward's address and relays every connection to its target through the link."""

    def __init__(
        self, forwards: list[tuple[Address, Address]], up: Link, down: Link | None = None
    ) -> None:
        self.forwards = forwards
        self.up = up
        self.down = down or up
        self.listeners: list[socket.socket] = []
        self.connections: set[_Connection] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.bytes_up = 0
        self.bytes_down = 0
        self.accepted = 0

    def start(self) -> list[Address]:
        """Bind every listener (port 0: any free port) and start accepting; return the bound addresses."""
        bound = []
        for listen, target in self.forwards:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(listen)
            sock.listen(128)
            sock.settimeout(0.5)
            self.listeners.append(sock)
            bound.append(sock.getsockname()[:2])
            threading.Thread(
                target=self._accept_loop, args=(sock, target), daemon=True, name="relay-accept"
            ).start()
        return bound

    def _accept_loop(self, listener: socket.socket, target: Address) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            conn = _Connection(self, client, target)
            with self.lock:
                self.connections.add(conn)
                self.accepted += 1
            threading.Thread(target=conn.run, daemon=True, name="relay-conn").start()

    def account(self, conn: _Connection) -> None:
        """Add a finished connection's bytes (each direction) to the relay's totals."""
        with self.lock:
            if conn.directions:
                self.bytes_up += conn.directions[0].moved
                self.bytes_down += conn.directions[1].moved

    def forget(self, conn: _Connection) -> None:
        """Drop a finished connection from the live set."""
        with self.lock:
            self.connections.discard(conn)

    def stop(self) -> None:
        """Stop accepting and cut every relayed connection."""
        self.stopping.set()
        for sock in self.listeners:
            sock.close()
        with self.lock:
            live = list(self.connections)
        for conn in live:
            conn.abort()
            if conn.upstream is None:
                conn.client.close()


# ---------------------------------------------------------------- verification servers and probes


class _Server:
    """A threaded TCP server handling each connection with `handle`."""

    def __init__(self, address: Address, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self.address: Address = self.sock.getsockname()[:2]
        self.handle = handle
        self.stopping = threading.Event()

    def start(self) -> _Server:
        threading.Thread(target=self._loop, daemon=True, name="bench-server").start()
        return self

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(120)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._guarded, args=(conn,), daemon=True).start()

    def _guarded(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handle(conn)

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()


class EchoServer(_Server):
    """Sends back whatever it receives (for ping-pong RTT)."""

    def __init__(self, address: Address = ("127.0.0.1", 0)) -> None:
        super().__init__(address, self._echo)

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)


class SinkServer(_Server):
    """Reads until EOF, then answers "<bytes> <sha256> <first-byte time> <last-byte time>"."""

    def __init__(self, address: Address = ("127.0.0.1", 0)) -> None:
        super().__init__(address, self._sink)

    @staticmethod
    def _sink(conn: socket.socket) -> None:
        digest = hashlib.sha256()
        count = 0
        first = last = 0.0
        while data := conn.recv(CHUNK):
            last = time.monotonic()
            if not count:
                first = last
            count += len(data)
            digest.update(data)
        conn.sendall(f"{count} {digest.hexdigest()} {first:.6f} {last:.6f}\n".encode())


def ping_pong(
    address: Address, count: int = 20, size: int = 64, timeout: float = 30
) -> list[float]:
    """Round-trip times (seconds) of `count` small request/reply exchanges on one connection."""
    deadline = time.monotonic() + timeout
    samples = []
    message = b"p" * size
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            started = time.monotonic()
            sock.sendall(message)
            got = 0
            while got < size:
                data = sock.recv(size - got)
                if not data:
                    raise ConnectionError("echo server closed the connection")
                got += len(data)
            samples.append(time.monotonic() - started)
    return samples


def _pattern(size: int = 1 << 20) -> bytes:
    """Deterministic, incompressible-looking bytes (so nothing on the path can compress them)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def bulk(address: Address, nbytes: int, timeout: float = 120) -> dict[str, float | int | bool]:
    """Send nbytes to a sink; report throughput (sink-side, first to last byte) and integrity."""
    block = _pattern()
    digest = hashlib.sha256()
    with socket.create_connection(address, timeout=timeout) as sock:
        started = time.monotonic()
        sent = 0
        while sent < nbytes:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"bulk transfer did not finish within {timeout:g} s")
            part = block[: min(len(block), nbytes - sent)]
            sock.sendall(part)
            digest.update(part)
            sent += len(part)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            data = sock.recv(256)
            if not data:
                break
            reply += data
        finished = time.monotonic()
    count, sha, first, last = reply.decode().split()
    span = max(float(last) - float(first), 1e-9)
    return {
        "bytes": int(count),
        "intact": int(count) == nbytes and sha == digest.hexdigest(),
        "seconds_end_to_end": finished - started,
        "seconds_at_sink": span,
        "mbit_per_s": int(count) * 8 / span / 1e6,
    }


# ---------------------------------------------------------------- command line


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _wait_for_signal(max_seconds: float) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(max_seconds)


def main(argv: list[str] | None = None) -> int:
    """The command line: relay, serve (echo + sink) or probe (RTT + throughput, JSON out)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="run the link emulator")
    relay.add_argument("--forward", action="append", required=True, metavar="LISTEN=TARGET")
    relay.add_argument("--rtt-ms", type=float, required=True)
    relay.add_argument("--rate-mbit", type=float, default=0.0, help="0: no cap in the relay")
    relay.add_argument(
        "--capacity-mbit", type=float, default=1000.0, help="sizes buffers when uncapped"
    )
    relay.add_argument("--ready-file", help="written (with the bound addresses) once listening")
    relay.add_argument("--max-seconds", type=float, default=6 * 3600)
    serve = sub.add_parser("serve", help="run echo and sink servers")
    serve.add_argument("--echo", required=True)
    serve.add_argument("--sink", required=True)
    serve.add_argument("--ready-file")
    serve.add_argument("--max-seconds", type=float, default=6 * 3600)
    probe = sub.add_parser("probe", help="measure RTT and throughput through a relay")
    probe.add_argument("--echo", required=True)
    probe.add_argument("--sink", required=True)
    probe.add_argument("--pings", type=int, default=20)
    probe.add_argument("--bulk-bytes", type=int, default=32 << 20)
    probe.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)

    if args.command == "relay":
        forwards = []
        for spec in args.forward:
            listen, _, target = spec.partition("=")
            forwards.append((_address(listen), _address(target)))
        link = Link.for_profile(
            args.rtt_ms, args.rate_mbit or None, capacity_mbit=args.capacity_mbit
        )
        server = Relay(forwards, link)
        bound = server.start()
        if args.ready_file:
            with open(args.ready_file, "w") as handle:
                json.dump({"bound": bound, "link": link.__dict__}, handle)
        _wait_for_signal(args.max_seconds)
        server.stop()
        return 0
    if args.command == "serve":
        echo = EchoServer(_address(args.echo)).start()
        sink = SinkServer(_address(args.sink)).start()
        if args.ready_file:
            with open(args.ready_file, "w") as handle:
                json.dump({"echo": echo.address, "sink": sink.address}, handle)
        _wait_for_signal(args.max_seconds)
        echo.stop()
        sink.stop()
        return 0
    samples = ping_pong(_address(args.echo), args.pings, timeout=args.timeout)
    result = bulk(_address(args.sink), args.bulk_bytes, timeout=args.timeout)
    ms = sorted(s * 1000 for s in samples)
    print(
        json.dumps(
            {
                "rtt_ms_median": statistics.median(ms),
                "rtt_ms_min": ms[0],
                "rtt_ms_max": ms[-1],
                "pings": len(ms),
                **result,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
