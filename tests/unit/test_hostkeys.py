"""known_hosts parsing and verdicts, against files and fingerprints made by the real ssh-keygen."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from deployer.errors import ConfigError, HostKeyError
from deployer.hostkeys import (
    HostKeyPolicy,
    Verdict,
    fingerprint,
    host_id,
    known_hosts_line,
    parse_known_hosts,
    parse_pins,
)

HINT = "deployer keyscan --to deploy@localhost:22022 --jump jump@jumphost"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, bytes, Path]]:
    """(type, blob, pub path) for ed25519, ecdsa, rsa and a second ed25519."""
    folder = tmp_path_factory.mktemp("hostkeys")
    made = {}
    for name, kind in (("ed", "ed25519"), ("ec", "ecdsa"), ("rsa", "rsa"), ("ed2", "ed25519")):
        path = folder / name
        extra = ["-b", "2048"] if kind == "rsa" else []
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-f", str(path)], check=True
        )
        key_type, encoded = path.with_name(name + ".pub").read_text().split()[:2]
        made[name] = (key_type, base64.b64decode(encoded), path.with_name(name + ".pub"))
    return made


def line(host: str, key: tuple[str, bytes, Path]) -> str:
    return f"{host} {key[0]} {base64.b64encode(key[1]).decode()}"


def test_fingerprint_matches_ssh_keygen(keys) -> None:
    for _, blob, pub in keys.values():
        out = subprocess.run(
            ["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True
        ).stdout
        assert fingerprint(blob) == out.split()[1]


def test_host_ids() -> None:
    assert host_id("jumphost", 22) == "jumphost"
    assert host_id("localhost", 22022) == "[localhost]:22022"


def test_plain_port_and_case_rules(keys) -> None:
    policy = HostKeyPolicy(
        tuple(parse_known_hosts(line("[LocalHost]:22022,jump.example.com", keys["ed"]), "t"))
    )
    ed_type, ed_blob, _ = keys["ed"]
    assert policy.verdict("localhost", 22022, ed_type, ed_blob) is Verdict.MATCH
    assert (
        policy.verdict("localhost", 22, ed_type, ed_blob) is Verdict.UNKNOWN
    )  # bare pattern = port 22 only
    assert policy.verdict("jump.example.com", 22, ed_type, ed_blob) is Verdict.MATCH
    assert policy.verdict("jump.example.com", 2222, ed_type, ed_blob) is Verdict.UNKNOWN


def test_wildcards_and_negation(keys) -> None:
    text = line("*.example.com,!evil.example.com,web?.corp", keys["ed"])
    policy = HostKeyPolicy(tuple(parse_known_hosts(text, "t")))
    ed_type, ed_blob, _ = keys["ed"]
    assert policy.verdict("a.example.com", 22, ed_type, ed_blob) is Verdict.MATCH
    assert policy.verdict("evil.example.com", 22, ed_type, ed_blob) is Verdict.UNKNOWN
    assert policy.verdict("web1.corp", 22, ed_type, ed_blob) is Verdict.MATCH
    assert policy.verdict("web10.corp", 22, ed_type, ed_blob) is Verdict.UNKNOWN


def test_hashed_entries_from_ssh_keygen(keys, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        line("[localhost]:22022", keys["ed"]) + "\n" + line("jumphost", keys["ec"]) + "\n"
    )
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    text = known.read_text()
    assert "localhost" not in text and text.startswith("|1|")
    policy = HostKeyPolicy(tuple(parse_known_hosts(text, str(known))))
    assert policy.verdict("localhost", 22022, keys["ed"][0], keys["ed"][1]) is Verdict.MATCH
    assert policy.verdict("jumphost", 22, keys["ec"][0], keys["ec"][1]) is Verdict.MATCH
    assert policy.verdict("other", 22, keys["ec"][0], keys["ec"][1]) is Verdict.UNKNOWN


def test_cert_authority_lines_do_not_break_the_file(keys) -> None:
    text = "\r\n".join(
        [
            "# comment",
            "@cert-authority *.example.com " + line("", keys["ed2"]).strip(),
            line("[localhost]:22022", keys["ed"]),
            "",
        ]
    ).rstrip("\r\n")  # CRLF and no final newline, as CI variables do
    policy = HostKeyPolicy(tuple(parse_known_hosts(text, "SSH_KNOWN_HOSTS")))
    assert policy.verdict("localhost", 22022, keys["ed"][0], keys["ed"][1]) is Verdict.MATCH
    with pytest.raises(
        HostKeyError,
        match="a @cert-authority line matches, but host certificates are not supported",
    ):
        policy.check(
            "jump host j@a.example.com", "a.example.com", 22, keys["ed"][0], keys["ed"][1], HINT
        )


def test_changed_unknown_and_revoked_messages(keys) -> None:
    ed_type, ed_blob, _ = keys["ed"]
    text = "\n".join(
        [line("[localhost]:22022", keys["ed2"]), "@revoked * " + line("", keys["rsa"]).strip()]
    )
    policy = HostKeyPolicy(tuple(parse_known_hosts(text, "SSH_KNOWN_HOSTS")))
    hop = "target deploy@localhost:22022 (through jump@jumphost)"
    with pytest.raises(HostKeyError) as changed:
        policy.check(hop, "localhost", 22022, ed_type, ed_blob, HINT)
    message = str(changed.value)
    assert "CHANGED" in message and hop in message and fingerprint(ed_blob) in message
    assert "SSH_KNOWN_HOSTS:1" in message and HINT in message
    # a different key type for a known host is unknown, not changed (like OpenSSH)
    assert policy.verdict("localhost", 22022, keys["ec"][0], keys["ec"][1]) is Verdict.UNKNOWN
    with pytest.raises(HostKeyError) as unknown:
        policy.check(hop, "localhost", 22022, keys["ec"][0], keys["ec"][1], HINT)
    assert "is not in SSH_KNOWN_HOSTS" in str(unknown.value) and "--accept-new-host-keys" in str(
        unknown.value
    )
    with pytest.raises(HostKeyError, match="REVOKED"):
        policy.check(hop, "anything", 22, "rsa-sha2-512", keys["rsa"][1], HINT)


def test_accept_new_notices_but_never_overrides_a_change(keys) -> None:
    ed_type, ed_blob, _ = keys["ed"]
    policy = HostKeyPolicy(
        tuple(parse_known_hosts(line("[localhost]:22022", keys["ed2"]), "t")), accept_new=True
    )
    notice = policy.check("jump host j@h", "h", 22, ed_type, ed_blob, HINT)
    assert (
        notice is not None
        and fingerprint(ed_blob) in notice
        and known_hosts_line("h", 22, ed_type, ed_blob) in notice
    )
    with pytest.raises(HostKeyError, match="CHANGED"):
        policy.check("t", "localhost", 22022, ed_type, ed_blob, HINT)
    assert HostKeyPolicy(accept_new=False).verdict("h", 22, ed_type, ed_blob) is Verdict.UNKNOWN


def test_rsa_sha2_algorithms_match_ssh_rsa_entries(keys) -> None:
    rsa_blob = keys["rsa"][1]
    policy = HostKeyPolicy(tuple(parse_known_hosts(line("h", keys["rsa"]), "t")))
    assert policy.verdict("h", 22, "rsa-sha2-512", rsa_blob) is Verdict.MATCH
    assert policy.algorithms_for("h", 22) == ["rsa-sha2-512", "rsa-sha2-256"]
    both = HostKeyPolicy(
        tuple(parse_known_hosts(line("h", keys["ec"]) + "\n" + line("h", keys["rsa"]), "t"))
    )
    assert both.algorithms_for("h", 22) == ["ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256"]
    assert both.algorithms_for("other", 22) == []


def test_pins(keys) -> None:
    ed_type, ed_blob, _ = keys["ed"]
    print_ = fingerprint(ed_blob)
    assert (
        HostKeyPolicy(pins=parse_pins([print_])).verdict("any", 1, ed_type, ed_blob)
        is Verdict.MATCH
    )
    scoped = HostKeyPolicy(pins=parse_pins([f"localhost:22022={print_}"]))
    assert scoped.verdict("localhost", 22022, ed_type, ed_blob) is Verdict.MATCH
    assert scoped.verdict("other", 22, ed_type, ed_blob) is Verdict.UNKNOWN
    with pytest.raises(ConfigError, match="MD5"):
        parse_pins(["MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48"])
    with pytest.raises(ConfigError, match="is not SHA256"):
        parse_pins(["SHA256:short"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host ssh-ed25519", "SSH_KNOWN_HOSTS:1: expected"),
        (
            "ok\nhost ssh-ed25519 !!!notbase64",
            "SSH_KNOWN_HOSTS:2: the key of host is not valid base64",
        ),
        ("@bogus host ssh-ed25519 AAAA", "unknown marker @bogus"),
        ("|1|nope ssh-ed25519 AAAA", "malformed hashed host name"),
    ],
)
def test_malformed_lines_name_source_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_known_hosts(text.replace("ok\n", "# ok\n"), "SSH_KNOWN_HOSTS")
