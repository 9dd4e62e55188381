"""deployer keyscan: every hop's host keys as known_hosts lines, with fingerprints to verify."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class ScannedKey:
    """One host key of one hop, and how it compares with what the user already trusts."""

    hop: str
    host_id: str
    key_type: str
    fingerprint: str
    line: str
    status: str  # known | new | changed | revoked


def hashed_line(host: str, port: int, key_type: str, key_blob: bytes) -> str:
    """A known_hosts line with the host name hashed (|1|salt|hmac), like ssh-keygen -H."""
    salt = os.urandom(20)
    digest = hmac.new(
        salt, host_id(host, port).lower().encode(), hashlib.sha1
    ).digest()  # ssh hashes lowercase
    name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return f"{name} {key_type} {base64.b64encode(key_blob).decode()}"


def scan(
    route: Route, options: ConnectOptions, trusted: HostKeyPolicy, hashed: bool
) -> list[ScannedKey]:
    """Scan every hop of a route; hops are logged in to (to reach the next) trusting on first use."""
    # Scanning is trust-on-first-use by nature: the user verifies the fingerprints printed.
    scanning = replace(options, host_keys=HostKeyPolicy(accept_new=True), on_notice=lambda _: None)
    found = scan_host_keys(route, scanning, ALGORITHMS)
    results: list[ScannedKey] = []
    seen: set[tuple[str, bytes]] = set()
    for index, key_type, blob in found:
        host, port = route.hops[index].known_as  # under its HostKeyAlias when it has one
        ident = host_id(host, port)
        if (ident, blob) in seen:
            continue
        seen.add((ident, blob))
        stored_type = stored_key_type(key_type)
        verdict = trusted.verdict(host, port, stored_type, blob)
        status = {Verdict.MATCH: "known", Verdict.UNKNOWN: "new", Verdict.CHANGED: "changed",
                  Verdict.REVOKED: "revoked"}[verdict]  # fmt: skip
        line = (hashed_line if hashed else known_hosts_line)(host, port, stored_type, blob)
        results.append(
            ScannedKey(route.describe(index), ident, stored_type, fingerprint(blob), line, status)
        )
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
