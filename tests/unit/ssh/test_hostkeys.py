"""known_hosts parsing and verdicts, against keys, files and fingerprints made by the real ssh-keygen.

OpenSSH's own matcher (`ssh-keygen -F`) is the oracle for the host pattern rules.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployer.errors import ConfigError, ExitCode, HostKeyError
from deployer.ssh.hostkeys import (
    HostKeyPolicy,
    KnownHost,
    Verdict,
    fingerprint,
    host_id,
    known_hosts_line,
    parse_known_hosts,
    parse_pins,
)

HINT = "deployer keyscan --to deploy@localhost:22022 --jump jump@jumphost"
TARGET = "target deploy@localhost:22022 (through jump@jumphost)"
JUMP = "jump host jump@jumphost"


@dataclass(frozen=True)
class Key:
    type: str
    blob: bytes
    pub: Path

    @property
    def b64(self) -> str:
        return base64.b64encode(self.blob).decode()

    def line(self, hosts: str) -> str:
        return f"{hosts} {self.type} {self.b64}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    folder = tmp_path_factory.mktemp("hostkeys")
    made = {}
    for name, argv in {
        "ed": ["-t", "ed25519"],
        "ed2": ["-t", "ed25519"],
        "ec": ["-t", "ecdsa", "-b", "256"],
        "ec2": ["-t", "ecdsa", "-b", "256"],
        "ec384": ["-t", "ecdsa", "-b", "384"],
        "rsa": ["-t", "rsa", "-b", "2048"],
        "rsa2": ["-t", "rsa", "-b", "2048"],
    }.items():
        path = folder / name
        subprocess.run(["ssh-keygen", "-q", *argv, "-N", "", "-C", "", "-f", str(path)], check=True)
        pub = path.with_name(name + ".pub")
        key_type, encoded = pub.read_text().split()[:2]
        made[name] = Key(key_type, base64.b64decode(encoded), pub)
    return made


def keygen_fingerprint(path: Path) -> list[str]:
    """The SHA256 fingerprints ssh-keygen -lf prints for a key or known_hosts file."""
    out = subprocess.run(
        ["ssh-keygen", "-E", "sha256", "-lf", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [line.split()[1] for line in out.splitlines()]


def openssh_finds(known: Path, name: str) -> bool:
    """Whether OpenSSH's own matcher finds `name` ('host' or '[host]:port') in a known_hosts file."""
    run = subprocess.run(["ssh-keygen", "-F", name, "-f", str(known)], capture_output=True)
    assert run.returncode in (0, 1), run.stderr
    return run.returncode == 0


def hash_file(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    return path.read_text()


def policy_of(text: str, *, pins: tuple[str, ...] = (), accept_new: bool = False) -> HostKeyPolicy:
    return HostKeyPolicy(tuple(parse_known_hosts(text, "SSH_KNOWN_HOSTS")), pins, accept_new)


def refusal(
    policy: HostKeyPolicy, hop: str, host: str, port: int, key: Key, algorithm: str = ""
) -> str:
    with pytest.raises(HostKeyError) as caught:
        policy.check(hop, host, port, algorithm or key.type, key.blob, HINT)
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.HOST_KEY
    assert "\n" not in message and "\r" not in message  # one line
    assert key.b64 not in message  # never a whole key blob
    return message


# --------------------------------------------------------------------------- names and fingerprints


def test_fingerprint_matches_ssh_keygen(keys: dict[str, Key]) -> None:
    for key in keys.values():
        assert [fingerprint(key.blob)] == keygen_fingerprint(key.pub)
    assert fingerprint(keys["ed"].blob) != fingerprint(keys["ed2"].blob)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("jumphost", 22, "jumphost"),
        ("localhost", 22022, "[localhost]:22022"),
        ("2001:db8::1", 22, "2001:db8::1"),
        ("2001:db8::1", 2222, "[2001:db8::1]:2222"),
        ("[2001:db8::1]", 2222, "[2001:db8::1]:2222"),
    ],
)
def test_host_id(host: str, port: int, expected: str) -> None:
    assert host_id(host, port) == expected


@pytest.mark.parametrize(("host", "port"), [("localhost", 22022), ("jumphost", 22), ("::1", 2222)])
def test_known_hosts_line_is_read_by_openssh(
    keys: dict[str, Key], tmp_path: Path, host: str, port: int
) -> None:
    key = keys["rsa"]
    known = tmp_path / "known_hosts"
    text = known_hosts_line(host, port, "rsa-sha2-512", key.blob)
    assert text.split()[1] == "ssh-rsa"  # the blob's type, not the signature algorithm
    known.write_text(text + "\n")
    assert openssh_finds(known, host_id(host, port))
    assert keygen_fingerprint(known) == [fingerprint(key.blob)]
    policy = HostKeyPolicy(tuple(parse_known_hosts(text, "t")))
    assert policy.verdict(host, port, key.type, key.blob) is Verdict.MATCH


# --------------------------------------------------------------------------- parsing


def test_parse_fields_and_line_numbers(keys: dict[str, Key]) -> None:
    text = "\n".join(
        [
            "# deploy targets",
            "",
            keys["ed"].line("[LocalHost]:22022,jump.example.com") + " a comment",
            "@cert-authority *.example.com " + keys["ed2"].line("").strip(),
            "@revoked * " + keys["rsa"].line("").strip(),
        ]
    )
    plain, ca, revoked = parse_known_hosts(text, "/etc/known_hosts")
    assert plain == KnownHost(
        "", ("[LocalHost]:22022", "jump.example.com"), None, "ssh-ed25519", keys["ed"].blob,
        "/etc/known_hosts:3",
    )  # fmt: skip
    assert (ca.marker, ca.patterns, ca.key_blob, ca.source) == (
        "cert-authority", ("*.example.com",), keys["ed2"].blob, "/etc/known_hosts:4",
    )  # fmt: skip
    assert (revoked.marker, revoked.key_type, revoked.source) == (
        "revoked", "ssh-rsa", "/etc/known_hosts:5",
    )  # fmt: skip


def test_crlf_trailing_spaces_tabs_bom_and_no_final_newline(
    keys: dict[str, Key], tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        keys["ed"].line("[localhost]:22022") + "\n" + keys["ec"].line("jumphost") + "\n"
    )
    hashed = hash_file(known).splitlines()
    text = "\ufeff# pasted into a CI variable\r\n" + "  \t\r\n".join(
        [hashed[0].replace(" ", "\t", 1) + "   ", hashed[1]]
    )  # CRLF, blank lines with spaces, tabs, trailing spaces, no final newline
    entries = parse_known_hosts(text, "SSH_KNOWN_HOSTS")
    assert [e.source for e in entries] == ["SSH_KNOWN_HOSTS:2", "SSH_KNOWN_HOSTS:3"]
    policy = HostKeyPolicy(tuple(entries))
    assert policy.verdict("localhost", 22022, keys["ed"].type, keys["ed"].blob) is Verdict.MATCH
    assert policy.verdict("jumphost", 22, keys["ec"].type, keys["ec"].blob) is Verdict.MATCH
    assert parse_known_hosts("\r\n \n# only comments\r\n", "x") == []


def test_unknown_key_types_are_kept_but_never_match(keys: dict[str, Key]) -> None:
    def string(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    sk_type = "sk-ssh-ed25519@openssh.com"
    blob = string(sk_type.encode()) + string(b"\x01" * 32) + string(b"ssh:")
    text = f"host {sk_type} {base64.b64encode(blob).decode()}\n" + keys["ed"].line("host")
    policy = policy_of(text)
    assert [e.key_type for e in policy.known] == [sk_type, "ssh-ed25519"]
    assert policy.algorithms_for("host", 22) == ["ssh-ed25519"]
    assert policy.verdict("host", 22, keys["ed2"].type, keys["ed2"].blob) is Verdict.CHANGED
    # a host with any pinned key is known: another type is a changed key
    assert policy.verdict("host", 22, keys["ec"].type, keys["ec"].blob) is Verdict.CHANGED


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host ssh-ed25519", "SSH_KNOWN_HOSTS:2: expected 'HOSTS KEY-TYPE BASE64-KEY"),
        ("host {ed_type}", "SSH_KNOWN_HOSTS:2: expected"),
        (
            "host ssh-ed25519 !!!notbase64",
            "SSH_KNOWN_HOSTS:2: the 'ssh-ed25519' key is not valid base64",
        ),
        (
            "host ssh-ed25519 {ed_b64_cut}",
            "SSH_KNOWN_HOSTS:2: the 'ssh-ed25519' key is not valid base64",
        ),
        (
            "host ssh-rsa {ed_b64}",
            "SSH_KNOWN_HOSTS:2: the line says 'ssh-rsa' but the key is 'ssh-ed25519'",
        ),
        (
            "host ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
            "SSH_KNOWN_HOSTS:2: the 'ssh-ed25519' key is truncated",
        ),
        ("host ssh-ed25519 QUJDRA==", "SSH_KNOWN_HOSTS:2: the 'ssh-ed25519' key is truncated"),
        (
            "{ed_type} {ed_b64} user@laptop",
            "SSH_KNOWN_HOSTS:2: no host names before the ssh-ed25519 key",
        ),
        (
            "@revoked {ed_type} {ed_b64}",
            "SSH_KNOWN_HOSTS:2: no host names before the ssh-ed25519 key — expected '@revoked HOSTS",
        ),
        ("@cert-authority", "SSH_KNOWN_HOSTS:2: expected '@cert-authority HOSTS KEY-TYPE"),
        ("@cert-authority *.example.com", "SSH_KNOWN_HOSTS:2: expected '@cert-authority HOSTS"),
        ("@bogus host {ed_type} {ed_b64}", "SSH_KNOWN_HOSTS:2: unknown marker '@bogus'"),
        ("@CERT-AUTHORITY host {ed_type} {ed_b64}", "SSH_KNOWN_HOSTS:2: unknown marker"),
        (",,, {ed_type} {ed_b64}", "SSH_KNOWN_HOSTS:2: no host names before the key"),
        ("|1|nope {ed_type} {ed_b64}", "SSH_KNOWN_HOSTS:2: malformed hashed host name"),
        (
            "|2|c2FsdA==|aGFzaA== {ed_type} {ed_b64}",
            "SSH_KNOWN_HOSTS:2: malformed hashed host name",
        ),
        (
            "|1|c2FsdA==|aGFzaA== {ed_type} {ed_b64}",
            "SSH_KNOWN_HOSTS:2: malformed hashed host name",
        ),
        ("host 2048 65537 1234567890", "SSH_KNOWN_HOSTS:2: an SSH-1 RSA key"),
    ],
)
def test_malformed_lines_name_source_and_line(
    keys: dict[str, Key], text: str, message: str
) -> None:
    ed = keys["ed"]
    text = text.format(ed_type=ed.type, ed_b64=ed.b64, ed_b64_cut=ed.b64[:-1])
    with pytest.raises(ConfigError) as caught:
        parse_known_hosts("# first line\r\n" + text + "\n" + ed.line("fine"), "SSH_KNOWN_HOSTS")
    assert message in str(caught.value)
    assert ed.b64 not in str(caught.value) and caught.value.exit_code == ExitCode.USAGE


# --------------------------------------------------------------------------- host patterns


@pytest.mark.parametrize(
    ("patterns", "host", "port", "expected"),
    [
        ("localhost", "localhost", 22, True),
        ("localhost", "localhost", 22022, False),  # a bare pattern is port 22 only
        ("[localhost]:22022", "localhost", 22022, True),
        ("[localhost]:22022", "localhost", 22, False),
        ("[localhost]:22022", "localhost", 2202, False),
        ("[localhost]:22", "localhost", 22, False),  # OpenSSH writes port 22 bare
        ("jump,[localhost]:22022", "localhost", 22022, True),
        ("*.example.com", "a.example.com", 22, True),
        ("*.example.com", "example.com", 22, False),
        ("*.example.com", "a.example.com", 2222, False),
        ("[*.example.com]:2222", "a.example.com", 2222, True),
        ("*", "anything", 22022, True),  # '*' matches the whole [host]:port name
        ("web?.corp", "web1.corp", 22, True),
        ("web?.corp", "web10.corp", 22, False),
        ("10.0.0.?", "10.0.0.7", 22, True),
        ("*.example.com,!evil.example.com", "evil.example.com", 22, False),
        ("!evil.example.com,*.example.com", "evil.example.com", 22, False),
        ("!evil.example.com,*.example.com", "good.example.com", 22, True),
        ("!*.internal,*", "db.internal", 22, False),
        ("!other", "host", 22, False),  # a negation alone never matches
        ("2001:db8::1", "2001:db8::1", 22, True),
        ("[2001:db8::1]:2222", "2001:db8::1", 2222, True),
        ("a.example.com", "a-example.com", 22, False),  # '.' is literal
        ("a+b", "a+b", 22, True),
    ],
)
def test_patterns_follow_openssh(
    keys: dict[str, Key], tmp_path: Path, patterns: str, host: str, port: int, expected: bool
) -> None:
    key = keys["ed"]
    known = tmp_path / "known_hosts"
    known.write_text(key.line(patterns) + "\n")
    assert openssh_finds(known, host_id(host, port)) is expected  # the oracle agrees with the table
    (entry,) = parse_known_hosts(known.read_text(), str(known))
    assert entry.matches(host, port) is expected
    verdict = HostKeyPolicy((entry,)).verdict(host, port, key.type, key.blob)
    assert verdict is (Verdict.MATCH if expected else Verdict.UNKNOWN)


@pytest.mark.parametrize(
    ("patterns", "host", "port", "expected"),
    [
        ("LocalHost", "localhost", 22, True),
        ("localhost", "LOCALHOST", 22, True),
        ("[LocalHost]:22022", "localHOST", 22022, True),
        ("*.Example.COM", "A.example.com", 22, True),
        ("*,!EVIL.example.com", "evil.EXAMPLE.com", 22, False),
        ("*,!EVIL.example.com", "good.EXAMPLE.com", 22, True),
    ],
)
def test_host_names_are_case_insensitive(
    keys: dict[str, Key], patterns: str, host: str, port: int, expected: bool
) -> None:
    (entry,) = parse_known_hosts(keys["ed"].line(patterns), "t")
    assert entry.matches(host, port) is expected


def test_hashed_entries_from_ssh_keygen(keys: dict[str, Key], tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        "\n".join(
            [
                keys["ed"].line("[LocalHost]:22022"),
                keys["ec"].line("jumphost,10.0.0.5"),
                keys["rsa"].line("2001:db8::1"),
                keys["ed2"].line("*.example.com"),  # ssh-keygen -H leaves wildcard lines alone
            ]
        )
        + "\n"
    )
    text = hash_file(known)
    assert "localhost" not in text.lower() and "jumphost" not in text
    entries = parse_known_hosts(text, str(known))
    assert sum(e.hashed is not None for e in entries) == 4  # one hashed line per name
    assert all(e.patterns == () for e in entries if e.hashed)
    policy = HostKeyPolicy(tuple(entries))
    for key, host, port in [
        (keys["ed"], "localhost", 22022),
        (keys["ed"], "LOCALHOST", 22022),
        (keys["ec"], "jumphost", 22),
        (keys["ec"], "10.0.0.5", 22),
        (keys["rsa"], "2001:db8::1", 22),
        (keys["ed2"], "a.example.com", 22),
    ]:
        assert openssh_finds(known, host_id(host.lower(), port))
        assert policy.verdict(host, port, key.type, key.blob) is Verdict.MATCH, (host, port)
    assert policy.verdict("localhost", 22, keys["ed"].type, keys["ed"].blob) is Verdict.UNKNOWN
    assert policy.verdict("jumphost", 2222, keys["ec"].type, keys["ec"].blob) is Verdict.UNKNOWN
    assert policy.verdict("jumphost2", 22, keys["ec"].type, keys["ec"].blob) is Verdict.UNKNOWN
    assert policy.verdict("jumphost", 22, keys["ec2"].type, keys["ec2"].blob) is Verdict.CHANGED
    message = refusal(policy, JUMP, "jumphost", 22, keys["ec2"])
    assert f"{known}:2 has {fingerprint(keys['ec'].blob)}" in message


# --------------------------------------------------------------------------- verdicts and messages


def test_cert_authority_line_does_not_break_the_file(keys: dict[str, Key], tmp_path: Path) -> None:
    """paramiko#771: HostKeys.load gives up on the whole file at a @cert-authority line."""
    text = "\r\n".join(
        [
            "@cert-authority *.example.com,[localhost]:22022 " + keys["ed2"].line("").strip(),
            keys["ed"].line("[localhost]:22022"),
            keys["ec"].line("jumphost"),
        ]
    )  # CRLF and no final newline, as CI variables come
    policy = policy_of(text)
    assert [e.marker for e in policy.known] == ["cert-authority", "", ""]
    assert policy.verdict("localhost", 22022, keys["ed"].type, keys["ed"].blob) is Verdict.MATCH
    assert policy.verdict("jumphost", 22, keys["ec"].type, keys["ec"].blob) is Verdict.MATCH
    # the CA line neither vouches for a host nor counts as its key
    assert policy.algorithms_for("a.example.com", 22) == []
    assert policy.verdict("a.example.com", 22, keys["ed"].type, keys["ed"].blob) is Verdict.UNKNOWN
    assert (
        policy.verdict("a.example.com", 22, keys["ed2"].type, keys["ed2"].blob) is Verdict.UNKNOWN
    )
    message = refusal(policy, JUMP, "a.example.com", 22, keys["ed"])
    assert "a @cert-authority line matches, but host certificates are not supported" in message
    assert "pin the host key itself" in message and "SSH_KNOWN_HOSTS:1" in message
    assert f"`{HINT}`" in message and JUMP in message and fingerprint(keys["ed"].blob) in message


def test_unknown_message(keys: dict[str, Key]) -> None:
    ec = keys["ec"]
    message = refusal(HostKeyPolicy(), TARGET, "localhost", 22022, ec)
    assert message == (
        f"the host key of {TARGET} ([localhost]:22022 ecdsa-sha2-nistp256 {fingerprint(ec.blob)})"
        " is not in SSH_KNOWN_HOSTS / --known-hosts — verify it and add the output of"
        f" `{HINT}`, or pass --accept-new-host-keys to trust on first use"
    )
    pinned = HostKeyPolicy(pins=parse_pins([fingerprint(keys["ed"].blob)]))
    assert "matches no --host-key-fingerprint pin" in refusal(
        pinned, TARGET, "localhost", 22022, ec
    )


def test_changed_vs_unknown(keys: dict[str, Key]) -> None:
    text = "\n".join(
        [
            "# trusted",
            keys["ed2"].line("[localhost]:22022"),
            keys["ec384"].line("[localhost]:22022"),
            keys["rsa2"].line("jumphost"),
        ]
    )
    policy = policy_of(text)
    ed, ec, rsa = keys["ed"], keys["ec"], keys["rsa"]
    assert policy.verdict("localhost", 22022, ed.type, ed.blob) is Verdict.CHANGED
    message = refusal(policy, TARGET, "localhost", 22022, ed)
    assert message.startswith(
        f"the host key of {TARGET} CHANGED: [localhost]:22022 presented ssh-ed25519"
    )
    assert fingerprint(ed.blob) in message and fingerprint(keys["ed2"].blob) in message
    assert "SSH_KNOWN_HOSTS:2 has" in message and "possible man-in-the-middle" in message
    assert f"replace that line with the output of `{HINT}`" in message
    # another key type (even another ECDSA curve) for a known host is a changed key: a man in
    # the middle offers whatever type it holds (OpenSSH would call it new; deployer is stricter)
    assert policy.verdict("localhost", 22022, ec.type, ec.blob) is Verdict.CHANGED
    message = refusal(policy, TARGET, "localhost", 22022, ec)
    assert message.startswith(
        f"the host key of {TARGET} CHANGED: [localhost]:22022 presented ecdsa-sha2-nistp256"
        f" {fingerprint(ec.blob)} but SSH_KNOWN_HOSTS:2 has ssh-ed25519 {fingerprint(keys['ed2'].blob)}"
    )
    # the same key on another port or host is unknown there
    assert policy.verdict("localhost", 22, keys["ed2"].type, keys["ed2"].blob) is Verdict.UNKNOWN
    # rsa: whatever signature algorithm was negotiated, the key is an ssh-rsa key
    for algorithm in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"):
        assert policy.verdict("jumphost", 22, algorithm, rsa.blob) is Verdict.CHANGED
        assert policy.verdict("jumphost", 22, algorithm, keys["rsa2"].blob) is Verdict.MATCH
    with pytest.raises(HostKeyError, match="CHANGED: jumphost presented ssh-rsa SHA256:"):
        policy.check(JUMP, "jumphost", 22, "rsa-sha2-512", rsa.blob, HINT)


def test_revoked(keys: dict[str, Key]) -> None:
    ed, rsa = keys["ed"], keys["rsa"]
    text = "\n".join(
        [
            ed.line("[localhost]:22022"),
            rsa.line("[localhost]:22022"),
            "@revoked other.example.com " + rsa.line("").strip(),
        ]
    )
    pins = parse_pins([fingerprint(rsa.blob)])
    for accept_new in (False, True):
        policy = policy_of(text, pins=pins, accept_new=accept_new)
        # revoked wins over a plain entry, a pin, trust on first use, and whichever host shows it
        for algorithm in ("ssh-rsa", "rsa-sha2-512"):
            assert policy.verdict("localhost", 22022, algorithm, rsa.blob) is Verdict.REVOKED
        assert policy.verdict("new.example.com", 22, rsa.type, rsa.blob) is Verdict.REVOKED
        assert policy.verdict("localhost", 22022, ed.type, ed.blob) is Verdict.MATCH
        message = refusal(policy, TARGET, "localhost", 22022, rsa)
        assert message.startswith(
            f"{TARGET} presented a REVOKED host key ([localhost]:22022 ssh-rsa"
        )
        assert fingerprint(rsa.blob) in message and "@revoked at SSH_KNOWN_HOSTS:3" in message
        assert policy.algorithms_for("localhost", 22022) == ["ssh-ed25519"]


def test_accept_new_notices_but_never_overrides_changed_or_revoked(keys: dict[str, Key]) -> None:
    ed, ed2, ec = keys["ed"], keys["ed2"], keys["ec"]
    text = ed2.line("[localhost]:22022") + "\n@revoked * " + ec.line("").strip()
    policy = policy_of(text, accept_new=True)
    notice = policy.check(JUMP, "jumphost", 2222, ed.type, ed.blob, HINT)
    assert notice is not None and "\n" not in notice
    line = known_hosts_line("jumphost", 2222, ed.type, ed.blob)
    assert JUMP in notice and "[jumphost]:2222 ssh-ed25519" in notice
    assert fingerprint(ed.blob) in notice and notice.endswith(line)
    # the printed line pins the key
    assert policy_of(line).check(JUMP, "jumphost", 2222, ed.type, ed.blob, HINT) is None
    # a different key type for a known host is a changed key: never taken on first use
    message = refusal(policy, TARGET, "localhost", 22022, keys["rsa"], "rsa-sha2-512")
    assert "CHANGED" in message and "--accept-new-host-keys never takes a changed key" in message
    assert "CHANGED" in refusal(policy, TARGET, "localhost", 22022, ed)
    assert "REVOKED" in refusal(policy, JUMP, "jumphost", 22, ec)
    assert policy.check(TARGET, "localhost", 22022, ed2.type, ed2.blob, HINT) is None
    # without the flag the same key is refused
    strict = policy_of(text)
    assert "--accept-new-host-keys" in refusal(strict, JUMP, "jumphost", 2222, ed)


def test_a_scoped_pin_makes_its_host_known(keys: dict[str, Key]) -> None:
    ed, ec = keys["ed"], keys["ec"]
    policy = HostKeyPolicy(pins=parse_pins([f"jumphost={fingerprint(ed.blob)}"]), accept_new=True)
    assert policy.verdict("jumphost", 22, ed.type, ed.blob) is Verdict.MATCH
    assert policy.verdict("jumphost", 22, ec.type, ec.blob) is Verdict.CHANGED
    message = refusal(policy, JUMP, "jumphost", 22, ec)
    assert f"--host-key-fingerprint pins jumphost={fingerprint(ed.blob)}" in message
    # a pin for one host says nothing about another
    assert policy.check(JUMP, "other", 22, ec.type, ec.blob, HINT) is not None


def test_algorithms_for_prefers_like_openssh(keys: dict[str, Key]) -> None:
    text = "\n".join(
        [
            keys["rsa"].line("h"),
            keys["ec384"].line("h"),
            keys["ed"].line("h,other"),
            keys["ec"].line("*,!other"),
            keys["rsa2"].line("[h]:2222"),
            "@cert-authority h " + keys["ed2"].line("").strip(),
        ]
    )
    policy = policy_of(text)
    assert policy.algorithms_for("h", 22) == [
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "rsa-sha2-512",
        "rsa-sha2-256",
    ]  # OpenSSH's preference order, not the file's
    assert policy.algorithms_for("H", 22) == policy.algorithms_for("h", 22)
    assert policy.algorithms_for("other", 22) == ["ssh-ed25519"]
    assert policy.algorithms_for("h", 2222) == [
        "ecdsa-sha2-nistp256",
        "rsa-sha2-512",
        "rsa-sha2-256",
    ]
    assert policy_of(keys["rsa"].line("h")).algorithms_for("h", 22) == [
        "rsa-sha2-512",
        "rsa-sha2-256",
    ]
    assert HostKeyPolicy().algorithms_for("h", 22) == []


# --------------------------------------------------------------------------- pins


def test_pins_global_and_scoped(keys: dict[str, Key]) -> None:
    ed, ec = keys["ed"], keys["ec"]
    (print_,) = keygen_fingerprint(ed.pub)  # as the user copies it from ssh-keygen -lf
    anywhere = HostKeyPolicy(pins=parse_pins([print_]))
    assert anywhere.verdict("any", 1, ed.type, ed.blob) is Verdict.MATCH
    assert anywhere.verdict("jumphost", 22, ec.type, ec.blob) is Verdict.UNKNOWN
    assert anywhere.check(TARGET, "localhost", 22022, ed.type, ed.blob, HINT) is None
    for scope in ("localhost:22022", "[localhost]:22022", "LocalHost:22022"):
        scoped = HostKeyPolicy(pins=parse_pins([f"{scope}={print_}"]))
        assert scoped.pins == (f"[localhost]:22022={print_}",)
        assert scoped.verdict("localhost", 22022, ed.type, ed.blob) is Verdict.MATCH
        assert scoped.verdict("LOCALHOST", 22022, ed.type, ed.blob) is Verdict.MATCH
        assert scoped.verdict("localhost", 22, ed.type, ed.blob) is Verdict.UNKNOWN
        assert scoped.verdict("other", 22022, ed.type, ed.blob) is Verdict.UNKNOWN
    # a pin is explicit trust: it accepts a key even where known_hosts has another one
    pinned = policy_of(keys["ed2"].line("jumphost"), pins=parse_pins([f"jumphost={print_}"]))
    assert pinned.verdict("jumphost", 22, ed.type, ed.blob) is Verdict.MATCH


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["jumphost:22={p}"], ("jumphost={p}",)),
        (["[jumphost]:22={p}"], ("jumphost={p}",)),
        (["[jumphost]={p}"], ("jumphost={p}",)),
        (["2001:db8::1={p}"], ("2001:db8::1={p}",)),
        (["[2001:DB8::1]:2222={p}"], ("[2001:db8::1]:2222={p}",)),
        (["sha256:{b}="], ("SHA256:{b}",)),  # ssh-keygen -E sha256 -l never pads, but tolerate it
        (["{p}, h:2222={p}", " "], ("{p}", "[h]:2222={p}")),
        ([], ()),
    ],
)
def test_parse_pins_canonical_forms(
    keys: dict[str, Key], values: list[str], expected: tuple[str, ...]
) -> None:
    print_ = fingerprint(keys["ed"].blob)
    body = print_.removeprefix("SHA256:")
    fill = {"p": print_, "b": body}
    assert parse_pins([v.format(**fill) for v in values]) == tuple(
        e.format(**fill) for e in expected
    )


@pytest.mark.parametrize(
    ("pin", "message"),
    [
        ("MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48", "is MD5 — pin the SHA256 form"),
        ("16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48", "is MD5 — pin the SHA256 form"),
        ("host=MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48", "ssh-keygen -lf"),
        ("SHA256:short", "is not SHA256:<43 base64 characters>"),
        ("SHA256:{b}A", "is not SHA256:<43 base64 characters>"),
        ("SHA256:{b_bad_tail}", "is not SHA256:<43 base64 characters>"),  # non-canonical last char
        ("SHA256:{b_bad_char}", "is not SHA256:<43 base64 characters>"),
        ("SHA1:{b}", "is not SHA256:<43 base64 characters>"),
        ("{b}", "is not SHA256:<43 base64 characters>"),
        ("ssh-ed25519", "is not SHA256:<43 base64 characters>"),
        ("*.example.com=SHA256:{b}", "is not HOST, HOST:PORT or [HOST]:PORT"),
        ("[host=SHA256:{b}", "is not HOST, HOST:PORT or [HOST]:PORT"),
        ("host:ssh=SHA256:{b}", "is not HOST, HOST:PORT or [HOST]:PORT"),
        ("host:99999=SHA256:{b}", "port 99999 is out of range"),
        ("a=b=SHA256:{b}", "is not SHA256:<43 base64 characters>"),
    ],
)
def test_bad_pins_are_config_errors(keys: dict[str, Key], pin: str, message: str) -> None:
    body = fingerprint(keys["ed"].blob).removeprefix("SHA256:")
    tail = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    bad_tail = body[:-1] + tail[(tail.index(body[-1]) + 1) % 64]
    fill = {"b": body, "b_bad_tail": bad_tail, "b_bad_char": body[:-1] + "-"}
    with pytest.raises(ConfigError) as caught:
        parse_pins(["SHA256:" + "A" * 43, pin.format(**fill)])
    assert message in str(caught.value) and caught.value.exit_code == ExitCode.USAGE
