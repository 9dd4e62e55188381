"""Parsing --to/--jump, and ssh_config aliases filling the gaps."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.errors import ConfigError
from deployer.ssh.route import Endpoint, Route, build_route, parse_endpoint, parse_jumps
from deployer.ssh.ssh_config import ssh_config_lookup


def test_endpoint_forms() -> None:
    assert parse_endpoint("deploy@localhost:22022", default_user="me") == Endpoint(
        "deploy", "localhost", 22022
    )
    assert parse_endpoint("jumphost", default_user="me") == Endpoint("me", "jumphost", 22)
    assert parse_endpoint("ops@[::1]:2222", default_user="me") == Endpoint("ops", "::1", 2222)
    assert str(Endpoint("ops", "::1", 2222)) == "ops@[::1]:2222"
    assert str(Endpoint("ops", "host", 22)) == "ops@host"


@pytest.mark.parametrize("bad", ["", "a b", "u@h:99999", "u@h:x", "u@@h", "http://h"])
def test_bad_endpoints_name_the_option(bad: str) -> None:
    with pytest.raises(ConfigError, match="--jump"):
        parse_endpoint(bad, default_user="me", option="--jump")


@pytest.mark.parametrize(("text", "what"), [
    ("deploy@x$(touch${IFS}pwned)", "host name"), ("deploy@x`id`", "host name"),
    ("deploy@x;id", "host name"), ("deploy@x|id", "host name"), ("deploy@-oProxyCommand=id", "host name"),
    ("deploy@x&&id", "host name"), ("deploy@x'y", "host name"), ("deploy@x\\y", "host name"),
    ("deploy@x\x07y", "host name"), ("$(id)@host", "user name"), ("`id`@host", "user name"),
    ("-oProxyCommand=id@host", "user name"), ("a;b@host", "user name"), ("a|b@host", "user name"),
    ("deploy@[::1;id]", "USER@HOST"),
])  # fmt: skip
def test_shell_syntax_in_host_and_user_names_is_refused(text: str, what: str) -> None:
    """The CVE-2023-51385 pattern: %h and %r reach a shell when a ProxyCommand is expanded."""
    with pytest.raises(ConfigError, match=what):
        parse_endpoint(text, default_user="me")


@pytest.mark.parametrize(("text", "host"), [
    ("deploy@app-1.example.com", "app-1.example.com"), ("deploy@10.0.0.7", "10.0.0.7"), ("d@[fe80::1%2]:22", "fe80::1%2"),
    ("d@[2001:db8::7]", "2001:db8::7"), ("first.last@intranet_host", "intranet_host"), ("_svc@h", "h"),
])  # fmt: skip
def test_host_names_ip_literals_and_posix_user_names(text: str, host: str) -> None:
    assert parse_endpoint(text, default_user="me").host == host


def test_names_from_ssh_config_are_checked_too(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host evil\n  HostName x$(id)\nHost badu\n  HostName ok.example.com\n  User $(id)\n"
    )
    lookup = ssh_config_lookup(config)
    with pytest.raises(
        ConfigError, match=r"after ssh_config's Host evil\): 'x\$\(id\)' is not a host name"
    ):
        parse_endpoint("evil", default_user="me", lookup=lookup)
    with pytest.raises(ConfigError, match="is not a user name"):
        parse_endpoint("badu", default_user="me", lookup=lookup)


def test_jump_chains_like_ssh_dash_j() -> None:
    hops = parse_jumps(["a@one,b@two:2200", "c@three"], default_user="me")
    assert [str(h) for h in hops] == ["a@one", "b@two:2200", "c@three"]


def test_route_describes_each_hop() -> None:
    route = Route(Endpoint("deploy", "localhost", 22022), (Endpoint("jump", "jumphost"),))
    assert route.describe(0) == "jump host jump@jumphost"
    assert route.describe(1) == "target deploy@localhost:22022 (through jump@jumphost)"
    assert str(route) == "jump@jumphost -> deploy@localhost:22022"


def test_ssh_config_aliases_and_proxyjump(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host prod\n  HostName localhost\n  Port 22022\n  User deploy\n  ProxyJump bastion\n"
        "Host bastion\n  HostName jump.example.com\n  User jump\n  Port 2222\n"
    )
    lookup = ssh_config_lookup(config)
    assert lookup is not None
    route = build_route("prod", [], default_user="me", lookup=lookup)
    assert route.target == Endpoint("deploy", "localhost", 22022)
    assert route.jumps == (Endpoint("jump", "jump.example.com", 2222),)
    explicit = build_route("other@prod:2", ["x@y"], default_user="me", lookup=lookup)
    assert explicit.target == Endpoint("other", "localhost", 2) and explicit.jumps == (
        Endpoint("x", "y"),
    )
    assert ssh_config_lookup(tmp_path / "missing") is None


def test_route_flags_reach_the_same_route_again() -> None:
    from deployer.ssh.access import keyscan_hint, route_flags
    from deployer.ssh.proxy import parse_proxy_command

    route = build_route("d@localhost:22022", ["j@jump,k@inner:2200"], default_user="me",
                        host_key_alias="app", jump_host_key_aliases=["jump", "inner"])  # fmt: skip
    flags = route_flags(route)
    assert flags == (
        "--to d@localhost:22022 --jump j@jump,k@inner:2200 --host-key-alias app"
        " --jump-host-key-alias jump,inner"
    )
    assert keyscan_hint(route) == f"deployer keyscan {flags}"
    proxied = Route(Endpoint("d", "h"), (), parse_proxy_command("ssh -W %h:%p bastion"))
    assert route_flags(proxied) == "--to d@h --proxy-command 'ssh -W %h:%p bastion'"
