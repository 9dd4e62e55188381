"""Interrupts (Ctrl-C, and SIGTERM from a cancelled CI job) that wait for the packet being written.

An interrupt becomes a KeyboardInterrupt wherever the main thread is. Raised in the middle of
writing an SSH packet, it leaves half a packet on the connection: the server then drops the whole
connection, and the cleanup that should follow (switch back, discard, unlock) has nothing left to
run on. Code that writes packets from the main thread (the SFTP path does) wraps each write in
``whole()``; an interrupt that arrives meanwhile is raised as soon as the write is complete.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = {"depth": 0, "pending": False}


def interrupt(signum: int, frame: object) -> None:
    """The SIGINT/SIGTERM handler: raise KeyboardInterrupt now, or once the current write is whole."""
    if _state["depth"]:
        _state["pending"] = True
        return
    raise KeyboardInterrupt


@contextmanager
def whole() -> Iterator[None]:
    """Hold interrupts of the main thread back until the block is done (other threads: no effect)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if not _state["depth"] and _state["pending"]:
            _state["pending"] = False
            raise KeyboardInterrupt
