"""Quoting for the remote POSIX shell: every value that goes into a script goes through q()."""

from __future__ import annotations

import shlex


def q(value: str) -> str:
    """Quote one word for the remote POSIX shell."""
    return shlex.quote(value)
