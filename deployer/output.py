"""What the user sees: a progress bar on a terminal, timestamped lines in CI, JSON for machines.

Human-readable lines always go to stderr; with ``--json`` the final document is the only thing
written to stdout, so ``deployer push --json | jq`` works in a pipeline. Values given with
``--env`` are secrets: a ``Masker`` replaces them with ``***`` in everything that goes out.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, TextIO

PROGRESS_LINE_SECONDS = 5.0  # how often CI logs get an upload progress line
MASK = "***"  # what a masked value reads as, as in GitLab's and GitHub's job logs


class Masker:
    """Replaces every value it was given with *** in text, bytes and JSON-like documents.

    A multi-line value is masked whole and line by line (output is read and printed a line at a
    time); the longest value wins where one contains another. Thread-safe once filled.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._encoded: list[bytes] = []
        self._text: re.Pattern[str] | None = None
        self._bytes: re.Pattern[bytes] | None = None
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        """Mask these values from now on (empty and blank ones mask nothing)."""
        for value in values:
            for piece in (value, *value.splitlines()):
                if piece.strip():
                    self._values.add(piece)
        if self._values:
            ordered = sorted(self._values, key=len, reverse=True)  # the longest match first
            self._encoded = [v.encode() for v in ordered]
            self._text = re.compile("|".join(re.escape(v) for v in ordered))
            self._bytes = re.compile(b"|".join(re.escape(v.encode()) for v in ordered))

    def prefix_at_end(self, data: bytes) -> int:
        """The length of the longest end of data that begins some value (0: none does)."""
        longest = len(self._encoded[0]) if self._encoded else 0
        for size in range(min(len(data), longest - 1), 0, -1):
            tail = data[len(data) - size :]
            if any(value.startswith(tail) for value in self._encoded):
                return size
        return 0

    def text(self, text: str) -> str:
        """text with every value replaced by ***."""
        return text if self._text is None else self._text.sub(MASK, text)

    def data(self, document: Any) -> Any:
        """A copy of a JSON-like document (dicts, lists, strings) with every string masked."""
        if isinstance(document, str):
            return self.text(document)
        if isinstance(document, dict):
            return {self.data(k): self.data(v) for k, v in document.items()}
        if isinstance(document, (list, tuple)):
            return [self.data(item) for item in document]
        return document

    def stream(self) -> MaskedStream:
        """A masker for one byte stream read in chunks (a value may be split between two)."""
        return MaskedStream(self)

    def mask_bytes(self, data: bytes) -> bytes:
        """data with every value (as UTF-8) replaced by ***."""
        return data if self._bytes is None else self._bytes.sub(MASK.encode(), data)


class MaskedStream:
    """Masks a byte stream chunk by chunk, holding back a tail that may be the start of a value."""

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """What of the stream so far can be written now, masked."""
        data = self._masker.mask_bytes(self._pending + chunk)
        held = self._masker.prefix_at_end(data)
        self._pending = data[len(data) - held :]
        return data[: len(data) - held]

    def close(self) -> bytes:
        """The rest of the stream (masked already)."""
        rest, self._pending = self._pending, b""
        return rest


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Reporter:
    """Writes progress and events; thread-safe so parallel targets can share one."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        quiet: bool = False,
        masker: Masker | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.masker = masker if masker is not None else Masker()  # every line goes out through it
        self._lock = threading.Lock()
        self._bar_shown = False

    def line(self, text: str) -> None:
        """One event line (timestamped when not on a terminal)."""
        if self.quiet:
            return
        text = self.masker.text(text)
        with self._lock:
            self._clear_bar()
            if self.tty:
                self.stream.write(text + "\n")
            else:
                stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                self.stream.write(f"{stamp} {text}\n")
            self.stream.flush()

    def target(self, label: str, text: str) -> None:
        """An event about one target."""
        self.line(f"[{label}] {text}")

    def progress(self, label: str, what: str, total: int) -> Callable[[int], None]:
        """Return advance(n) that draws a bar on a terminal or logs a line every few seconds."""
        started = time.monotonic()
        state = {"done": 0, "last": started}

        def advance(n: int) -> None:
            state["done"] += n
            now = time.monotonic()
            finished = state["done"] >= total
            interval = 0.1 if self.tty else PROGRESS_LINE_SECONDS
            if not finished and now - state["last"] < interval:
                return
            state["last"] = now
            done = int(state["done"])
            rate = done / max(now - started, 1e-6)
            pct = 100.0 * done / total if total else 100.0
            text = f"{what} {pct:5.1f}% {human_size(done)}/{human_size(total)} {human_size(rate)}/s"
            if self.tty and not self.quiet:
                self._draw_bar(label, pct, text, finished)
            elif not finished:
                self.target(label, text)

        return advance

    def _draw_bar(self, label: str, pct: float, text: str, finished: bool) -> None:
        width = 24
        filled = int(width * min(pct, 100.0) / 100)
        bar = "#" * filled + "-" * (width - filled)
        shown = self.masker.text(f"[{label}] [{bar}] {text}")
        with self._lock:
            self.stream.write(f"\r{shown}\x1b[K")
            self._bar_shown = not finished
            if finished:
                self.stream.write("\n")
            self.stream.flush()

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[K")
            self._bar_shown = False


def emit_json(document: Any, stream: TextIO | None = None, masker: Masker | None = None) -> None:
    """Write the machine-readable result to stdout (masked, when a masker is given)."""
    out = stream or sys.stdout
    shown = masker.data(document) if masker is not None else document
    out.write(json.dumps(shown, indent=2, sort_keys=True) + "\n")
    out.flush()
