"""One encoded upload stream shared by several targets: compressed once, read by each.

A fleet push sends the same files to every target whose live release is the same, so the tar
stream and its gzip are the same bytes for all of them. Compressing them once per target costs
CPU that the runner needs for encryption (gzip -1 of 32 MB of source is ~0.35 s of CPU; twenty
targets made that seven seconds). A `Spool` runs the encoder once, in a thread, into an unlinked
temporary file, and each target copies from that file as it grows: nobody waits for the whole
stream, memory stays flat, and the file is gone when the last reader closes it. The encoder
stays at most _AHEAD bytes ahead of the furthest reader: its writes wait as a connection's would,
which is what tells an adaptive compressor that the wire, not the CPU, is the limit.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Callable

from deployer.artifact.model import Sink
from deployer.errors import TransferError

_READ = 256 << 10  # per reader: twenty targets hold 5 MB of it

_AHEAD = 8 << 20  # how far the encoder may run ahead of the furthest reader

Encoder = Callable[[Sink, Callable[[int], object]], object]
"""Writes the whole stream into its first argument and reports content bytes to its second."""


class Spool:
    """The stream written by `encode`, readable by any number of threads while it grows."""

    def __init__(self, encode: Encoder) -> None:
        # lives as long as the spool: closed by close()
        self._file = tempfile.TemporaryFile(prefix="deployer-", buffering=0)  # noqa: SIM115
        self._changed = threading.Condition()
        self._size = 0  # bytes written so far
        self._content = 0  # content bytes encoded so far (what progress bars count)
        self._marks: list[tuple[int, int]] = []  # (size, content) after each content step
        self._done = False
        self._error: BaseException | None = None
        self._closed = False
        self._furthest = -1  # the furthest offset any reader has copied (-1: no reader yet)
        self._thread = threading.Thread(
            target=self._run, args=(encode,), name="deployer-spool", daemon=True
        )
        self._thread.start()

    def _run(self, encode: Encoder) -> None:
        try:
            encode(_Writer(self._append), self._progress)
        except BaseException as exc:  # handed to every reader (_Closed: to any left behind)
            with self._changed:
                self._error = exc
                self._changed.notify_all()
            return
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def _append(self, data: bytes) -> int:
        with self._changed:
            self._changed.wait_for(self._may_write)
        if self._closed:
            raise _Closed
        view = memoryview(data)
        try:
            while view:  # unbuffered: readers see each write once it returns
                view = view[self._file.write(view) :]
        except OSError as exc:
            raise TransferError(
                f"spooling the upload stream in {tempfile.gettempdir()} failed:"
                f" {exc.strerror or exc} — free space there or point TMPDIR elsewhere"
            ) from exc
        with self._changed:
            self._size += len(data)
            self._changed.notify_all()
        return len(data)

    def _may_write(self) -> bool:
        """Whether the encoder may write on (called holding the lock)."""
        return self._closed or self._size - max(self._furthest, 0) < _AHEAD

    def _progress(self, n: int) -> None:
        with self._changed:
            self._content += n
            self._marks.append((self._size, self._content))

    def _ready(self, offset: int) -> bool:
        """Whether a reader at `offset` has something to do (called holding the lock)."""
        return offset < self._size or self._done or self._error is not None

    def copy_to(self, out: Sink, on_progress: Callable[[int], None] | None = None) -> None:
        """Write the whole stream into `out`, waiting for the encoder where it has not got to.

        Raises what the encoder raised, at the point where the stream stops.
        """
        offset = 0
        mark = reported = 0
        fd = self._file.fileno()
        while True:
            with self._changed:
                # the encoder notifies on every write, at the end and on failure
                self._changed.wait_for(functools.partial(self._ready, offset))
                size, done, error = self._size, self._done, self._error
                while mark < len(self._marks) and self._marks[mark][0] <= offset:
                    mark += 1
                content = self._marks[mark - 1][1] if mark else 0
            if on_progress is not None and content > reported:
                on_progress(content - reported)
                reported = content
            if offset < size:
                data = os.pread(fd, min(_READ, size - offset), offset)
                out.write(data)
                offset += len(data)
                with self._changed:
                    if offset > self._furthest:
                        self._furthest = offset
                        self._changed.notify_all()
            elif error is not None:
                raise error
            elif done:
                break

    def close(self) -> None:
        """Stop the encoder at its next write and drop the file (readers must be done)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()
        self._file.close()


class _Closed(Exception):
    """Raised into the encoder when the spool is closed before the stream is complete."""


class _Writer:
    """The sink `encode` writes into."""

    def __init__(self, append: Callable[[bytes], int]) -> None:
        self._append = append

    def write(self, data: bytes) -> int:
        return self._append(data)
