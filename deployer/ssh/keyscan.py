"""deployer keyscan: every hop's host keys as known_hosts lines, with fingerprints to verify."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from deployer.ssh.connect import ConnectOptions, scan_host_keys
from deployer.ssh.hostkeys import (
    HostKeyPolicy,
    Verdict,
    fingerprint,
    host_id,
    known_hosts_line,
    stored_key_type,
)
from deployer.ssh.route import Route

ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
)


# How a scanned key compares with what is trusted: "unpinned" is a key of another type than the
# one a known host proved it holds (not trusted, and not a sign of a changed host either).
KeyStatus = Literal["known", "new", "changed", "revoked", "unpinned"]


@dataclass(frozen=True)
class ScannedKey:
    """One host key of one hop, and how it compares with what the user already trusts."""

    hop: str
    host_id: str
    key_type: str
    fingerprint: str
    line: str
    status: KeyStatus


def hashed_line(host: str, port: int, key_type: str, key_blob: bytes) -> str:
    """A known_hosts line with the host name hashed (|1|salt|hmac), like ssh-keygen -H."""
    salt = os.urandom(20)
    digest = hmac.new(
        salt, host_id(host, port).lower().encode(), hashlib.sha1
    ).digest()  # ssh hashes lowercase
    name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return f"{name} {key_type} {base64.b64encode(key_blob).decode()}"


def _statuses(
    trusted: HostKeyPolicy, host: str, port: int, keys: list[tuple[str, bytes]]
) -> list[KeyStatus]:
    """Each of one hop's keys compared with trusted (another type of a proven host: unpinned)."""
    names: dict[Verdict, KeyStatus] = {Verdict.MATCH: "known", Verdict.UNKNOWN: "new",
                                       Verdict.CHANGED: "changed", Verdict.REVOKED: "revoked"}  # fmt: skip
    statuses = [names[trusted.verdict(host, port, key_type, blob)] for key_type, blob in keys]
    pinned_types = trusted.known_types(host, port)
    if "known" not in statuses:
        return statuses
    return [
        "unpinned" if status == "changed" and key_type not in pinned_types else status
        for status, (key_type, _) in zip(statuses, keys, strict=True)
    ]


def scan(
    route: Route,
    options: ConnectOptions,
    trusted: HostKeyPolicy,
    hashed: bool,
    *,
    login: HostKeyPolicy | None = None,
    accept: Callable[[list[ScannedKey]], None] = lambda keys: None,
) -> list[ScannedKey]:
    """Scan every hop of a route, each key's status relative to trusted.

    Hops before the target are logged in to (to reach the next one) checking their keys with
    login; without one, any key is taken, as `deployer keyscan` prints keys for a person to
    verify. accept sees each hop's keys before that hop is logged in to, and may refuse them.
    """
    policy = login if login is not None else HostKeyPolicy(accept_new=True)
    scanning = replace(options, host_keys=policy, on_notice=lambda _: None)
    results: list[ScannedKey] = []
    seen: set[tuple[str, bytes]] = set()

    def on_hop(index: int, found: list[tuple[str, bytes]]) -> None:
        host, port = route.hops[index].known_as  # under its HostKeyAlias when it has one
        ident = host_id(host, port)
        keys = [(stored_key_type(key_type), blob) for key_type, blob in found]
        keys = [key for key in dict.fromkeys(keys) if (ident, key[1]) not in seen]
        seen.update((ident, blob) for _, blob in keys)
        hop = [
            ScannedKey(route.describe(index), ident, key_type, fingerprint(blob),
                       (hashed_line if hashed else known_hosts_line)(host, port, key_type, blob), status)
            for (key_type, blob), status in zip(keys, _statuses(trusted, host, port, keys), strict=True)
        ]  # fmt: skip
        accept(hop)
        results.extend(hop)

    scan_host_keys(route, scanning, ALGORITHMS, on_hop)
    return results


def scan_routes(
    routes: Sequence[Route], options: ConnectOptions, *, hashed: bool
) -> list[ScannedKey]:
    """Every hop's keys on every route, each line once (hashed lines are all different)."""
    keys: list[ScannedKey] = []
    for route in routes:
        for key in scan(route, options, options.host_keys, hashed):
            if key.line not in {k.line for k in keys} or hashed:
                keys.append(key)
    return keys
