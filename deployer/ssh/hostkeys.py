"""known_hosts parsing and host key verdicts (pure: no network).

paramiko's ``HostKeys.load`` aborts a whole file on a ``@cert-authority`` line (paramiko#771), so
deployer parses known_hosts itself, with OpenSSH's matching rules, and gives paramiko only the
verdict. Host keys are checked on every hop: unknown keys are refused unless trust-on-first-use
was asked for; changed or revoked keys are always refused.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from deployer.errors import ConfigError, HostKeyError

Marker = Literal["", "cert-authority", "revoked"]

_MARKERS: dict[str, Marker] = {"@cert-authority": "cert-authority", "@revoked": "revoked"}

# OpenSSH's default HostKeyAlgorithms order, restricted to the plain key types paramiko verifies;
# an ssh-rsa key is offered with SHA-2 signatures only (OpenSSH 8.8+ disables ssh-rsa/SHA-1).
_HOST_KEY_ALGORITHMS: tuple[tuple[str, str], ...] = (
    ("ssh-ed25519", "ssh-ed25519"),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
    ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
    ("ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"),
    ("ssh-rsa", "rsa-sha2-512"),
    ("ssh-rsa", "rsa-sha2-256"),
)

_PIN = re.compile(r"(?:(?P<scope>[^=\s]+)=)?(?P<fp>[^=\s]+)=?")
_SHA256_PIN = re.compile(r"(?i:SHA256):(?P<body>[A-Za-z0-9+/]{43})")
_MD5_PIN = re.compile(r"(?i:MD5:.*|[0-9a-f]{2}(?::[0-9a-f]{2}){15})")
_BRACKETED = re.compile(r"\[(?P<host>[^\[\]]+)\](?::(?P<port>[0-9]+))?")


def host_id(host: str, port: int) -> str:
    """OpenSSH's known_hosts name: 'host' for port 22, '[host]:port' otherwise (IPv6 too)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key_blob: bytes) -> str:
    """'SHA256:<base64 without padding>' like ssh-keygen -l."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def known_hosts_line(host: str, port: int, key_type: str, key_blob: bytes) -> str:
    """A pasteable known_hosts line for this hop."""
    return (
        f"{host_id(host, port)} {stored_key_type(key_type)} {base64.b64encode(key_blob).decode()}"
    )


def stored_key_type(key_type: str) -> str:
    """The key type stored in a blob: rsa-sha2-256/512 are signature algorithms of ssh-rsa keys."""
    return "ssh-rsa" if key_type.startswith("rsa-sha2-") else key_type


def _blob_name(blob: bytes) -> str | None:
    """The key type a public key blob starts with (an SSH string), or None if it has none."""
    if len(blob) < 4:
        return None
    size = int.from_bytes(blob[:4], "big")
    name = blob[4 : 4 + size]
    if not 0 < size <= 64 or len(name) != size or len(blob) == 4 + size:
        return None
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        return None


def _decode_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _short(text: str, limit: int = 24) -> str:
    """A prefix of user input for a message, so a key blob is never echoed whole."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


@functools.lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    """ssh's pattern language: only * and ? are special ([host]:port brackets are literal)."""
    return re.compile(re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", "."), re.S)


@dataclass(frozen=True)
class KnownHost:
    """One parsed known_hosts line."""

    marker: Marker
    patterns: tuple[str, ...]  # as written; empty for a hashed entry
    hashed: tuple[bytes, bytes] | None  # (salt, HMAC-SHA1 digest) of a |1|salt|hash entry
    key_type: str
    key_blob: bytes
    source: str  # 'SSH_KNOWN_HOSTS:3' or '/path/known_hosts:12'

    def matches(self, host: str, port: int) -> bool:
        """Whether this line names host:port (OpenSSH rules: wildcards, negation, hashing, case)."""
        name = host_id(host, port)
        if self.hashed is not None:
            salt, digest = self.hashed
            # ssh and ssh-keygen -H hash the lowercased name; a name hashed as typed is still meant.
            return any(
                hmac.compare_digest(
                    hmac.new(salt, candidate.encode(), hashlib.sha1).digest(), digest
                )
                for candidate in dict.fromkeys((name.lower(), name))
            )
        lowered = name.lower()
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if _pattern(pattern[1:] if negated else pattern).fullmatch(lowered):
                if negated:
                    return False  # a matching negation rejects the line whatever else matches
                matched = True
        return matched


def parse_known_hosts(text: str, source: str, *, lenient: bool = False) -> list[KnownHost]:
    """Parse known_hosts text: comments, blank lines, markers, hashed |1| entries, [host]:port, CRLF.

    Lenient parsing skips malformed lines the way ssh does (for the user's own ~/.ssh/known_hosts);
    otherwise they are a ConfigError naming the line (for what deployer was explicitly given).
    """
    entries: list[KnownHost] = []
    # Split on \n only so line numbers agree with editors; strip() removes CR and stray spaces.
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            try:
                entries.append(_parse_line(line, f"{source}:{number}"))
            except ConfigError:
                if not lenient:
                    raise
    return entries


def _parse_line(line: str, where: str) -> KnownHost:
    fields = line.split()
    marker: Marker = ""
    shape = "HOSTS KEY-TYPE BASE64-KEY [COMMENT]"
    if fields[0].startswith("@"):
        if fields[0] not in _MARKERS:
            raise ConfigError(
                f"{where}: unknown marker {_short(fields[0])} — expected @cert-authority or @revoked"
            )
        marker = _MARKERS[fields[0]]
        shape = f"{fields[0]} {shape}"
        fields = fields[1:]
    if len(fields) >= 2 and _blob_name(_decode_base64(fields[1]) or b"") == stored_key_type(
        fields[0]
    ):
        raise ConfigError(f"{where}: no host names before the {fields[0]} key — expected '{shape}'")
    if len(fields) < 3:
        raise ConfigError(f"{where}: expected '{shape}', got {_short(line, 40)}")
    hosts, key_type, encoded = fields[:3]
    if key_type.isdigit():
        raise ConfigError(
            f"{where}: an SSH-1 RSA key (bits exponent modulus) — SSH-1 is not supported: remove the line"
        )
    blob = _decode_base64(encoded)
    if blob is None:
        raise ConfigError(
            f"{where}: the {_short(key_type)} key is not valid base64 ({_short(encoded, 12)})"
        )
    name = _blob_name(blob)
    if name is None:
        raise ConfigError(
            f"{where}: the {_short(key_type)} key is truncated or not an SSH public key ({_short(encoded, 12)})"
        )
    if name != stored_key_type(key_type):
        raise ConfigError(
            f"{where}: the line says {_short(key_type)} but the key is {_short(name)} — copy the line again"
            " (ssh-keyscan or deployer keyscan)"
        )
    hashed, patterns = _parse_hosts(hosts, where)
    return KnownHost(marker, patterns, hashed, key_type, blob, where)


def _parse_hosts(hosts: str, where: str) -> tuple[tuple[bytes, bytes] | None, tuple[str, ...]]:
    if hosts.startswith("|"):
        parts = hosts.split("|")
        salt = _decode_base64(parts[2]) if len(parts) == 4 and parts[1] == "1" else None
        digest = _decode_base64(parts[3]) if salt is not None else None
        if salt is None or digest is None or len(salt) != 20 or len(digest) != 20:
            raise ConfigError(
                f"{where}: malformed hashed host name {_short(hosts, 12)} — expected |1|SALT|HASH"
                " as written by ssh-keygen -H"
            )
        return (salt, digest), ()
    patterns = tuple(pattern for pattern in hosts.split(",") if pattern)
    if all(pattern == "!" for pattern in patterns):
        raise ConfigError(f"{where}: no host names before the key ({_short(hosts)})")
    return None, patterns


def _other_type(known_type: str, shown_type: str) -> str:
    """'ssh-ed25519 ' when the known key is of another type than the one presented, else ''."""
    return "" if stored_key_type(known_type) == shown_type else f"{stored_key_type(known_type)} "


class Verdict(Enum):
    """How a presented host key compares with what the user trusts."""

    MATCH = "match"
    UNKNOWN = "unknown"
    CHANGED = "changed"
    REVOKED = "revoked"


def parse_pins(values: Iterable[str]) -> tuple[str, ...]:
    """Validate fingerprint pins ('SHA256:…' or 'HOST[:PORT]=SHA256:…'); return them in canonical form."""
    pins: list[str] = []
    for value in values:
        for item in value.replace(",", " ").split():
            pins.append(_parse_pin(item))
    return tuple(pins)


def _parse_pin(item: str) -> str:
    match = _PIN.fullmatch(item)
    scope, print_ = (match["scope"], match["fp"]) if match else (None, item)
    if _MD5_PIN.fullmatch(print_):
        raise ConfigError(
            f"host key fingerprint {_short(item, 60)} is MD5 — pin the SHA256 form instead"
            " (ssh-keygen -lf key.pub, or deployer keyscan)"
        )
    sha256 = _SHA256_PIN.fullmatch(print_)
    body = sha256["body"] if sha256 else ""
    # The 43rd character carries 2 bits and 4 zero bits: a non-canonical one is a typo.
    if not sha256 or base64.b64encode(base64.b64decode(body + "=")).decode().rstrip("=") != body:
        raise ConfigError(
            f"host key fingerprint {_short(item, 60)} is not SHA256:<43 base64 characters>"
            " (optionally HOST[:PORT]= in front) — copy it from ssh-keygen -lf or deployer keyscan"
        )
    print_ = f"SHA256:{body}"
    return f"{_pin_scope(scope, item)}={print_}" if scope else print_


def _pin_scope(scope: str, item: str) -> str:
    """HOST, HOST:PORT, [HOST]:PORT or a bare IPv6 address as a lowercased host_id."""
    bracketed = _BRACKETED.fullmatch(scope)
    if bracketed:
        host, port = bracketed["host"], bracketed["port"] or "22"
    elif scope.count(":") == 1:
        host, _, port = scope.partition(":")
    else:  # a host name, or an IPv6 address without a port
        host, port = scope, "22"
    if not host or any(c in host for c in "[]*?!") or not (port.isascii() and port.isdigit()):
        raise ConfigError(
            f"host key fingerprint {_short(item, 60)}: {_short(scope, 40)} is not HOST, HOST:PORT"
            " or [HOST]:PORT (no wildcards)"
        )
    if not 0 < int(port) < 65536:
        raise ConfigError(f"host key fingerprint {_short(item, 60)}: port {port} is out of range")
    return host_id(host.lower(), int(port))


@dataclass(frozen=True)
class HostKeyPolicy:
    """What the user trusts: known_hosts entries, fingerprint pins, and whether TOFU is allowed."""

    known: tuple[KnownHost, ...] = ()
    pins: tuple[str, ...] = ()  # as returned by parse_pins
    accept_new: bool = False  # trust on first use: UNKNOWN is accepted, CHANGED/REVOKED never

    def _matching(self, host: str, port: int) -> list[KnownHost]:
        return [entry for entry in self.known if entry.matches(host, port)]

    def _pinned(self, host: str, port: int, key_blob: bytes) -> bool:
        ident, print_ = host_id(host, port).lower(), fingerprint(key_blob)
        for pin in self.pins:
            scope, _, pinned = pin.rpartition("=")
            if pinned == print_ and (not scope or scope.lower() == ident):
                return True
        return False

    def _scoped_pins(self, host: str, port: int) -> list[str]:
        """The HOST[:PORT]= pins naming this hop (an unscoped pin names no host in particular)."""
        ident = host_id(host, port).lower()
        return [pin for pin in self.pins if pin.rpartition("=")[0].lower() == ident]

    def _assess(
        self, host: str, port: int, key_type: str, key_blob: bytes
    ) -> tuple[Verdict, KnownHost | None]:
        """The verdict and the line behind it (the @revoked line, or the entry the key differs from)."""
        # A revoked key is refused whichever host presents it ("must not ever be accepted", sshd(8)).
        for entry in self.known:
            if entry.marker == "revoked" and entry.key_blob == key_blob:
                return Verdict.REVOKED, entry
        plain = [entry for entry in self._matching(host, port) if entry.marker == ""]
        if any(entry.key_blob == key_blob for entry in plain) or self._pinned(host, port, key_blob):
            return Verdict.MATCH, None
        # A host with any pinned key is known: a key of another type is as changed as another key
        # of the same type (a man in the middle offers whatever type it holds). Stricter than
        # OpenSSH, which takes a new type for a known host as new.
        wanted = stored_key_type(key_type)
        same_type = [e for e in plain if stored_key_type(e.key_type) == wanted]
        if same_type or plain:
            return Verdict.CHANGED, (same_type or plain)[0]
        if self._scoped_pins(host, port):
            return Verdict.CHANGED, None
        return Verdict.UNKNOWN, None

    def known_types(self, host: str, port: int) -> set[str]:
        """The key types (as stored: ssh-rsa, not rsa-sha2-*) this hop has plain entries for."""
        return {
            stored_key_type(entry.key_type)
            for entry in self._matching(host, port)
            if entry.marker == "" and not self._revoked(entry.key_blob)
        }

    def algorithms_for(self, host: str, port: int) -> list[str]:
        """Host key algorithms known for this hop, most preferred first (OpenSSH order), [] if none."""
        known = self.known_types(host, port)
        return [algorithm for key_type, algorithm in _HOST_KEY_ALGORITHMS if key_type in known]

    def _revoked(self, key_blob: bytes) -> bool:
        return any(e.marker == "revoked" and e.key_blob == key_blob for e in self.known)

    def verdict(self, host: str, port: int, key_type: str, key_blob: bytes) -> Verdict:
        """MATCH (plain entry or pin), REVOKED, CHANGED (another key for a known host) or UNKNOWN."""
        return self._assess(host, port, key_type, key_blob)[0]

    def check(
        self, hop: str, host: str, port: int, key_type: str, key_blob: bytes, keyscan_hint: str
    ) -> str | None:
        """Raise HostKeyError unless acceptable; return a notice line when accepted only by TOFU."""
        verdict, entry = self._assess(host, port, key_type, key_blob)
        if verdict is Verdict.MATCH:
            return None
        ident, shown_type, print_ = (
            host_id(host, port),
            stored_key_type(key_type),
            fingerprint(key_blob),
        )
        presented = f"{ident} {shown_type} {print_}"
        if verdict is Verdict.REVOKED:
            assert entry is not None
            raise HostKeyError(
                f"{hop} presented a REVOKED host key ({presented}, @revoked at {entry.source})"
                " — refusing to connect: that key must not be trusted again; ask the server's owner"
            )
        if verdict is Verdict.CHANGED:
            known = (
                f"{entry.source} has {_other_type(entry.key_type, shown_type)}"
                f"{fingerprint(entry.key_blob)}"
                if entry is not None
                else f"--host-key-fingerprint pins {self._scoped_pins(host, port)[0]}"
            )
            fix = (
                f"replace that line with the output of `{keyscan_hint}`"
                if entry is not None
                else f"pin the fingerprint `{keyscan_hint}` prints instead"
            )
            raise HostKeyError(
                f"the host key of {hop} CHANGED: {ident} presented {shown_type} {print_} but"
                f" {known} — possible man-in-the-middle (--accept-new-host-keys never takes a"
                f" changed key); if the server was reinstalled, verify the new key and {fix}"
            )
        if self.accept_new:
            return (
                f"accepted a new host key on first use (--accept-new-host-keys) for {hop}: {presented}"
                f" — verify it, then pin it with this SSH_KNOWN_HOSTS line:"
                f" {known_hosts_line(host, port, shown_type, key_blob)}"
            )
        raise HostKeyError(
            f"the host key of {hop} ({presented}) is not in SSH_KNOWN_HOSTS / --known-hosts"
            f"{self._unknown_because(host, port)} — verify it and add the output of"
            f" `{keyscan_hint}`, or pass --accept-new-host-keys to trust on first use"
        )

    def _unknown_because(self, host: str, port: int) -> str:
        """Why a host we have lines for is still unknown: a CA line, or keys of other types."""
        matching = self._matching(host, port)
        authority = next((e for e in matching if e.marker == "cert-authority"), None)
        if authority is not None:
            return (
                " (a @cert-authority line matches, but host certificates are not supported: pin the"
                f" host key itself; the CA line is {authority.source})"
            )
        if self.pins:
            return " and matches no --host-key-fingerprint pin"
        return ""
