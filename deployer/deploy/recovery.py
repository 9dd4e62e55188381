"""After the switch: what it takes to put the previous release back, and what to say when it cannot be.

A deploy that switched ``current`` and then fails in any way (a hook, a lost route, a timeout, an
interrupt, a bug) switches back, reconnecting through the same route when the connection died
(``retrying``). When the target stays out of reach, the new release is live and unconfirmed:
``unconfirmed_error`` is the one line that says which release is live, which one was live
before, and the exact ``deployer rollback`` command; the lock stays, its info saying the same.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from deployer.deploy.upload import RETRY_DELAYS
from deployer.errors import ConnectError, TransferError, UnconfirmedError

T = TypeVar("T")

# Seconds a script run after the switch may take (switching, switching back, discarding): they are
# quick, so a connection that silently died is noticed within this instead of never.
SCRIPT_TIMEOUT = 60.0


def retrying(
    action: Callable[[], T],
    reconnect: Callable[[], None] | None,
    *,
    reconnect_first: bool,
    on_retry: Callable[[BaseException, float], None],
    delays: Sequence[float] = RETRY_DELAYS,
) -> T:
    """Run action; while the connection is what failed, reconnect and run it again after each delay.

    A ConnectError or TransferError after the last delay is raised; any other error at once.
    Without `reconnect` (a local executor) the action is simply tried again.
    """
    pending = reconnect_first
    for delay in (*delays, None):
        try:
            if pending and reconnect is not None:
                reconnect()
            return action()
        except (ConnectError, TransferError) as exc:
            if delay is None:
                raise
            on_retry(exc, delay)
            time.sleep(delay)
            pending = True
    raise AssertionError("unreachable: the last attempt returns or raises")


def rollback_command(route: str, path: str, previous: str, token: str, after: Sequence[str]) -> str:
    """The `deployer rollback` command that switches back and takes over the lock left behind."""
    hooks = "".join(f" --after {shlex.quote(command)}" for command in after)
    return (
        f"deployer rollback {route} --path {shlex.quote(path)} --release {previous}"
        f" --lock-token {token}{hooks}"
    )


def unconfirmed_error(
    label: str,
    release: str,
    previous: str,
    why: str,
    *,
    certain: bool,
    rollback: str,
    unlock: str,
) -> UnconfirmedError:
    """The one line for a release left live and unconfirmed: what is live, what was, what to run."""
    live = (
        f"release {release} is live but unconfirmed"
        if certain
        else f"current may point at release {release} (the switch's reply never came)"
    )
    if previous:
        then = f"check the site, then run `{rollback}` (or `{unlock}` to keep {release})"
        before = f"the release before it is {previous}"
    else:
        then = f"check the site, then run `{unlock}`"
        before = "there was no release before it"
    return UnconfirmedError(
        f"{label}: {live} — {why}; {before}, and the deploy lock stays (its info says so)."
        f" Once {label} can be reached, {then}"
    )
