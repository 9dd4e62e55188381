"""Every route people have, for real: tinyproxy (CONNECT, basic auth, allow-list), Dante (SOCKS5 with
username auth), a ProxyCommand running ``ssh -W``, ssh_config aliases, a key and a host key alias per
hop, and ``deployer tunnel`` through a proxy. Each failure: one line, exit 7, nothing live changed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.sandbox.servers import free_port, write_keypair
from deployer.ssh.authorized_keys import render_authorized_keys
from deployer.ssh.forwards import parse_forwards
from tests.integration.helpers import live, make_app, releases
from tests.integration.proxies import (
    PROXY_PASSWORD,
    PROXY_USER,
    Proxy,
    start_dante,
    start_tinyproxy,
)

pytestmark = pytest.mark.integration

CLIENTS = ("paramiko", "openssh")

HTTP_USER, HTTP_PASSWORD = "ci", "http-s3cret-pw"


@pytest.fixture(scope="module")
def tinyproxy(topology: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """CONNECT allowed to 127.0.0.1 on the jump and tunnel ports only, with basic auth."""
    box = topology.box
    proxy = start_tinyproxy(tmp_path_factory.mktemp("tinyproxy"), user=HTTP_USER, password=HTTP_PASSWORD,
                            ports=[box.jump.port, box.tunnel_port], allowed_hosts=["127.0.0.1"])  # fmt: skip
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def dante(topology: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """SOCKS5 with username/password, allowed only to the jump and the tunnel port."""
    box = topology.box
    proxy = start_dante(tmp_path_factory.mktemp("dante"),
                        allowed=[("127.0.0.1", box.jump.port), ("127.0.0.1", box.tunnel_port)])  # fmt: skip
    yield proxy
    proxy.stop()


def _direct_target(topology: Any) -> list[str]:
    """The tunnel port as the only hop (a proxy in front of it instead of the jump host)."""
    return ["--to", f"{topology.user}@localhost:{topology.box.tunnel_port}"]


def _jump_known_hosts(topology: Any, path: Path) -> Path:
    box = topology.box
    path.write_text("".join(f"[127.0.0.1]:{box.jump.port} {key}\n" for key in box.jump.host_keys))
    return path


def _ssh_w(topology: Any, tmp_path: Path) -> str:
    """A ProxyCommand like people write it: ssh -W %h:%p through the jump host."""
    known = _jump_known_hosts(topology, tmp_path / "jump_known_hosts")
    return (
        f"ssh -F /dev/null -i {topology.box.ci_key} -o IdentitiesOnly=yes -o BatchMode=yes"
        f" -o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes -p {topology.box.jump.port}"
        f" -W %h:%p {topology.user}@127.0.0.1"
    )


# ---------------------------------------------------------------------------- deploys through each


@pytest.mark.parametrize("client", CLIENTS)
def test_push_through_http_connect_proxy_with_basic_auth(topology, deployer, tmp_path: Path,
                                                         tinyproxy: Proxy, client: str) -> None:  # fmt: skip
    target = topology.deploy_path(f"http-{tmp_path.name}")
    env = {**topology.env, "DEPLOYER_PROXY_PASSWORD": HTTP_PASSWORD}
    run = deployer(["push", str(make_app(tmp_path, "h")), *topology.route, "--path", str(target),
                    "--proxy", f"http://{HTTP_USER}@127.0.0.1:{tinyproxy.port}", "--ssh-client", client],
                   env=env)  # fmt: skip
    assert run.status == 0, run.output
    assert live(target)
    # the proxy carried the first hop (the jump host); the jump carried the rest
    assert f"CONNECT 127.0.0.1:{topology.box.jump.port}" in tinyproxy.text()
    assert HTTP_PASSWORD not in run.output


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("scheme", ["socks5h", "socks5"])
def test_push_through_socks5_with_username_auth(topology, deployer, tmp_path: Path, dante: Proxy,
                                               scheme: str, client: str) -> None:  # fmt: skip
    target = topology.deploy_path(f"{scheme}-{tmp_path.name}")
    env = {**topology.env, "DEPLOYER_PROXY_PASSWORD": PROXY_PASSWORD}
    # socks5h: the proxy resolves "localhost" (remote DNS); socks5: we resolve it
    run = deployer(["push", str(make_app(tmp_path, "s")), *_direct_target(topology), "--path", str(target),
                    "--proxy", f"{scheme}://{PROXY_USER}@127.0.0.1:{dante.port}", "--ssh-client", client],
                   env=env)  # fmt: skip
    assert run.status == 0, run.output
    assert live(target)
    assert f"127.0.0.1.{topology.box.tunnel_port}" in dante.text()


@pytest.mark.parametrize("client", CLIENTS)
def test_push_through_proxy_command_ssh_w(topology, deployer, tmp_path: Path, client: str) -> None:
    target = topology.deploy_path(f"pc-{tmp_path.name}")
    run = deployer(["push", str(make_app(tmp_path, "c")), *_direct_target(topology), "--path", str(target),
                    "--proxy-command", _ssh_w(topology, tmp_path), "--ssh-client", client],
                   env=topology.env)  # fmt: skip
    assert run.status == 0, run.output
    assert live(target)


def test_ssh_config_aliases_identity_file_host_key_alias_in_ci(
    topology, deployer, tmp_path: Path
) -> None:
    box = topology.box
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host prod\n  HostName localhost\n  Port {box.tunnel_port}\n  User {topology.user}\n"
        f"  ProxyJump bastion\n  HostKeyAlias intranet-app\n  IdentityFile {box.ci_key}\n  ConnectTimeout 5\n"
        f"Host prod-pc\n  HostName localhost\n  Port {box.tunnel_port}\n  User {topology.user}\n"
        f"  HostKeyAlias intranet-app\n  IdentityFile {box.ci_key}\n"
        f"  ProxyCommand ssh -F {config} -o BatchMode=yes -W %h:%p bastion\n"
        f"Host bastion\n  HostName 127.0.0.1\n  Port {box.jump.port}\n  User {topology.user}\n"
        f"  IdentityFile {box.ci_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {_jump_known_hosts(topology, tmp_path / 'jump_known')}\n"
    )
    # CI: no key variable (IdentityFile supplies it), the target's key pinned under its alias only
    known = "".join(f"[127.0.0.1]:{box.jump.port} {k}\n" for k in box.jump.host_keys)
    known += "".join(f"intranet-app {k}\n" for k in box.target.host_keys)
    env = {"CI": "true", "SSH_PRIVATE_KEY": "", "SSH_KNOWN_HOSTS": known}
    target = topology.deploy_path(f"alias-{tmp_path.name}")
    run = deployer(["push", str(make_app(tmp_path, "a")), "--to", "prod", "--path", str(target),
                    "--ssh-config", str(config)], env=env)  # fmt: skip
    assert run.status == 0, run.output
    assert live(target)
    through = deployer(["exec", "--to", "prod-pc", "--ssh-config", str(config), "--", "echo via-config"],
                       env=env)  # fmt: skip
    assert through.status == 0, through.output
    assert through.stdout == "via-config\n"
    # without --ssh-config, CI ignores ssh_config: "prod" is just an unknown host name
    ignored = deployer(["exec", "--to", "prod", "--", "true"], env=env)
    assert ignored.status == 7 and "cannot resolve prod" in ignored.stderr


def test_a_key_and_a_host_key_alias_per_hop(topology, deployer, tmp_path: Path) -> None:
    box = topology.box
    jump_only = write_keypair(tmp_path / "jump_only", "ed25519", "jump-only")
    target_only = write_keypair(tmp_path / "target_only", "ed25519", "target-only")
    box.jump.authorize(
        jump_only, f'restrict,port-forwarding,permitopen="localhost:{box.tunnel_port}"'
    )
    box.target.authorize(target_only)
    known = "".join(f"bastion {k}\n" for k in box.jump.host_keys)
    known += "".join(f"intranet-app {k}\n" for k in box.target.host_keys)
    env = {"CI": "true", "SSH_PRIVATE_KEY": (tmp_path / "target_only").read_text(),
           "SSH_JUMP_PRIVATE_KEY": (tmp_path / "jump_only").read_text(), "SSH_KNOWN_HOSTS": known}  # fmt: skip
    aliases = ["--host-key-alias", "intranet-app", "--jump-host-key-alias", "bastion"]
    run = deployer(["exec", *topology.route, *aliases, "--", "echo per-hop"], env=env)
    assert run.status == 0, run.output
    assert run.stdout == "per-hop\n"
    # the target's key does not open the jump host: the error names that hop
    env.pop("SSH_JUMP_PRIVATE_KEY")
    refused = deployer(["exec", *topology.route, *aliases, "--", "true"], env=env)
    assert refused.status == 6, refused.output
    assert f"jump host {topology.user}@127.0.0.1:{box.jump.port} refused the key" in refused.stderr
    # the alias is where the key is pinned: under the real name it is unknown
    unpinned = deployer(["exec", *topology.route, "--jump-host-key-alias", "bastion", "--", "true"],
                        env={**env, "SSH_JUMP_PRIVATE_KEY": (tmp_path / "jump_only").read_text()})  # fmt: skip
    assert unpinned.status == 5 and f"[localhost]:{box.tunnel_port}" in unpinned.stderr
    # and a push over OpenSSH: each hop's master gets an agent with that hop's key only, and
    # checks its host key under its alias
    env["SSH_JUMP_PRIVATE_KEY"] = (tmp_path / "jump_only").read_text()
    target = topology.deploy_path(f"per-hop-{tmp_path.name}")
    pushed = deployer(["push", str(make_app(tmp_path, "hop")), *topology.route, *aliases, "--path",
                       str(target), "--ssh-client", "openssh"], env=env)  # fmt: skip
    assert pushed.status == 0, pushed.output
    assert live(target)
    env.pop("SSH_JUMP_PRIVATE_KEY")
    refused = deployer(["push", str(make_app(tmp_path, "hop2")), *topology.route, *aliases, "--path",
                        str(target), "--ssh-client", "openssh"], env=env)  # fmt: skip
    assert refused.status == 6, refused.output
    assert f"jump host {topology.user}@127.0.0.1:{box.jump.port} refused the key" in refused.stderr


# ---------------------------------------------------------------------------- each failure


def _failures(topology: Any, tmp_path: Path, tinyproxy: Proxy, dante: Proxy) -> dict[str, tuple[list[str], dict[str, str], str]]:  # fmt: skip
    box = topology.box
    jump = f"jump host {topology.user}@127.0.0.1:{box.jump.port}"
    target = f"target {topology.user}@localhost:{box.tunnel_port}"
    http = f"http://{HTTP_USER}@127.0.0.1:{tinyproxy.port}"
    socks = f"socks5h://{PROXY_USER}@127.0.0.1:{dante.port}"
    exits = "sh -c 'echo no route to bastion >&2; exit 3'"  # like ssh, deployer runs `exec CMD`
    return {
        "401-wrong-password": ([*topology.route, "--proxy", http], {"DEPLOYER_PROXY_PASSWORD": "wrong"},
                f"the proxy {http} refused the credentials for user 'ci' (401 Unauthorized) for {jump}"
                " — check the user name and DEPLOYER_PROXY_PASSWORD"),
        "407-no-user": ([*topology.route, "--proxy", f"http://127.0.0.1:{tinyproxy.port}"], {},
                        f"the proxy http://127.0.0.1:{tinyproxy.port} refused the credentials (407 Proxy"
                        f" Authentication Required) for {jump} — put the user in the URL"),
        "403-allow-list": ([*_direct_target(topology), "--proxy", http], {"DEPLOYER_PROXY_PASSWORD": HTTP_PASSWORD},
                           f"the proxy {http} refused CONNECT to localhost:{box.tunnel_port} (403 Filtered)"
                           f" for {target} — its allow-list does not include that host and port"),
        "socks-auth": ([*_direct_target(topology), "--proxy", socks], {"DEPLOYER_PROXY_PASSWORD": "wrong"},
                       f"the SOCKS proxy {socks} refused the user name and password for user '{PROXY_USER}'"
                       f" (for {target})"),
        "socks-rules": (["--to", f"{topology.user}@127.0.0.1:{box.target.port}", "--proxy", socks],
                        {"DEPLOYER_PROXY_PASSWORD": PROXY_PASSWORD},
                        f"could not connect to 127.0.0.1:{box.target.port} for target {topology.user}@127.0.0.1:"
                        f"{box.target.port}: connection not allowed by its rules"),
        "proxy-command-exits": ([*topology.route, "--proxy-command", exits], {},
                                f"ProxyCommand `{exits}` exited with status 3 before {jump} answered:"
                                " no route to bastion"),
    }  # fmt: skip


@pytest.mark.parametrize("case", ["401-wrong-password", "407-no-user", "403-allow-list", "socks-auth", "socks-rules",
                                  "proxy-command-exits"])  # fmt: skip
def test_each_route_failure_is_one_line_exit_7_and_changes_nothing(
    topology, deployer, tmp_path: Path, deployed: Path, tinyproxy: Proxy, dante: Proxy, case: str
) -> None:
    route, extra, message = _failures(topology, tmp_path, tinyproxy, dante)[case]
    before = (live(deployed), releases(deployed))
    run = deployer(["push", str(make_app(tmp_path, "x")), *route, "--path", str(deployed)],
                   env={**topology.env, **extra})  # fmt: skip
    assert run.status == 7, run.output
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("deployer: error: ") and message in lines[-1], run.stderr
    assert "Traceback" not in run.output and HTTP_PASSWORD not in run.output
    assert (live(deployed), releases(deployed)) == before


@pytest.mark.parametrize("route", [
    ["--to", "deploy@x$(touch${IFS}pwned-host)"],  # the CVE-2023-51385 pattern, through %h
    ["--to", "$(touch${IFS}pwned-user)@localhost"],  # ... and through %r
    ["--to", "deploy@localhost", "--jump", "j@x`touch${IFS}pwned-jump`"],
])  # fmt: skip
def test_shell_syntax_in_a_route_never_reaches_the_proxy_command(topology, deployer, tmp_path: Path,
                                                                 route: list[str]) -> None:  # fmt: skip
    run = deployer(["exec", *route, "--proxy-command", "sh -c 'exit 3' %h %r", "--", "true"],
                   env=topology.env, cwd=tmp_path)  # fmt: skip
    assert run.status == 2, run.output
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("deployer: error: ") and (
        "not a host name" in line or "not a user name" in line
    )
    assert list(tmp_path.iterdir()) == []  # nothing ran


# ---------------------------------------------------------------------------- deployer tunnel


def test_tunnel_through_http_proxy(topology, tmp_path: Path, tinyproxy: Proxy) -> None:
    box = topology.box
    port = free_port()
    spec = f"{port}:127.0.0.1:{box.target.port}"
    tunnel_public = write_keypair(tmp_path / "tunnel", "ed25519", "tunnel-via-proxy")
    text = render_authorized_keys(parse_forwards([spec]), tunnel_key=tunnel_public,
                                  ci_key=tunnel_public, reclaim=False)  # fmt: skip
    box.jump.authorize(next(line for line in text.splitlines() if "permitlisten" in line))
    status_file, log = tmp_path / "status.json", tmp_path / "keeper.log"
    seen = len(tinyproxy.text())
    argv = [sys.executable, "-m", "deployer", "tunnel", f"{topology.user}@127.0.0.1:{box.jump.port}",
            "-R", spec, "--key-file", str(tmp_path / "tunnel"), "--status-file", str(status_file),
            "--proxy", f"http://{HTTP_USER}@127.0.0.1:{tinyproxy.port}"]  # fmt: skip
    env = {**os.environ, "CI": "true", "DEPLOYER_PROXY_PASSWORD": HTTP_PASSWORD,
           "SSH_KNOWN_HOSTS": box.known_hosts()}  # fmt: skip
    with log.open("wb") as out:
        keeper = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  start_new_session=True)  # fmt: skip
    try:
        deadline, state = time.monotonic() + 30, {}
        while time.monotonic() < deadline and keeper.poll() is None:
            try:
                state = json.loads(status_file.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("state") == "up":
                break
            time.sleep(0.2)
        assert state.get("state") == "up", log.read_text()
        assert "SSH-2.0-OpenSSH" in state["reason"]  # checked end to end through the new forward
        # both the preflight (paramiko) and OpenSSH's ssh (ProxyCommand) went through the proxy
        assert tinyproxy.text()[seen:].count(f"CONNECT 127.0.0.1:{box.jump.port}") >= 2
        assert HTTP_PASSWORD not in log.read_text()
    finally:
        if keeper.poll() is None:
            keeper.send_signal(signal.SIGTERM)
            try:
                keeper.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(keeper.pid, signal.SIGKILL)
                keeper.wait(timeout=5)
