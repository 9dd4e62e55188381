"""``deployer setup gitlab``: a deploy key and the route's host keys as CI/CD variables of a project.

It generates an ed25519 key pair (unless the project already has one), stores the private key
base64-encoded as a masked, protected SSH_PRIVATE_KEY scoped to the environment, stores the host
keys of every hop (scanned, shown, confirmed) as SSH_KNOWN_HOSTS, and prints the restricted
authorized_keys lines for the jump host and the target. Reading and planning come first; nothing
is written before every check passed and the host keys were confirmed. Existing variables are
updated only when they differ, so running it again changes nothing.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from deployer.errors import ConfigError, HostKeyError, PrivateKeyError
from deployer.gitlab.variables import Change, Variable, find, plan_change
from deployer.ssh.authorized_keys import ci_jump_key_options, ci_target_key_options
from deployer.ssh.forwards import Forward, parse_forwards
from deployer.ssh.hostkeys import HostKeyPolicy, host_id, parse_known_hosts
from deployer.ssh.route import Route

if TYPE_CHECKING:  # keyscan brings paramiko: imported only when a route is scanned
    from deployer.ssh.connect import ConnectOptions
    from deployer.ssh.keyscan import ScannedKey

PRIVATE_KEY = "SSH_PRIVATE_KEY"
KNOWN_HOSTS = "SSH_KNOWN_HOSTS"
_PROJECT = re.compile(r"^(\d+|[\w.-]+(/[\w.-]+)+)$")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


# ---------------------------------------------------------------------------- pure parts


def generate_key(comment: str) -> tuple[str, str]:
    """A new ed25519 key: (OpenSSH private key base64-encoded on one line, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()  # fmt: skip
    # masked values must be one line of base64-alphabet characters: encode the whole file
    return base64.b64encode(private).decode(), f"{public} {comment}"


def public_key_of(value: str, comment: str) -> str:
    """The public key line of a stored SSH_PRIVATE_KEY value (raw or base64)."""
    from deployer.ssh.keys import load_private_key, public_key_line

    try:
        return public_key_line(
            load_private_key(value, source=f"the project's {PRIVATE_KEY}"), comment
        )
    except PrivateKeyError as exc:
        raise PrivateKeyError(f"{exc} (rerun with --rotate to replace it with a new key)") from None


def merge_known_hosts(
    existing: str, scanned: Sequence[ScannedKey], replaced: Sequence[tuple[str, int]] = ()
) -> str:
    """The existing lines, then the keys of hosts that had none; a replaced hop's lines are new.

    Lines of hops named by --replace-host-key give way to every key scanned there; elsewhere only
    new hosts' keys are added (a known host keeps the lines it has: keys of other types it
    offers are not trusted behind the user's back).
    """
    kept: list[str] = []
    for line in existing.splitlines():
        entries = parse_known_hosts(line, KNOWN_HOSTS, lenient=True)
        dropped = (
            entries
            and entries[0].marker == ""
            and any(entries[0].matches(h, p) for h, p in replaced)
        )
        if line.strip() and not dropped:
            kept.append(line.rstrip())
    names = {host_id(h, p) for h, p in replaced}
    added = [
        key.line
        for key in scanned
        if key.status == "new" or (key.host_id in names and key.status != "revoked")
    ]
    return "\n".join(dict.fromkeys(kept + added)) + "\n"


def replaced_hops(values: Sequence[str], routes: Sequence[Route]) -> list[tuple[str, int]]:
    """The hops --replace-host-key names (HOST for every port, HOST:PORT or [HOST]:PORT)."""
    hops = list(dict.fromkeys(hop.known_as for route in routes for hop in route.hops))
    chosen: list[tuple[str, int]] = []
    for value in values:
        wanted = value.strip().lower()
        named = [
            (h, p) for h, p in hops
            if wanted in (host_id(h, p).lower(), h.lower(), f"{h}:{p}".lower())
        ]  # fmt: skip
        if not named:
            raise ConfigError(
                f"--replace-host-key {value!r} names no hop of the route — use one of:"
                f" {', '.join(host_id(h, p) for h, p in hops)}"
            )
        chosen += named
    return list(dict.fromkeys(chosen))


def refuse_changed(
    keys: Sequence[ScannedKey], replaced: Sequence[tuple[str, int]], environment: str
) -> None:
    """A hop whose key differs from the project's SSH_KNOWN_HOSTS stops setup, unless replaced."""
    names = {host_id(h, p) for h, p in replaced}
    for key in keys:
        presented = f"{key.host_id} {key.key_type} {key.fingerprint}"
        if key.status == "revoked":
            raise HostKeyError(
                f"{key.hop} presents a key that {KNOWN_HOSTS} [{environment}] marks @revoked"
                f" ({presented}) — nothing was changed; ask the server's owner"
            )
        if key.status == "changed" and key.host_id not in names:
            raise HostKeyError(
                f"the host key of {key.hop} CHANGED: it presents {presented}, but {KNOWN_HOSTS}"
                f" [{environment}] holds another key for {key.host_id} — possible man-in-the-middle;"
                " nothing was changed. If the server was reinstalled, verify the new key with its"
                f" owner and rerun with --replace-host-key '{key.host_id}'"
            )


def route_forwards(route: Route, given: Sequence[str]) -> tuple[Forward, ...]:
    """The tunnel forwards behind a route: -R as given, else derived from the target's address."""
    if given:
        return parse_forwards(given)
    target = route.target
    if route.jumps and target.host in _LOOPBACK:
        # a loopback target behind a jump host is a reverse tunnel's port (ssh -R PORT:localhost:22)
        return (Forward(port=target.port, host="localhost", host_port=22),)
    # otherwise the last hop connects to the target's own address: that is what the key may open
    return (Forward(port=target.port, host=target.host, host_port=target.port,
                    bind=target.host if route.jumps else None),)  # fmt: skip


def render_ci_key_lines(routes: Sequence[Route], given: Sequence[str], public: str) -> str:
    """authorized_keys lines for the CI key: on the last jump host and on each target."""
    blocks: list[str] = []
    for route in routes:
        forwards = route_forwards(route, given)
        lines = []
        if route.jumps:
            lines += [f"# Jump host {route.jumps[-1]}, ~/.ssh/authorized_keys: the CI key may reach"
                      f" {route.target.address} and run nothing.",
                      f"{ci_jump_key_options(forwards)} {public}"]  # fmt: skip
        lines += [f"# Target {route.target}, ~/.ssh/authorized_keys of the deploy user.",
                  f"{ci_target_key_options(forwards)} {public}"]  # fmt: skip
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(dict.fromkeys(blocks))  # a target given twice is printed once


# ---------------------------------------------------------------------------- the GitLab API


# ---------------------------------------------------------------------------- the command


def plan_key(
    existing: Sequence[Variable], environment: str, comment: str, rotate: bool
) -> tuple[Change, str | None]:
    """The SSH_PRIVATE_KEY change and the key's public line (None for a hidden existing key)."""
    current = find(existing, PRIVATE_KEY, environment)
    if current is None or rotate:  # an existing key is never replaced without --rotate
        value, public = generate_key(comment)
        wanted = Variable(
            PRIVATE_KEY, value, masked=True, protected=True, environment_scope=environment
        )
        change = plan_change(current, wanted)
        return (
            change if current is None else replace(change, reason="--rotate: a new key")
        ), public
    kept = public_key_of(current.value, comment) if current.value is not None else None
    wanted = Variable(
        PRIVATE_KEY, current.value, masked=True, protected=True, environment_scope=environment
    )
    return plan_change(current, wanted), kept


def plan_known_hosts(
    existing: Sequence[Variable],
    environment: str,
    routes: Sequence[Route],
    options: ConnectOptions,
    replace_keys: Sequence[str] = (),
) -> tuple[Change, list[ScannedKey]]:
    """Scan every hop (statuses relative to the project's SSH_KNOWN_HOSTS) and plan the merged value.

    Hops already known are checked against what is known: a jump host is logged in to only with
    a key the project (or the local known hosts) trusts or has no key for, and a changed or
    revoked key stops everything, unless --replace-host-key names that hop.
    """
    from deployer.ssh.keyscan import scan

    current = find(existing, KNOWN_HOSTS, environment)
    text = (current.value or "") if current is not None else ""
    project = tuple(parse_known_hosts(text, KNOWN_HOSTS, lenient=True))
    trusted = HostKeyPolicy(known=project)
    replaced = replaced_hops(replace_keys, routes)
    login = HostKeyPolicy(
        known=tuple(
            entry
            for entry in (*project, *options.host_keys.known)
            if not any(entry.matches(h, p) for h, p in replaced)
        ),
        pins=options.host_keys.pins,
        accept_new=True,  # a host nothing is known about: its keys are shown and confirmed
    )
    scanned: list[ScannedKey] = []
    for route in routes:
        seen = {key.line for key in scanned}
        found = scan(route, options, trusted, hashed=False, login=login,
                     accept=lambda keys: refuse_changed(keys, replaced, environment))  # fmt: skip
        scanned += [k for k in found if k.line not in seen]
    merged = merge_known_hosts(text, scanned, replaced)
    wanted = Variable(
        KNOWN_HOSTS, merged, masked=False, protected=False, environment_scope=environment
    )
    return plan_change(current, wanted), scanned


def check_project(project: str, environment: str) -> None:
    """Refuse a project that is no GROUP/NAME path or id, and an environment scope with spaces."""
    if not _PROJECT.match(project):
        raise ConfigError(
            f"--project {project!r} is not a project path — pass GROUP/NAME (or its numeric id)"
        )
    if not environment.strip() or any(c.isspace() for c in environment):
        raise ConfigError(
            f"--environment {environment!r} is not an environment scope — e.g. production or '*'"
        )


@dataclass
class SetupPlan:
    """What setup gitlab will change, the host keys it scanned and the deploy key's public line."""

    changes: list[Change]
    scanned: list[ScannedKey]
    public: str | None  # None: the project's key is hidden, so its public half is unknown here
    new_key: bool

    @property
    def changes_host_keys(self) -> bool:
        """SSH_KNOWN_HOSTS is created or updated (host keys to confirm first)."""
        return any(c.variable.key == KNOWN_HOSTS and c.action != "keep" for c in self.changes)


def plan_setup(
    existing: Sequence[Variable],
    project: str,
    environment: str,
    routes: Sequence[Route],
    options: ConnectOptions | None,
    *,
    rotate: bool,
    replace_keys: Sequence[str] = (),
) -> SetupPlan:
    """The key and (with routes) the known_hosts changes; routes are scanned, nothing is written."""
    key_change, public = plan_key(
        existing, environment, f"deployer-ci {project} {environment}", rotate
    )
    changes = [key_change]
    scanned: list[ScannedKey] = []
    if routes and options is not None:
        hosts_change, scanned = plan_known_hosts(
            existing, environment, routes, options, replace_keys
        )
        changes.append(hosts_change)
    new_key = key_change.action == "create" or "--rotate" in key_change.reason
    return SetupPlan(changes, scanned, public, new_key)
