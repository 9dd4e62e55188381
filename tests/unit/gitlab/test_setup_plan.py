"""The pure parts of `deployer setup gitlab`: planning variables, merging known_hosts, key lines."""

from __future__ import annotations

import base64

from deployer.gitlab.setup import (
    generate_key,
    merge_known_hosts,
    public_key_of,
    render_ci_key_lines,
)
from deployer.gitlab.variables import Variable, plan_change
from deployer.ssh.keyscan import ScannedKey
from deployer.ssh.route import build_route

BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
OTHER = "AAAAC3NzaC1lZDI1NTE5AAAAIB8Mlh8rqwUQmOh2pX3bQ3Ji6IZQxOlvFl3zqk5TJ2V7"


def _var(value: str | None, **flags: bool) -> Variable:
    return Variable("SSH_PRIVATE_KEY", value, masked=flags.get("masked", True),
                    protected=flags.get("protected", True), environment_scope="production")  # fmt: skip


def test_plan_change() -> None:
    wanted = _var("a")
    assert plan_change(None, wanted).action == "create"
    assert plan_change(_var("a"), wanted).action == "keep"
    assert plan_change(_var("a\n"), wanted).action == "keep"  # trailing whitespace is not a change
    changed = plan_change(_var("b", protected=False), wanted)
    assert (changed.action, changed.reason) == ("update", "value, protected differ")
    # a hidden variable's value is unknown: only its flags are compared
    assert plan_change(_var(None), _var(None)).action == "keep"


def test_generated_key_is_one_base64_line_that_deployer_loads() -> None:
    value, public = generate_key("deployer-ci acme/app production")
    assert "\n" not in value and len(value) >= 8
    assert base64.b64decode(value).startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public_key_of(value, "deployer-ci acme/app production") == public


def test_merge_known_hosts_replaces_named_hosts_and_keeps_the_rest() -> None:
    existing = "\n".join([
        f"[localhost]:22022 ssh-ed25519 {OTHER}",  # the named host's old key: replaced
        f"other.example.com ssh-ed25519 {OTHER}",  # another host: kept
        f"@revoked * ssh-ed25519 {OTHER}",  # a marker line: kept
        "# a comment",
    ])  # fmt: skip
    line = f"[localhost]:22022 ssh-ed25519 {BLOB}"
    scanned = [
        ScannedKey("target", "[localhost]:22022", "ssh-ed25519", "SHA256:x", line, "changed")
    ]
    merged = merge_known_hosts(existing, scanned, [("localhost", 22022)])
    assert merged.splitlines() == [f"other.example.com ssh-ed25519 {OTHER}", f"@revoked * ssh-ed25519 {OTHER}",
                                   "# a comment", line]  # fmt: skip
    assert (
        merge_known_hosts(merged, scanned, [("localhost", 22022)]) == merged
    )  # stable: no change next time


def test_merge_known_hosts_adds_only_new_hosts_unless_named() -> None:
    existing = f"jump.example.com ssh-ed25519 {OTHER}\n"
    scanned = [
        ScannedKey("jump", "jump.example.com", "ssh-ed25519", "SHA256:a", f"jump.example.com ssh-ed25519 {OTHER}",
                   "known"),
        ScannedKey("jump", "jump.example.com", "ecdsa-sha2-nistp256", "SHA256:b", "jump.example.com ecdsa AAA",
                   "unpinned"),
        ScannedKey("target", "[localhost]:22022", "ssh-ed25519", "SHA256:c", f"[localhost]:22022 ssh-ed25519 {BLOB}",
                   "new"),
    ]  # fmt: skip
    assert merge_known_hosts(existing, scanned).splitlines() == [
        f"jump.example.com ssh-ed25519 {OTHER}", f"[localhost]:22022 ssh-ed25519 {BLOB}"]  # fmt: skip
    # a named hop takes every key scanned there
    assert "jump.example.com ecdsa AAA" in merge_known_hosts(
        existing, scanned, [("jump.example.com", 22)]
    )


def test_key_lines_for_a_tunnel_a_lan_host_and_a_direct_target() -> None:
    tunnel = build_route("deploy@localhost:22022", ["jump@jump.example.com"], default_user="x")
    lines = render_ci_key_lines([tunnel], (), "ssh-ed25519 KEY c").splitlines()
    assert lines[1] == ('restrict,port-forwarding,permitopen="localhost:22022",permitopen="127.0.0.1:22022",'
                        'command="/bin/false" ssh-ed25519 KEY c')  # fmt: skip
    assert lines[3] == 'restrict,from="127.0.0.1,::1" ssh-ed25519 KEY c'
    lan = build_route("deploy@app1.internal", ["jump@jump.example.com"], default_user="x")
    lines = render_ci_key_lines([lan], (), "ssh-ed25519 KEY c").splitlines()
    assert 'permitopen="app1.internal:22"' in lines[1] and lines[3] == "restrict ssh-ed25519 KEY c"
    direct = build_route("deploy@app1.internal", [], default_user="x")
    assert (
        render_ci_key_lines([direct], (), "ssh-ed25519 KEY c").splitlines()[1]
        == "restrict ssh-ed25519 KEY c"
    )
    given = render_ci_key_lines([tunnel], ("0.0.0.0:22022:localhost:22",), "ssh-ed25519 KEY c")
    assert 'permitopen="127.0.0.1:22022"' in given
