"""known_hosts parsing and host key verdicts (pure: no network).

paramiko's ``HostKeys.load`` aborts a whole file on a ``@cert-authority`` line (paramiko#771), so
deployer parses known_hosts itself, with OpenSSH's matching rules, and gives paramiko only the
verdict. Unknown keys are refused unless trust-on-first-use was asked for; changed or revoked
keys are always refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from deployer.errors import ConfigError, HostKeyError

Marker = Literal["", "cert-authority", "revoked"]
_PIN = re.compile(r"^(?:(?P<scope>[^=\s]+)=)?(?P<fp>SHA256:[A-Za-z0-9+/]{43})=?$")


def host_id(host: str, port: int) -> str:
    """OpenSSH's known_hosts name: 'host' for port 22, '[host]:port' otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key_blob: bytes) -> str:
    """'SHA256:<base64 without padding>' like ssh-keygen -l."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def _wildcard_match(name: str, pattern: str) -> bool:
    """ssh's pattern language: only * and ? are special ([host]:port brackets are literal)."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, name) is not None


def _blob_type(key_type: str) -> str:
    """rsa-sha2-256/512 are signature algorithms of an ssh-rsa key."""
    return "ssh-rsa" if key_type.startswith("rsa-sha2-") else key_type


@dataclass(frozen=True)
class KnownHost:
    """One parsed known_hosts line."""

    marker: Marker
    patterns: tuple[str, ...]
    hashed: tuple[bytes, bytes] | None
    key_type: str
    key_blob: bytes
    source: str

    def matches(self, host: str, port: int) -> bool:
        """Whether this line names host:port (OpenSSH rules: wildcards, negation, hashing)."""
        name = host_id(host, port).lower()
        if self.hashed is not None:
            salt, digest = self.hashed
            mine = hmac.new(salt, name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mine, digest)
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if _wildcard_match(name, (pattern[1:] if negated else pattern).lower()):
                if negated:
                    return False
                matched = True
        return matched


def parse_known_hosts(text: str, source: str) -> list[KnownHost]:
    """Parse known_hosts text: comments, blank lines, markers, hashed |1| entries, [host]:port, CRLF."""
    entries = []
    for number, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        fields = line.split()
        marker: Marker = ""
        if fields[0].startswith("@"):
            if fields[0] not in ("@cert-authority", "@revoked"):
                raise ConfigError(
                    f"{where}: unknown marker {fields[0]} — expected @cert-authority or @revoked"
                )
            marker = "cert-authority" if fields[0] == "@cert-authority" else "revoked"
            fields = fields[1:]
        if len(fields) < 3:
            raise ConfigError(f"{where}: expected 'hosts key-type base64-key', got {line[:40]!r}")
        hosts, key_type, encoded = fields[0], fields[1], fields[2]
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"{where}: the key of {hosts[:40]} is not valid base64 ({encoded[:12]}…)"
            ) from None
        hashed = None
        patterns: tuple[str, ...] = ()
        if hosts.startswith("|1|"):
            try:
                _, _, salt, digest = hosts.split("|")
                hashed = (base64.b64decode(salt), base64.b64decode(digest))
            except (ValueError, binascii.Error):
                raise ConfigError(f"{where}: malformed hashed host name {hosts[:20]}…") from None
        else:
            patterns = tuple(p for p in hosts.split(",") if p)
        entries.append(KnownHost(marker, patterns, hashed, key_type, blob, where))
    return entries


class Verdict(Enum):
    """How a presented host key compares with what the user trusts."""

    MATCH = "match"
    UNKNOWN = "unknown"
    CHANGED = "changed"
    REVOKED = "revoked"


_ALGORITHMS = {
    "ssh-ed25519": ["ssh-ed25519"],
    "ecdsa-sha2-nistp256": ["ecdsa-sha2-nistp256"],
    "ecdsa-sha2-nistp384": ["ecdsa-sha2-nistp384"],
    "ecdsa-sha2-nistp521": ["ecdsa-sha2-nistp521"],
    "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256"],
}


def parse_pins(values: Iterable[str]) -> tuple[str, ...]:
    """Validate fingerprint pins: 'SHA256:…' for any hop, or 'HOST[:PORT]=SHA256:…' for one."""
    pins = []
    for value in values:
        for item in value.replace(",", " ").split():
            if item.startswith("MD5:") or re.fullmatch(r"([0-9a-f]{2}:){15}[0-9a-f]{2}", item):
                raise ConfigError(
                    f"host key fingerprint {item!r} is MD5 — use the SHA256 form (ssh-keygen -lf key.pub)"
                )
            match = _PIN.match(item)
            if not match:
                raise ConfigError(
                    f"host key fingerprint {item!r} is not SHA256:<43 base64 characters>"
                    " (optionally HOST[:PORT]= in front) — see ssh-keygen -lf"
                )
            scope = match["scope"]
            if scope and ":" in scope and not scope.startswith("["):
                host, _, port = scope.rpartition(":")
                scope = host_id(host, int(port)) if port.isdigit() else scope
            pins.append(f"{scope}={match['fp']}" if scope else match["fp"])
    return tuple(pins)


@dataclass(frozen=True)
class HostKeyPolicy:
    """What the user trusts: known_hosts entries, fingerprint pins, and whether TOFU is allowed."""

    known: tuple[KnownHost, ...] = ()
    pins: tuple[str, ...] = ()
    accept_new: bool = False

    def _entries(self, host: str, port: int) -> list[KnownHost]:
        return [entry for entry in self.known if entry.matches(host, port)]

    def algorithms_for(self, host: str, port: int) -> list[str]:
        """Host key algorithms known for this hop, most preferred first (offered first in kex)."""
        algorithms: list[str] = []
        for entry in self._entries(host, port):
            if entry.marker == "":
                for name in _ALGORITHMS.get(entry.key_type, []):
                    if name not in algorithms:
                        algorithms.append(name)
        return algorithms

    def verdict(self, host: str, port: int, key_type: str, key_blob: bytes) -> Verdict:
        """MATCH, REVOKED, CHANGED (same type, other key) or UNKNOWN for a presented key."""
        key_type = _blob_type(key_type)
        entries = self._entries(host, port)
        revoked = [e for e in self.known if e.marker == "revoked" and e.key_blob == key_blob]
        if revoked:
            return Verdict.REVOKED
        plain = [e for e in entries if e.marker == ""]
        if any(e.key_blob == key_blob for e in plain):
            return Verdict.MATCH
        print_ = fingerprint(key_blob)
        if print_ in self.pins or f"{host_id(host, port)}={print_}" in self.pins:
            return Verdict.MATCH
        if any(_blob_type(e.key_type) == key_type for e in plain):
            return Verdict.CHANGED
        return Verdict.UNKNOWN

    def check(
        self, hop: str, host: str, port: int, key_type: str, key_blob: bytes, keyscan_hint: str
    ) -> str | None:
        """Raise HostKeyError unless acceptable; return a notice when accepted only by TOFU."""
        verdict = self.verdict(host, port, key_type, key_blob)
        ident, print_, shown_type = host_id(host, port), fingerprint(key_blob), _blob_type(key_type)
        if verdict is Verdict.MATCH:
            return None
        if verdict is Verdict.REVOKED:
            raise HostKeyError(
                f"{hop} presented a REVOKED host key ({ident} {shown_type} {print_}) — do not connect;"
                " ask the server's owner what happened"
            )
        if verdict is Verdict.CHANGED:
            old = next(
                e
                for e in self._entries(host, port)
                if e.marker == "" and _blob_type(e.key_type) == shown_type
            )
            raise HostKeyError(
                f"the host key of {hop} CHANGED ({ident} {shown_type} is now {print_}, {old.source} has"
                f" {fingerprint(old.key_blob)}) — possible man-in-the-middle; if the server was reinstalled,"
                f" verify and replace that line with the output of `{keyscan_hint}`"
            )
        if self.accept_new:
            return (
                f"accepted new host key for {hop}: {ident} {shown_type} {print_}"
                f" — pin it with: {known_hosts_line(host, port, shown_type, key_blob)}"
            )
        ca = any(e.marker == "cert-authority" for e in self._entries(host, port))
        why = (
            " (a @cert-authority line matches, but host certificates are not supported: pin the host key itself)"
            if ca
            else ""
        )
        raise HostKeyError(
            f"the host key of {hop} ({ident} {shown_type} {print_}) is not in SSH_KNOWN_HOSTS / --known-hosts{why}"
            f" — verify it and add the output of `{keyscan_hint}`, or pass --accept-new-host-keys to trust on first use"
        )


def known_hosts_line(host: str, port: int, key_type: str, key_blob: bytes) -> str:
    """A pasteable known_hosts line for this hop."""
    return f"{host_id(host, port)} {_blob_type(key_type)} {base64.b64encode(key_blob).decode()}"
