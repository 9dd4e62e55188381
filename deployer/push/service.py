"""Pushes and target commands over SSH: connect to each target along its route and run the deploy.

``push_over_ssh`` deploys one payload to every route all-or-nothing (see ``push.fleet``);
``for_each_target`` runs a command (releases, rollback, unlock, exec) on each target in turn;
``ask_every_target`` asks every target at once (status), whichever of them fail.
All connect through ``ssh.connect``'s dial and checks (a push with the SSH client
``ssh.clients`` chose), so that every command verifies host keys the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from deployer.deploy.at_once import target_deploy
from deployer.deploy.outcome import Outcome, Provenance, Status
from deployer.deploy.payload import Payload
from deployer.deploy.settings import PushSettings
from deployer.deploy.sftp.target import SftpDeploy
from deployer.deploy.transport import AutoDeploy, PhasedDeploy, Transport
from deployer.errors import DeployerError
from deployer.output import Reporter
from deployer.push.fleet import FleetSettings, push_fleet
from deployer.ssh.access import Access, connect_options, route_flags
from deployer.ssh.clients import ClientChoice, Session, SshClient, open_client
from deployer.ssh.connect import connected
from deployer.ssh.connection import Connection
from deployer.ssh.contact import FirstContact, taken
from deployer.ssh.route import Route
from deployer.ssh.sftp import SftpSession, open_sftp

# Seconds a reply may take on the fresh SFTP channel that cleans up after an interrupt (a CI job
# that is cancelled gets killed soon after its SIGTERM).
CLEANUP_TIMEOUT = 20.0


@contextmanager
def connection_to(
    route: Route, access: Access, reporter: Reporter, first: FirstContact | None = None
) -> Iterator[Connection]:
    """A connection along route that is closed (every hop) when the block ends (first: its
    first hop, when dialled already)."""
    options = connect_options(route, access, reporter.line)
    with connected(route, options, taken(first)) as connection:
        yield connection


@contextmanager
def session_to(
    route: Route,
    access: Access,
    reporter: Reporter,
    client: SshClient,
    first: FirstContact | None = None,
) -> Iterator[Session]:
    """A session along route with `client`, closed when the block ends."""
    session = client.connect(route, connect_options(route, access, reporter.line), first)
    try:
        yield session
    finally:
        session.close()


@dataclass
class PushResult:
    """Every target's outcome, the first failure, and which targets were reached at all."""

    outcomes: list[Outcome]
    error: DeployerError | None
    established: list[str] = field(default_factory=list)  # labels of targets connected to


def push_over_ssh(
    routes: list[Route],
    access: Access,
    payload: Payload,
    settings: PushSettings,
    provenance: Provenance,
    reporter: Reporter,
    fleet: FleetSettings,
    transport: Transport = "auto",
    ssh_client: ClientChoice = "auto",
    contact: FirstContact | None = None,
) -> PushResult:
    """Deploy payload to every route all-or-nothing; connections are closed when it returns.

    With transport "auto", a target that runs no commands is deployed to over SFTP. ssh_client
    chooses who carries the shell path (see ssh.clients); SFTP always goes over paramiko.
    contact: the first route's first hop, dialled already (its first connection takes it; the
    caller closes it, in case none did).
    """
    established: list[str] = []  # --mode auto falls back only if no connection ever came up
    dialled = [contact] if contact is not None else []  # taken by the first connection only
    with contextlib.ExitStack() as connections:
        connections.callback(payload.close)  # shared streams go once every upload is done
        client = open_client(
            "paramiko" if transport == "sftp" else ssh_client, access.env, reporter.line,
            targets=len(routes), artifact_bytes=payload.artifact.total_size,
        )  # fmt: skip
        connections.callback(client.close)  # after every session: a fleet shares its masters

        def start(index: int) -> PhasedDeploy:
            def first() -> FirstContact | None:
                return dialled.pop() if index == 0 and dialled else None

            def connect() -> Session:
                session = connections.enter_context(
                    session_to(routes[index], access, reporter, client, first())
                )
                established.append(session.label)
                return session

            def connect_files() -> Connection:
                connection = connections.enter_context(
                    connection_to(routes[index], access, reporter, first())
                )
                established.append(connection.label)
                return connection

            session = connect()
            route = route_flags(routes[index])
            # the SFTP path's paramiko connection (a reconnect replaces it); over OpenSSH, one
            # is made when a target turns out to run no commands
            latest: list[Connection | None] = [session if isinstance(session, Connection) else None]

            def files() -> Connection:
                connection = latest[0]
                if connection is None:
                    connection = latest[0] = connect_files()
                return connection

            def reconnect_files() -> SftpSession:
                latest[0] = None
                return open_sftp(files())

            def over_sftp() -> SftpDeploy:
                return SftpDeploy(
                    open_sftp(files()), payload, settings, provenance, reporter,
                    reconnect=reconnect_files, route=route,
                    reopen=lambda: open_sftp(files(), timeout=CLEANUP_TIMEOUT),
                )  # fmt: skip

            if transport == "sftp":
                return over_sftp()
            shell = target_deploy(session, payload, settings, provenance, reporter, reconnect=connect,
                                  route=route, sole=len(routes) == 1)  # fmt: skip
            return shell if transport == "shell" else AutoDeploy(shell, over_sftp, reporter)

        outcomes, error = push_fleet([str(r.target) for r in routes], start, fleet)
    for outcome in outcomes:
        if outcome.target in established:
            outcome.details["ssh_client"] = client.name
    return PushResult(outcomes, error, established)


def for_each_target(
    routes: list[Route],
    access: Access,
    reporter: Reporter,
    action: Callable[[Connection], Outcome],
) -> tuple[list[Outcome], DeployerError | None]:
    """Run action on each target in turn; stop at the first failure and report the rest as skipped."""
    outcomes: list[Outcome] = []
    error: DeployerError | None = None
    for route in routes:
        if error is not None:
            outcomes.append(
                Outcome(str(route.target), Status.SKIPPED, error="an earlier target failed")
            )
            continue
        try:
            with connection_to(route, access, reporter) as connection:
                outcomes.append(action(connection))
        except DeployerError as exc:
            error = exc
            outcomes.append(
                Outcome(
                    str(route.target), Status.FAILED, error=str(exc), exit_code=int(exc.exit_code)
                )
            )
    return outcomes, error


def ask_every_target(
    routes: list[Route],
    access: Access,
    reporter: Reporter,
    action: Callable[[Connection], Outcome],
    parallel: int = 10,
) -> tuple[list[Outcome], list[DeployerError]]:
    """Run action on every target, `parallel` at a time; one that fails does not stop the others.

    Returns an outcome per target (FAILED for those that failed) and their errors, in route order.
    """

    def ask(route: Route) -> Outcome | DeployerError:
        try:
            with connection_to(route, access, reporter) as connection:
                return action(connection)
        except DeployerError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(routes)))) as pool:
        answers = list(pool.map(ask, routes))
    outcomes: list[Outcome] = []
    errors: list[DeployerError] = []
    for route, answer in zip(routes, answers, strict=True):
        if isinstance(answer, DeployerError):
            errors.append(answer)
            answer = Outcome(str(route.target), Status.FAILED, error=str(answer),
                             exit_code=int(answer.exit_code))  # fmt: skip
        outcomes.append(answer)
    return outcomes, errors
