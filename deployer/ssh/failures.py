"""What a failed hop says: the one wording of each route and login failure, whichever client met it.

paramiko (``ssh.connect``) and OpenSSH (``ssh.openssh``) reach the same hops and fail in the same
ways; both build their errors here, so that a refused forward or a refused key reads the same
line with the same exit code on either path.
"""

from __future__ import annotations

from collections.abc import Sequence

from deployer.errors import AuthError, ConnectError
from deployer.ssh.route import Endpoint, Route

_BEHIND_TUNNEL = (
    " (the tunnel is up but nothing answers behind it — is sshd running on the intranet server?)"
)


def forward_prohibited(via: Endpoint, hop: Endpoint) -> ConnectError:
    """The jump host refused the direct-tcpip channel (its key's permitopen does not allow it)."""
    return ConnectError(
        f"jump host {via} refused to forward to {hop.address} (administratively prohibited)"
        f' — allow it with permitopen="{hop.address}" on the jump host\'s key'
    )


def nothing_listens(via: Endpoint, hop: Endpoint) -> ConnectError:
    """The jump host could not connect to the next hop: usually a tunnel that is down."""
    return ConnectError(
        f"nothing listens on {hop.address} on {via} — is the tunnel up?"
        " (check the intranet server's ssh -R / deployer tunnel)"
    )


def channel_failed(via: Endpoint, hop: Endpoint, why: str) -> ConnectError:
    """The jump host did not open a channel to the next hop for another reason."""
    return ConnectError(f"jump host {via} did not open a channel to {hop.address}: {why}")


def handshake_failed(route: Route, index: int, why: str) -> ConnectError:
    """Hop index closed the connection before the SSH handshake was through."""
    return ConnectError(
        f"{route.describe(index)} closed the connection during the SSH handshake: {why}"
        + (_BEHIND_TUNNEL if index > 0 else " — is this port an SSH server?")
    )


def dropped_while_authenticating(route: Route, index: int, why: str) -> ConnectError:
    """Hop index dropped the connection after its host key was accepted, before the login."""
    return ConnectError(
        f"{route.describe(index)} dropped the connection while authenticating: {why}"
    )


def no_key(route: Route, index: int) -> AuthError:
    """Nothing to log in to hop index with."""
    jump = "SSH_JUMP_PRIVATE_KEY or --jump-key-file, or " if index < len(route.jumps) else ""
    return AuthError(
        f"no key to log in to {route.describe(index)} — set {jump}SSH_PRIVATE_KEY, pass"
        " --key-file, or start ssh-agent"
    )


def key_refused(route: Route, index: int, offered: Sequence[str], auth_hint: str) -> AuthError:
    """Hop index refused every key offered (by their SHA256 fingerprints)."""
    user = route.hops[index].user
    return AuthError(
        f"{route.describe(index)} refused the key ({', '.join(offered)}) for user '{user}'"
        f" — check the user name and that {auth_hint.format(user=user)}"
    )
