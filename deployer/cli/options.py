"""Groups of click options applied as one decorator (each command module defines its groups)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def apply(func: F, options: Sequence[Callable[[Any], Any]]) -> F:
    """func with the options added, listed in the order --help shows them."""
    for option in reversed(options):
        func = option(func)
    return func
