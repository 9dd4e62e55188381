"""What the user sees: a progress bar on a terminal, timestamped lines in CI, JSON for machines.

Human-readable lines always go to stderr; with ``--json`` the final document is the only thing
written to stdout, so ``deployer push --json | jq`` works in a pipeline.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

PROGRESS_LINE_SECONDS = 5.0  # how often CI logs get an upload progress line


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
        self, stream: TextIO | None = None, *, tty: bool | None = None, quiet: bool = False
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self._lock = threading.Lock()
        self._bar_shown = False

    def line(self, text: str) -> None:
        """One event line (timestamped when not on a terminal)."""
        if self.quiet:
            return
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
        with self._lock:
            self.stream.write(f"\r[{label}] [{bar}] {text}\x1b[K")
            self._bar_shown = not finished
            if finished:
                self.stream.write("\n")
            self.stream.flush()

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[K")
            self._bar_shown = False


def emit_json(document: Any, stream: TextIO | None = None) -> None:
    """Write the machine-readable result to stdout."""
    out = stream or sys.stdout
    out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    out.flush()
