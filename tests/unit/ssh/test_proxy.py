"""Proxy URLs, ProxyCommand templates, exact reading of proxy replies, and routes from ssh_config."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping

import pytest

from deployer.errors import ConfigError, ProxyError
from deployer.ssh.proxy import (
    PASSWORD_ENV,
    ProxySpec,
    dial,
    expand_command,
    parse_proxy,
    parse_proxy_command,
    proxy_command_line,
    read_http_header,
)
from deployer.ssh.route import Endpoint, build_route


def test_http_proxy_with_password_from_the_environment() -> None:
    spec = parse_proxy("http://ci@proxy.corp:3128", {PASSWORD_ENV: "pw"})
    assert (spec.kind, spec.host, spec.port, spec.username, spec.password) == (
        "http", "proxy.corp", 3128, "ci", "pw",
    )  # fmt: skip
    assert str(spec) == "http://ci@proxy.corp:3128" and "pw" not in repr(spec)


def test_url_password_is_decoded_and_never_shown() -> None:
    spec = parse_proxy("socks5h://u%40x:p%3Aw@[::1]:1081", {})
    assert (spec.username, spec.password, spec.host, spec.port) == ("u@x", "p:w", "::1", 1081)
    assert str(spec) == "socks5h://u@x@[::1]:1081"


def test_socks_default_port() -> None:
    assert parse_proxy("socks5://gw", {}).port == 1080


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("proxy:3128", "has no scheme"),
        ("https://proxy:3128", "https:// proxies are not supported — use http://"),
        ("socks4://gw:1080", "use socks5h://"),
        ("ftp://gw:21", "unknown scheme 'ftp'"),
        ("http://proxy.corp", "has no port — add one, e.g. http://proxy.corp:3128"),
        ("http://proxy:99999", "Port out of range"),
        ("http://proxy:3128/path", "a proxy URL has no path"),
        ("http://:3128", "names no proxy host"),
    ],
)
def test_bad_proxy_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_proxy(url, {})


def test_a_bad_url_never_echoes_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_proxy("http://ci:hunter2@proxy.corp/x", {})
    assert "hunter2" not in str(caught.value) and "ci:***@" in str(caught.value)


@pytest.mark.parametrize("url", [
    "http://ci:s3/cr3t@proxy.corp", "http://ci:s3@cr3t@proxy.corp", "http://ci:s3/cr3t@proxy.corp:3128/x",
    "http://ci:s3@cr3t@proxy:99999", "ci:s3/cr3t@proxy:3128", "ftp://ci:s3@/cr3t@gw:21",
    "http://ci:s3/cr3t@:3128",
])  # fmt: skip
def test_a_password_with_a_slash_or_an_at_sign_never_shows(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_proxy(url, {})
    assert "s3" not in str(caught.value) and "cr3t" not in str(caught.value), caught.value


def test_expanded_host_and_user_are_quoted_for_the_shell() -> None:
    assert expand_command("ssh -W %h:%p %r@bastion", "app.example.com", 22, "ci") == (
        "ssh -W app.example.com:22 ci@bastion"
    )
    assert expand_command("nc %h %p # %r", "x$(id)", 22, "a;b") == "nc 'x$(id)' 22 # 'a;b'"


def test_a_password_may_hold_a_slash_or_an_at_sign() -> None:
    spec = parse_proxy("http://ci:s3/cr@t:x@proxy.corp:3128", {})
    assert (spec.username, spec.password, spec.host, spec.port) == (
        "ci",
        "s3/cr@t:x",
        "proxy.corp",
        3128,
    )
    assert str(spec) == "http://ci@proxy.corp:3128"


def test_password_without_user() -> None:
    with pytest.raises(ConfigError, match="names no user"):
        parse_proxy("http://proxy:3128", {PASSWORD_ENV: "pw"})


def test_proxy_command_tokens() -> None:
    spec = parse_proxy_command("ssh -W %h:%p %r@bastion # 100%%")
    assert expand_command(spec.command, "10.0.0.5", 22, "deploy") == (
        "ssh -W 10.0.0.5:22 deploy@bastion # 100%"
    )
    with pytest.raises(ConfigError, match="unknown token %n"):
        parse_proxy_command("nc %n %p")
    with pytest.raises(ConfigError, match="is empty"):
        parse_proxy_command("  ")


def test_openssh_proxy_command_line_keeps_the_password_out() -> None:
    spec = ProxySpec("http", "proxy", 3128, "ci", "secret")
    line = proxy_command_line(spec, "/opt/py 3/bin/python")
    assert (
        line
        == "'/opt/py 3/bin/python' -m deployer proxy-connect --proxy http://ci@proxy:3128 %h %p"
    )
    assert "secret" not in line
    assert proxy_command_line(ProxySpec("command", command="nc %h %p"), "py") == "nc %h %p"


@pytest.mark.parametrize("chunks", [[b"HTTP/1.1 200 OK\r\nVia: x\r\n\r\nSSH-2.0-x\r\n"],
                                    [b"HTTP/1.1 200 OK\r", b"\n\r", b"\n", b"SSH-2.0-x\r\n"]])  # fmt: skip
def test_http_header_is_read_without_over_reading(chunks: list[bytes]) -> None:
    ours, theirs = socket.socketpair()

    def send() -> None:  # in pieces, so the reader sees the blank line split across reads
        for chunk in chunks:
            theirs.sendall(chunk)
            time.sleep(0.02)

    sender = threading.Thread(target=send)
    with ours, theirs:
        ours.settimeout(5)
        sender.start()
        header = read_http_header(ours)
        sender.join(5)
        assert header.endswith(b"\r\n\r\n") and b"SSH" not in header
        assert ours.recv(64) == b"SSH-2.0-x\r\n"  # the server's banner is still there for paramiko


def test_http_header_cut_short() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(b"HTTP/1.1 200 OK\r\n")
        theirs.close()
        with pytest.raises(ConnectionResetError):
            read_http_header(ours)


def lookup(table: Mapping[str, Mapping[str, str]]):  # type: ignore[no-untyped-def]
    """An ssh_config lookup over a dict, as sshconfig.ssh_config_lookup returns it."""
    return lambda alias: table.get(alias, {})


CONFIG = {
    "prod": {"hostname": "10.1.2.3", "port": "2222", "user": "app", "proxyjump": "bastion",
             "hostkeyalias": "prod-key", "identityfile": "/k/prod\n/k/other", "connecttimeout": "4"},
    "bastion": {"hostname": "bastion.corp", "user": "jump", "proxycommand": "ssh -W %h:%p gw"},
    "solo": {"hostname": "10.9.9.9", "proxycommand": "none"},
}  # fmt: skip


def test_route_from_ssh_config() -> None:
    route = build_route("prod", [], default_user="me", lookup=lookup(CONFIG))
    assert route.target == Endpoint("app", "10.1.2.3", 2222, "prod-key", ("/k/prod", "/k/other"))
    assert route.target.known_as == ("prod-key", 22)
    assert route.jumps == (Endpoint("jump", "bastion.corp", 22),)
    # the first hop's ProxyCommand carries the route's first hop
    assert route.proxy == ProxySpec("command", command="ssh -W %h:%p gw")
    assert route.connect_timeout == 4.0


def test_flags_win_over_ssh_config() -> None:
    http = ProxySpec("http", "proxy", 3128)
    route = build_route("prod", ["other@gate:2200"], default_user="me", lookup=lookup(CONFIG),
                        proxy=http, host_key_alias="pinned", jump_host_key_aliases=["gate-key"])  # fmt: skip
    assert route.proxy == http and route.target.host_key_alias == "pinned"
    assert route.jumps == (Endpoint("other", "gate", 2200, "gate-key"),)
    assert build_route("solo", [], default_user="me", lookup=lookup(CONFIG)).proxy is None


def test_more_jump_aliases_than_jumps() -> None:
    with pytest.raises(ConfigError, match="2 jump host key aliases for 1 jump host"):
        build_route("t@h", ["j@g"], default_user="me", jump_host_key_aliases=["a", "b"])


def test_bad_connect_timeout_in_ssh_config() -> None:
    with pytest.raises(ConfigError, match="ConnectTimeout 'soon'"):
        build_route("x", [], default_user="me", lookup=lookup({"x": {"connecttimeout": "soon"}}))


def test_dial_refused_names_the_peer_and_the_hint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ProxyError) as caught:
        dial("127.0.0.1", port, 2, "the proxy P", "is it running?", ProxyError)
    assert (
        str(caught.value)
        == f"the proxy P refused the connection on 127.0.0.1:{port} — is it running?"
    )


def test_dial_tunes_the_socket_for_ssh() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with dial("127.0.0.1", server.getsockname()[1], 2, "x", "y", ProxyError) as sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_dial_acknowledges_every_read_at_once() -> None:
    """After a request/answer exchange Linux delays ACKs again; a dialled socket re-arms
    quick ACKs on every read (an sshd's second small packet would wait 40 ms for our ACK)."""

    def quick_ack_after_each_answer(sock: socket.socket, peer: socket.socket) -> list[int]:
        states = []
        for _ in range(10):
            sock.sendall(b"request")
            assert peer.recv(64)
            peer.sendall(b"answer")
            assert sock.recv(64)
            states.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
        return states

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with dial("127.0.0.1", server.getsockname()[1], 2, "x", "y", ProxyError) as sock:
            peer, _ = server.accept()
            with peer:
                assert quick_ack_after_each_answer(sock, peer) == [1] * 10
                # the same connection read as a plain socket: delayed ACKs come back
                with socket.socket(fileno=sock.detach()) as plain:
                    assert quick_ack_after_each_answer(plain, peer)[-1] == 0
