"""Which SSH client carries a push: OpenSSH's ``ssh`` where a recent one is installed, else paramiko.

Both reach a target the same way (``ssh.connect``'s dial, hop order, host key rules, keys in
memory, errors) and give the deploy the same ``Executor``; OpenSSH moves the bytes in C, over
one master per hop that a whole fleet shares (see ``ssh.openssh``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from deployer.errors import ConfigError

if TYPE_CHECKING:
    from deployer.remote.executor import OutputSink, RunResult
    from deployer.ssh.connect import ConnectOptions
    from deployer.ssh.route import Route

TransportChoice = Literal["auto", "openssh", "paramiko"]
CHOICES: tuple[TransportChoice, ...] = ("auto", "openssh", "paramiko")


class Session(Protocol):
    """A logged-in target: an Executor that is closed when done."""

    label: str

    def run(
        self,
        script: str,
        *,
        upload: Callable[[BinaryIO], object] | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run script with sh on the target (see remote.executor.Executor)."""
        ...

    def close(self) -> None:
        """Close the session (and what only it uses)."""
        ...


class Transport(Protocol):
    """Opens sessions to targets; closing it ends whatever they shared."""

    name: str

    def connect(self, route: Route, options: ConnectOptions) -> Session:
        """Log in to route's target hop by hop, verifying every host key."""
        ...

    def close(self) -> None:
        """End every connection this transport made."""
        ...


class ParamikoTransport:
    """paramiko in this process: one connection per target (``ssh.connect``)."""

    name = "paramiko"

    def connect(self, route: Route, options: ConnectOptions) -> Session:
        """Connect with ssh.connect."""
        from deployer.ssh.connect import connect

        return connect(route, options)

    def close(self) -> None:
        """Nothing shared: each connection is closed by its user."""


def open_transport(
    choice: TransportChoice, env: Mapping[str, str], on_notice: Callable[[str], None]
) -> Transport:
    """The transport to use: OpenSSH (auto, when installed and new enough) or paramiko.

    on_notice hears why auto fell back to paramiko; --transport openssh without a usable ssh is
    a ConfigError naming what is missing.
    """
    if choice == "paramiko":
        return ParamikoTransport()
    from deployer.ssh.openssh.binary import MINIMUM, find_openssh

    found = find_openssh(env.get("PATH"))
    if isinstance(found, str):
        if choice == "openssh":
            raise ConfigError(
                f"--transport openssh: {found} — install OpenSSH's client"
                f" {MINIMUM[0]}.{MINIMUM[1]} or newer (openssh-client), or use --transport auto"
            )
        on_notice(f"the SSH transport is paramiko: {found} (OpenSSH is faster on fast links)")
        return ParamikoTransport()
    from deployer.ssh.openssh.transport import OpenSSHTransport

    return OpenSSHTransport(found.path, env)
