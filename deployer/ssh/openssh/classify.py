"""Why an ssh of the OpenSSH path failed, from what it logged (pure): the same errors as paramiko's.

A master that exits before it is logged in failed its handshake or its login; a jump host's
master that refuses a stdio forward says why in its log ("open failed: ..."). The wording of each
error is ``ssh.failures``', shared with the paramiko path; host key refusals never get here (the
broker holds deployer's own verdict).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from deployer.errors import DeployerError
from deployer.ssh.failures import (
    channel_failed,
    dropped_while_authenticating,
    forward_prohibited,
    handshake_failed,
    key_refused,
    nothing_listens,
)
from deployer.ssh.route import Route

_AUTH = re.compile(r"Permission denied \(|Too many authentication failures|no mutual signature")
_PROHIBITED = re.compile(r"open failed: administratively prohibited")
_CONNECT_FAILED = re.compile(r"open failed: connect failed")
_NOISE = ("debug", "OpenSSH_", "Authenticated to ", "Transferred: ", "Bytes per second: ")


def last_message(lines: Sequence[str]) -> str:
    """The last line ssh logged that is not debug output, as a short reason."""
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith(_NOISE):
            return text.rstrip(".").removeprefix("ssh: ")
    return ""


def login_failure(
    route: Route,
    index: int,
    lines: Sequence[str],
    *,
    key_checked: bool,
    offered: Sequence[str],
    auth_hint: str,
) -> DeployerError:
    """The error for hop index's master that ended before it was logged in.

    key_checked: the hop's host key was presented and accepted, so the handshake was through.
    """
    text = "\n".join(lines)
    if key_checked and _AUTH.search(text):
        return key_refused(route, index, offered, auth_hint)
    why = last_message(lines) or "the connection closed"
    if key_checked:
        return dropped_while_authenticating(route, index, why)
    return handshake_failed(route, index, why)


def forward_failure(route: Route, index: int, lines: Sequence[str], said: str) -> DeployerError:
    """The error for a jump host that did not open a channel to hop index.

    lines: what the jump host's master logged while it was asked; said: the master's reply.
    """
    via, hop = route.hops[index - 1], route.hops[index]
    text = "\n".join(lines)
    if _PROHIBITED.search(text):
        return forward_prohibited(via, hop)
    if _CONNECT_FAILED.search(text):
        return nothing_listens(via, hop)
    return channel_failed(via, hop, last_message(lines) or said)
