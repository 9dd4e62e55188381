"""zstd whose level follows the link while it sends, as `zstd --adapt` does.

The compressed stream goes through a small bounded queue to a writer thread that hands it to
the connection. Which side waits says where the bottleneck is: a full queue (the compressor waits
for the wire) means the wire is the limit, so a higher level costs nothing and saves bytes; an
empty queue (the wire waits for the compressor) means the compressor, or the CPU it shares with
reading and encrypting, is, so a lower level sends sooner. The level changes between zstd
frames: a stream of several frames decodes as one (`zstd -dc`), each frame with its own level.

The policy (`LevelPolicy`) is pure: it sees one window's waits at a time and moves the level
only after two windows in a row agree (two steps when both waited most of the window), then lets
one window pass before judging again, so that a level on the edge between two settles instead of
flapping at every window.

At the start, the connection takes what it is given without waiting until its buffers are full
(an SSH channel's window is 2 MiB): an empty queue then says nothing about the wire. So the
level goes down only once a write has waited, or PRIME_BYTES went out without one waiting.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from deployer.artifact.model import Sink

if TYPE_CHECKING:
    import zstandard

LEVELS = (1, 9)  # adaptive range: above 9 the CPU cost doubles per step for 1-2 % of bytes
START = 3  # zstd's default level
JOB_SIZE = 2 << 20  # input per worker job: first output after ~4 MiB, not ~16, and less memory
QUEUE_BYTES = 1 << 20  # compressed bytes between the compressor and the writer: a full one waits
WINDOW = 0.1  # seconds per decision: short streams end within a few seconds
BUSY = 0.20  # a side that waited this share of a window is waiting on the other one
STRONG = 0.5  # ... and this much, in two windows in a row: two levels at once
IDLE = 0.02  # ... and this little: it kept up
PRIME_BYTES = 2 << 20  # written without a write waiting: the connection's buffers would be full
BLOCKED = 0.005  # seconds a write spent off the CPU that say the connection's buffers were full
DISCARD_WAIT = 5.0  # seconds a failed stream waits for its writer's last write

Verdict = Literal[-2, -1, 0, 1, 2]


def judge(full: float, empty: float) -> Verdict:
    """What one window says, as levels to move: `full` and `empty` are the shares of it spent
    waiting on a full queue (the compressor on the wire) and on an empty one (the wire on the
    compressor)."""
    if full >= BUSY:
        return 2 if full >= STRONG else 1
    if empty >= BUSY and full <= IDLE:
        return -2 if empty >= STRONG else -1
    return 0


@dataclass
class LevelPolicy:
    """The level, moved after two windows in a row agree, then one window of rest."""

    level: int = START
    low: int = LEVELS[0]
    high: int = LEVELS[1]
    _last: Verdict = 0
    _rest: int = 0

    def observe(self, full: float, empty: float) -> int:
        """Take one window's shares of waiting; return the level for the next one."""
        verdict = judge(full, empty)
        if self._rest:
            self._rest -= 1
            self._last = 0
            return self.level
        if verdict * self._last > 0:  # two windows in a row say the same way: the smaller step
            step = min(abs(verdict), abs(self._last)) * (1 if verdict > 0 else -1)
            level = min(self.high, max(self.low, self.level + step))
            if level != self.level:
                self.level, self._rest = level, 1
            verdict = 0
        self._last = verdict
        return self.level


@dataclass
class AdaptLog:
    """What the adaptation did: every level used, from which input offset, and the waits."""

    changes: list[tuple[int, int]] = field(default_factory=list)  # (input bytes, level)
    windows: int = 0
    full_seconds: float = 0.0  # the compressor waited for the wire
    empty_seconds: float = 0.0  # the wire waited for the compressor

    @property
    def levels(self) -> tuple[int, ...]:
        """The levels in the order they were used."""
        return tuple(level for _, level in self.changes)

    def summary(self) -> str:
        """'level 3→4→5' as the log shows it."""
        return "level " + "→".join(map(str, self.levels))


class AdaptiveZstd:
    """Multi-threaded zstd into `out`, its level adapted to whichever side waits."""

    def __init__(
        self,
        out: Sink,
        policy: LevelPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import zstandard  # imported here: only pushes that compress with zstd pay for it

        self._zstd = zstandard
        self._out = out
        self._policy = policy or LevelPolicy()
        self._clock = clock
        self._threads = max(1, min(os.cpu_count() or 1, 8))
        self._frame = self._compressor(self._policy.level).compressobj()
        self.log = AdaptLog(changes=[(0, self._policy.level)])
        self._taken = 0  # uncompressed bytes taken so far
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._changed = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self._started = False  # decisions start once output flows (the first job fills the pipe)
        self._primed = False  # the connection's buffers have been full (see PRIME_BYTES)
        self._written = 0
        self._window = self._clock()
        self._full = self._empty = 0.0
        self._writer = threading.Thread(target=self._write_out, name="deployer-zstd", daemon=True)
        self._writer.start()

    def _compressor(self, level: int) -> zstandard.ZstdCompressor:
        # a new one per level change, never kept: each holds its workers' buffers (tens of MB)
        params = self._zstd.ZstdCompressionParameters.from_level(
            level, threads=self._threads, job_size=JOB_SIZE
        )
        return self._zstd.ZstdCompressor(compression_params=params)

    def write(self, data: bytes) -> None:
        """Compress uncompressed tar bytes; may wait for the writer (the queue is bounded)."""
        self._taken += len(data)
        self._put(self._frame.compress(data))
        self._decide()

    def _put(self, data: bytes) -> None:
        if not data:
            return
        with self._changed:
            waited = self._clock()
            while self._queued >= QUEUE_BYTES and self._error is None:
                self._changed.wait()
            self._full += self._clock() - waited
            if self._error is not None:
                raise self._error
            self._queue.append(data)
            self._queued += len(data)
            self._started = True
            self._changed.notify_all()

    def _write_out(self) -> None:
        while True:
            with self._changed:
                waited = self._clock()
                while not self._queue and not self._closing:
                    self._changed.wait()
                if self._started:
                    self._empty += self._clock() - waited
                if not self._queue:
                    return  # closing, and everything was written
                data = self._queue.popleft()
            try:
                wall, cpu = self._clock(), time.thread_time()
                self._out.write(data)
                off_cpu = (self._clock() - wall) - (time.thread_time() - cpu)
            except BaseException as exc:  # handed to the compressing thread at its next write
                with self._changed:
                    self._error = exc
                    self._queue.clear()
                    self._changed.notify_all()
                return
            with self._changed:
                self._queued -= len(data)
                self._written += len(data)
                self._primed = self._primed or off_cpu > BLOCKED or self._written >= PRIME_BYTES
                self._changed.notify_all()

    def _decide(self) -> None:
        now = self._clock()
        wall = now - self._window
        if wall < WINDOW:
            return
        with self._changed:
            full, empty, started = self._full, self._empty, self._started
            if not self._primed:
                empty = 0.0  # the connection was still filling its buffers, not waiting for us
            self._full = self._empty = 0.0
        self._window = now
        if not started:
            return
        self.log.windows += 1
        self.log.full_seconds += full
        self.log.empty_seconds += empty
        level = self._policy.observe(full / wall, empty / wall)
        if level != self.log.changes[-1][1]:
            # a new frame at the new level; the one ending here decodes as part of the same stream
            self._put(self._frame.flush(self._zstd.COMPRESSOBJ_FLUSH_FINISH))
            self._frame = None  # type: ignore[assignment]  # the old frame's memory goes first
            self._frame = self._compressor(level).compressobj()
            self.log.changes.append((self._taken, level))

    def finish(self) -> None:
        """End the frame, wait until the writer handed everything to `out`; raise its error."""
        self._put(self._frame.flush(self._zstd.COMPRESSOBJ_FLUSH_FINISH))
        self.close()
        if self._error is not None:
            raise self._error

    def close(self, discard: bool = False) -> None:
        """Stop the writer after what is queued (with `discard`, at once: the stream failed)."""
        with self._changed:
            self._closing = True
            if discard:
                self._queue.clear()
            self._changed.notify_all()
        # a writer stuck on a dead connection gets its error when the caller closes that
        self._writer.join(timeout=DISCARD_WAIT if discard else None)
