"""Which SSH client carries a push: OpenSSH's ``ssh`` where it pays off and is installed, else paramiko.

Both reach a target the same way (``ssh.connect``'s dial, hop order, host key rules, keys in
memory, errors) and give the deploy the same ``Executor``; OpenSSH moves the bytes in C, over
one master per hop that a whole fleet shares (see ``ssh.openssh``), but its login takes two more
round trips per hop than paramiko's (it asks which methods the server allows, and whether it
takes the key, before it signs). ``--ssh-client auto`` weighs the two as measured (README
"Performance"): OpenSSH for a fleet, or for a large artifact over a fast link; paramiko for the
rest, where the round trips are what counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

from deployer.errors import ConfigError
from deployer.remote.executor import Executor

if TYPE_CHECKING:
    from deployer.ssh.connect import ConnectOptions
    from deployer.ssh.contact import FirstContact
    from deployer.ssh.route import Route

ClientChoice = Literal["auto", "openssh", "paramiko"]
CLIENT_CHOICES: tuple[ClientChoice, ...] = ("auto", "openssh", "paramiko")

# One target: below this, OpenSSH's faster stream cannot pay back its longer login. Measured at
# 10 ms / 1 Gbit (README "Performance"): paramiko is faster for 32 MB of source and for 66 MB in
# 3000 files, level for one 210 MB file.
AUTO_OPENSSH_BYTES = 128 << 20
# One target: the first hop must answer (TCP connect and SSH banner: about two round trips)
# within this for the link to count as fast, where paramiko's stream is what limits a push.
FAST_CONTACT = 0.05


class Session(Executor, Protocol):
    """A logged-in target: an Executor that is closed when done."""

    def close(self) -> None:
        """Close the session (and what only it uses)."""
        ...


class SshClient(Protocol):
    """Opens sessions to targets; closing it ends whatever they shared."""

    name: str

    def connect(
        self, route: Route, options: ConnectOptions, first: FirstContact | None = None
    ) -> Session:
        """Log in to route's target hop by hop, verifying every host key (first: the
        first hop, when dialled already)."""
        ...

    def close(self) -> None:
        """End every connection this client made."""
        ...


class ParamikoClient:
    """paramiko in this process: one connection per target (``ssh.connect``)."""

    name = "paramiko"

    def connect(
        self, route: Route, options: ConnectOptions, first: FirstContact | None = None
    ) -> Session:
        """Connect with ssh.connect."""
        from deployer.ssh.connect import connect
        from deployer.ssh.contact import taken

        return connect(route, options, taken(first))

    def close(self) -> None:
        """Nothing shared: each connection is closed by its user."""


class LinkChoice:
    """auto for one target and a large artifact: OpenSSH over a fast link, paramiko otherwise.

    The first hop is dialled once; how soon it answers (a TCP connect and the SSH banner, about
    two round trips) tells a nearby, fast link from a distant one. The connection then goes to
    the chosen client, which logs in over it.
    """

    def __init__(self, openssh: Callable[[], SshClient]) -> None:
        self.name = "paramiko"  # until a connection chose otherwise
        self._openssh_factory = openssh
        self._openssh: SshClient | None = None
        self._paramiko = ParamikoClient()

    def connect(
        self, route: Route, options: ConnectOptions, first: FirstContact | None = None
    ) -> Session:
        """Dial the first hop, choose by how soon it answers, and log in with the choice."""
        if first is None:
            first = first_contact(route, options.timeout)
        chosen: SshClient = self._paramiko
        if first.answered_within(FAST_CONTACT):
            if self._openssh is None:
                self._openssh = self._openssh_factory()
            chosen = self._openssh
        self.name = chosen.name
        return chosen.connect(route, options, first)

    def close(self) -> None:
        """Close the OpenSSH client if a connection used it."""
        if self._openssh is not None:
            self._openssh.close()


def first_contact(route: Route, timeout: float) -> FirstContact:
    """route's first hop, dialled from now on and watched as long as auto's choice needs."""
    from deployer.ssh.contact import FirstContact

    return FirstContact(route, timeout, watch=FAST_CONTACT)


def open_client(
    choice: ClientChoice,
    env: Mapping[str, str],
    on_notice: Callable[[str], None],
    *,
    targets: int = 1,
    artifact_bytes: int = 0,
) -> SshClient:
    """The SSH client of a push to `targets` targets of an artifact of `artifact_bytes`.

    openssh and paramiko are taken as asked; --ssh-client openssh without a usable ssh is a
    ConfigError naming what is missing. auto takes OpenSSH (when it is installed) for a fleet,
    and for one target when the artifact is large and the link fast (see LinkChoice); on_notice
    hears when it wanted OpenSSH and found none.
    """
    worth_it = targets > 1 or artifact_bytes >= AUTO_OPENSSH_BYTES
    if choice == "paramiko" or (choice == "auto" and not worth_it):
        return ParamikoClient()
    from deployer.ssh.openssh.binary import MINIMUM, find_openssh

    found = find_openssh(env.get("PATH"))
    if isinstance(found, str):
        if choice == "openssh":
            raise ConfigError(
                f"--ssh-client openssh: {found} — install OpenSSH's client"
                f" {MINIMUM[0]}.{MINIMUM[1]} or newer (openssh-client), or use --ssh-client auto"
            )
        on_notice(f"the SSH client is paramiko: {found} (OpenSSH is faster on fast links)")
        return ParamikoClient()
    from deployer.ssh.openssh.client import OpenSSHClient

    def openssh() -> SshClient:
        return OpenSSHClient(found.path, env)

    if choice == "openssh" or targets > 1:
        return openssh()
    return LinkChoice(openssh)
