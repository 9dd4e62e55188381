"""deployer tunnel's pure parts: -R parsing, backoff, states, failures, ssh argv, texts, autossh env."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from deployer.addresses import parse_listen_address
from deployer.cli.tunnel import authorized_keys, tunnel
from deployer.errors import ConfigError, ExitCode
from deployer.sandbox.servers import write_keypair
from deployer.ssh.authorized_keys import (
    HOLDING_LINE,
    NOTHING_LINE,
    RECLAIMED_PREFIX,
    RECORDED_PREFIX,
    ci_jump_key_options,
    ci_target_key_options,
    reclaim_forced_command,
    render_authorized_keys,
    tunnel_key_options,
)
from deployer.ssh.forwards import Forward, forwards_key, parse_forward, parse_forwards
from deployer.ssh.route import Endpoint
from deployer.systemd import HARDENING, Specifier, quote_word
from deployer.tunnel.autossh_env import AutosshConfig, autossh_config
from deployer.tunnel.policy import (
    TRANSITIONS,
    Backoff,
    Failure,
    FailureKind,
    Plan,
    State,
    classify_ssh_exit,
    plan_after_failure,
    transition,
)
from deployer.tunnel.settings import TunnelSettings
from deployer.tunnel.ssh_argv import RuntimePaths, guard_argv, reclaim_argv, tunnel_argv
from deployer.tunnel.status import HEALTHZ_TIMEOUT, StatusBoard

JUMP = Endpoint("jump", "jump.example.com", 2222)

# ---------------------------------------------------------------------------- -R parsing


@pytest.mark.parametrize(
    ("text", "forward", "spec", "permitlisten", "permitopen"),
    [
        ("22022:localhost:22", Forward(22022, "localhost", 22), "22022:localhost:22",
         "localhost:22022", "127.0.0.1:22022"),
        ("127.0.0.1:22022:localhost:22", Forward(22022, "localhost", 22, "127.0.0.1"),
         "127.0.0.1:22022:localhost:22", "127.0.0.1:22022", "127.0.0.1:22022"),
        ("localhost:22022:127.0.0.1:2222", Forward(22022, "127.0.0.1", 2222, "localhost"),
         "localhost:22022:127.0.0.1:2222", "localhost:22022", "127.0.0.1:22022"),
        ("*:8080:10.0.0.5:80", Forward(8080, "10.0.0.5", 80, "*"), "*:8080:10.0.0.5:80",
         "*:8080", "127.0.0.1:8080"),
        (":8080:web:80", Forward(8080, "web", 80, ""), ":8080:web:80", "*:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080:web:80", Forward(8080, "web", 80, "0.0.0.0"), "0.0.0.0:8080:web:80",
         "0.0.0.0:8080", "127.0.0.1:8080"),
        ("[::1]:22022:[::1]:22", Forward(22022, "::1", 22, "::1"), "[::1]:22022:[::1]:22",
         "[::1]:22022", "[::1]:22022"),
        ("22022:[fe80::1%eth0]:22", Forward(22022, "fe80::1%eth0", 22), "22022:[fe80::1%eth0]:22",
         "localhost:22022", "127.0.0.1:22022"),
        ("10.9.8.7:22022:localhost:22", Forward(22022, "localhost", 22, "10.9.8.7"),
         "10.9.8.7:22022:localhost:22", "10.9.8.7:22022", "10.9.8.7:22022"),
        ("  22022:localhost:22\n", Forward(22022, "localhost", 22), "22022:localhost:22",
         "localhost:22022", "127.0.0.1:22022"),
    ],
)  # fmt: skip
def test_parse_forward_forms(
    text: str, forward: Forward, spec: str, permitlisten: str, permitopen: str
) -> None:
    parsed = parse_forward(text)
    assert parsed == forward
    assert parsed.spec == spec == str(parsed)
    assert parse_forward(parsed.spec) == parsed  # round trip
    assert parsed.permitlisten() == permitlisten
    assert parsed.permitopen() == permitopen


def test_gateway_ports_only_for_non_loopback_binds() -> None:
    assert not parse_forward("22022:localhost:22").needs_gateway_ports
    assert not parse_forward("127.0.0.1:22022:localhost:22").needs_gateway_ports
    assert not parse_forward("[::1]:22022:localhost:22").needs_gateway_ports
    assert parse_forward("*:22022:localhost:22").needs_gateway_ports
    assert parse_forward("0.0.0.0:22022:localhost:22").needs_gateway_ports


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("22022", "SOCKS"),
        ("0.0.0.0:22022", "SOCKS"),
        ("0:localhost:22", "random port"),
        ("70000:localhost:22", "out of range"),
        ("22022:localhost:0", "out of range"),
        ("22022:localhost:99999", "out of range"),
        ("http:localhost:22", "not a number"),
        ("22022:localhost:ssh", "not a number"),
        ("/tmp/sock:localhost:22", "Unix socket"),
        ("22022:/run/app.sock", "Unix socket"),
        ("[::1:22022:localhost:22", "no closing"),
        ("22022::22", "host to connect to is missing"),
        ("a:1:b:2:c", "is not a remote forward"),
        ("22022:localhost", "is not a remote forward"),
        ("", "is not a remote forward"),
    ],
)
def test_parse_forward_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        parse_forward(text)
    assert "-R" in str(error.value)


def test_parse_forwards_lists_and_duplicates() -> None:
    forwards = parse_forwards(["22022:localhost:22,8080:localhost:80", "9000:localhost:9000"])
    assert [f.port for f in forwards] == [22022, 8080, 9000]
    assert forwards_key(forwards) == "8080-9000-22022"
    with pytest.raises(ConfigError, match="same port"):
        parse_forwards(["22022:localhost:22", "22022:localhost:2222"])
    # the same port on two different addresses is two listeners
    assert len(parse_forwards(["127.0.0.1:22022:a:22", "10.0.0.1:22022:b:22"])) == 2


def test_settings_validation() -> None:
    forward = (parse_forward("22022:localhost:22"),)
    assert TunnelSettings(JUMP, forward).dead_after == 6
    with pytest.raises(ConfigError, match="no forward"):
        TunnelSettings(JUMP, ())
    with pytest.raises(ConfigError, match="alive"):
        TunnelSettings(JUMP, forward, alive_interval=0)
    with pytest.raises(ConfigError, match="max-backoff"):
        TunnelSettings(JUMP, forward, max_backoff=0.5)
    assert parse_listen_address("8022", "--healthz") == ("127.0.0.1", 8022)
    assert parse_listen_address("0.0.0.0:8022", "--healthz") == ("0.0.0.0", 8022)
    assert parse_listen_address("[::1]:8022", "--healthz") == ("::1", 8022)
    with pytest.raises(ConfigError, match="healthz"):
        parse_listen_address("localhost:http", "--healthz")


# ---------------------------------------------------------------------------- backoff


def test_backoff_bounds_and_cap() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    for n in range(1, 20):
        delay = backoff.next_delay()
        ceiling = min(8.0, 0.5 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling, (n, delay)
        assert delay <= 8.0
    assert backoff.failures == 19
    backoff.reset()
    assert backoff.failures == 0
    assert 0.25 <= backoff.next_delay() <= 0.5  # right after a stable period: fast again


def test_backoff_is_jittered() -> None:
    delays = {round(Backoff(rng=random.Random(seed)).next_delay(), 6) for seed in range(20)}
    assert len(delays) > 15  # many keepers that lost their flow together do not stampede
    at_cap = [Backoff(cap=8.0, rng=random.Random(s), failures=10).next_delay() for s in range(50)]
    assert min(at_cap) >= 4.0 and max(at_cap) <= 8.0 and max(at_cap) - min(at_cap) > 1.0


def test_backoff_slow_cap_for_refused_keys() -> None:
    backoff = Backoff(cap=8.0, slow_cap=60.0, rng=random.Random(3), failures=20)
    assert 30.0 <= backoff.next_delay(slow=True) <= 60.0
    assert backoff.ceiling(1, slow=True) == 0.5


def test_default_backoff_keeps_recovery_within_ten_seconds() -> None:
    """Unreachable: an attempt at least every 8 s; port still held: at least every 4 s."""
    backoff = Backoff(rng=random.Random(7))
    assert max(backoff.next_delay() for _ in range(200)) <= 8.0
    assert max(backoff.next_delay(refused=True) for _ in range(200)) <= 4.0
    assert Backoff(cap=2.0).ceiling(10, refused=True) == 2.0  # --max-backoff below 4 s wins


# ---------------------------------------------------------------------------- states


def test_transitions() -> None:
    assert transition(State.STARTING, State.CONNECTING) is State.CONNECTING
    assert transition(State.CONNECTING, State.VERIFYING) is State.VERIFYING
    assert transition(State.VERIFYING, State.UP) is State.UP
    assert transition(State.UP, State.BACKOFF) is State.BACKOFF
    assert transition(State.BACKOFF, State.CONNECTING) is State.CONNECTING
    assert transition(State.CONNECTING, State.RECLAIMING) is State.RECLAIMING
    assert transition(State.RECLAIMING, State.CONNECTING) is State.CONNECTING
    assert transition(State.UP, State.DEGRADED) is State.DEGRADED
    assert transition(State.DEGRADED, State.UP) is State.UP
    assert transition(State.UP, State.RECLAIMING) is State.RECLAIMING  # a dead flow, holder known
    for current, new in [
        (State.CONNECTING, State.UP),  # never up without the end-to-end check
        (State.BACKOFF, State.UP),
        (State.RECLAIMING, State.UP),
        (State.STARTING, State.UP),
        (State.STOPPED, State.CONNECTING),
        (State.STOPPING, State.CONNECTING),
    ]:
        with pytest.raises(ValueError, match="cannot go"):
            transition(current, new)


def test_state_graph_shape() -> None:
    assert set(TRANSITIONS) == set(State)
    assert {s for s, targets in TRANSITIONS.items() if State.UP in targets} == {
        State.VERIFYING,
        State.DEGRADED,
    }
    for state in State:
        if state not in (State.STOPPING, State.STOPPED):
            assert State.STOPPING in TRANSITIONS[state], state  # SIGTERM works from anywhere
    assert TRANSITIONS[State.STOPPED] == frozenset()
    reachable, todo = {State.STARTING}, [State.STARTING]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                todo.append(nxt)
    assert reachable == set(State)


def test_status_board_logs_writes_and_validates(tmp_path: Path) -> None:
    lines: list[str] = []
    settings = TunnelSettings(
        JUMP, (parse_forward("22022:localhost:22"),), status_file=tmp_path / "s.json"
    )
    board = StatusBoard(settings, lines.append)
    board.set(State.CONNECTING, "attempt 1")
    board.update(attempt=1)
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["state"] == "connecting" and document["healthy"] is False
    assert document["forwards"] == ["22022:localhost:22"] and document["jump"] == str(JUMP)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["since"])
    with pytest.raises(ValueError):
        board.set(State.UP)
    board.set(State.VERIFYING)
    board.set(State.UP, "checked")
    assert json.loads((tmp_path / "s.json").read_text())["healthy"] is True
    assert lines == ["tunnel: connecting — attempt 1", "tunnel: verifying", "tunnel: up — checked"]
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no leftovers


def test_status_file_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    """The old temporary name was predictable (.NAME.PID.tmp) and written through symlinks."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    status = tmp_path / "status.json"
    (tmp_path / f".status.json.{os.getpid()}.tmp").symlink_to(victim)
    settings = TunnelSettings(JUMP, (parse_forward("22022:localhost:22"),), status_file=status)
    board = StatusBoard(settings, lambda line: None)
    board.write()
    assert victim.read_text() == "precious\n" and (victim.stat().st_mode & 0o777) == 0o600
    assert json.loads(status.read_text())["state"] == "starting"
    assert (status.stat().st_mode & 0o777) == 0o644
    status.unlink()
    status.symlink_to(victim)  # a symlink at the status path itself is replaced, not followed
    board.write()
    assert victim.read_text() == "precious\n" and not status.is_symlink()


def test_healthz_endpoint() -> None:
    settings = TunnelSettings(
        JUMP, (parse_forward("22022:localhost:22"),), healthz=("127.0.0.1", 0)
    )
    board = StatusBoard(settings, lambda line: None)
    board.serve()
    try:
        port = board._server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=15) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # a client that sends nothing is closed, not waited for
            assert time.monotonic() - started < HEALTHZ_TIMEOUT + 3
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert error.value.code == 503
        board.set(State.CONNECTING)
        board.set(State.VERIFYING)
        board.set(State.UP)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
            assert json.loads(response.read())["state"] == "up"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert missing.value.code == 404
    finally:
        board.close()


# ---------------------------------------------------------------------------- failures and plans

SETTINGS = TunnelSettings(JUMP, (parse_forward("22022:localhost:22"),))


def classify(text: str, **flags: bool) -> Failure:
    defaults = {"authenticated": False, "granted": False, "hold": False, "holding": False}
    return classify_ssh_exit(
        text.splitlines(), jump=JUMP, settings=SETTINGS, **{**defaults, **flags}
    )


@pytest.mark.parametrize(
    ("output", "flags", "kind", "words"),
    [
        ("Host key verification failed.", {}, FailureKind.HOST_KEY, "host key"),
        ("@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @", {}, FailureKind.HOST_KEY, "host key"),
        ("jump@jump.example.com: Permission denied (publickey).", {}, FailureKind.AUTH, "refused the key"),
        ("Authenticated to jump.example.com\nError: remote port forwarding failed for listen port 22022",
         {"authenticated": True}, FailureKind.REFUSED, "localhost:22022"),
        ("debug1: remote forward failure for: listen 22022, connect localhost:22",
         {"authenticated": True}, FailureKind.REFUSED, "stale session"),
        ("Timeout, server jump.example.com not responding.", {"authenticated": True, "granted": True},
         FailureKind.DEAD, "flow is dead"),
        ("ssh: connect to host jump.example.com port 2222: Connection refused", {}, FailureKind.UNREACHABLE,
         "Connection refused"),
        ("ssh: connect to host jump.example.com port 2222: Connection timed out", {}, FailureKind.UNREACHABLE,
         "timed out"),
        ("ssh: Could not resolve hostname jump.example.com: Name or service not known", {},
         FailureKind.UNREACHABLE, "resolve"),
        ("kex_exchange_identification: read: Connection reset by peer", {}, FailureKind.UNREACHABLE, "jump"),
        ("Connection to jump.example.com closed by remote host.\nTransferred: sent 1, received 2 bytes",
         {"authenticated": True, "granted": True}, FailureKind.LOST, "closed by remote host"),
        ("This account is currently not available.", {"authenticated": True, "hold": True},
         FailureKind.SETUP, "not available"),
    ],
)  # fmt: skip
def test_classify_ssh_exit(
    output: str, flags: dict[str, bool], kind: FailureKind, words: str
) -> None:
    failure = classify(output, **flags)
    assert failure.kind is kind
    assert words in failure.message
    assert "debug1" not in failure.message and "Transferred" not in failure.message


def test_refused_message_mentions_reclaim() -> None:
    text = "Error: remote port forwarding failed for listen port 22022"
    assert "--reclaim" in classify(text, authenticated=True).message


def test_plan_after_failure() -> None:
    backoff = Backoff(rng=random.Random(0))
    host_key = Failure(FailureKind.HOST_KEY, "x")
    auth = Failure(FailureKind.AUTH, "x")
    refused = Failure(FailureKind.REFUSED, "x")
    plan = plan_after_failure(host_key, backoff, reclaim_available=True, ever_up=True)
    assert plan.action == "exit" and plan.exit_code is ExitCode.HOST_KEY
    plan = plan_after_failure(auth, backoff, reclaim_available=False, ever_up=False)
    assert plan.action == "exit" and plan.exit_code is ExitCode.AUTH
    plan = plan_after_failure(auth, backoff, reclaim_available=False, ever_up=True)
    assert plan.action == "retry"  # keys rewritten on the jump host: keep trying, slowly
    assert (
        plan_after_failure(refused, backoff, reclaim_available=True, ever_up=True).action
        == "reclaim"
    )
    backoff.failures = 20
    plan = plan_after_failure(refused, backoff, reclaim_available=False, ever_up=True)
    assert plan.action == "retry" and 2.0 <= plan.delay <= 4.0  # the port is polled closely
    for kind in (FailureKind.UNREACHABLE, FailureKind.LOST, FailureKind.DEAD, FailureKind.BROKEN):
        plan = plan_after_failure(
            Failure(kind, "x"), backoff, reclaim_available=True, ever_up=False
        )
        assert plan.action == "retry" and plan.delay <= 8.0


def test_backoff_counts_from_the_start_of_the_failed_attempt() -> None:
    """A connect timeout already waited 10 s: the next attempt starts at once, not up to 8 s later."""
    timed_out = Failure(FailureKind.UNREACHABLE, "connect timed out")
    backoff = Backoff(rng=random.Random(0), failures=10)
    plan = plan_after_failure(
        timed_out, backoff, reclaim_available=False, ever_up=True, elapsed=10.0
    )
    assert plan == Plan("retry", 0.0) and backoff.failures == 11
    quick = plan_after_failure(
        timed_out, backoff, reclaim_available=False, ever_up=True, elapsed=1.0
    )
    assert 3.0 <= quick.delay <= 7.0  # 4-8 s from the attempt's start, 1 s of it already gone
    auth = plan_after_failure(Failure(FailureKind.AUTH, "x"), backoff, reclaim_available=False,
                              ever_up=False, elapsed=60.0)  # fmt: skip
    assert auth.action == "exit"


def test_dead_flow_reclaims_our_recorded_session_before_reconnecting() -> None:
    """The jump host still holds a dead flow's session: reclaim it first instead of running
    into a refused -R; only when the session recorded itself and reclaim is on."""
    backoff = Backoff(rng=random.Random(0))
    dead = Failure(FailureKind.DEAD, "x")
    plan = plan_after_failure(
        dead, backoff, reclaim_available=True, ever_up=True, holder_known=True
    )
    assert plan.action == "reclaim" and backoff.failures == 0
    for available, known in ((True, False), (False, True)):
        plan = plan_after_failure(
            dead, backoff, reclaim_available=available, ever_up=True, holder_known=known
        )
        assert plan.action == "retry"
    lost = Failure(
        FailureKind.LOST, "x"
    )  # session killed, sshd restarted: the port is free already
    plan = plan_after_failure(
        lost, backoff, reclaim_available=True, ever_up=True, holder_known=True
    )
    assert plan.action == "retry"
    assert plan_after_failure(Failure(FailureKind.SETUP, "x"), backoff, reclaim_available=True,
                              ever_up=False).delay < 1  # fmt: skip


# ---------------------------------------------------------------------------- ssh command lines


def test_tunnel_argv(tmp_path: Path) -> None:
    settings = TunnelSettings(JUMP, parse_forwards(["22022:localhost:22", "127.0.0.1:8080:web:80"]))
    paths = RuntimePaths(tmp_path, "/run/agent.sock")
    argv = tunnel_argv(settings, paths, "ssh-rsa", hold=False)
    text = " ".join(argv)
    assert argv[0] == "ssh" and argv[-3:] == ["-N", "--", "jump.example.com"]
    for option in ("ExitOnForwardFailure=yes", "StrictHostKeyChecking=yes", "BatchMode=yes", "IdentityFile=none",
                   "IdentityAgent=/run/agent.sock", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
                   "GlobalKnownHostsFile=/dev/null", "HostKeyAlgorithms=rsa-sha2-512,rsa-sha2-256",
                   "ServerAliveInterval=2", "ServerAliveCountMax=2", "ControlPath=none"):  # fmt: skip
        assert f"-o {option}" in text, option
    assert "StrictHostKeyChecking=no" not in text and "accept-new" not in text
    assert argv[argv.index("-F") + 1] == "/dev/null"  # no user or system ssh_config
    assert argv[argv.index("-R") : argv.index("-R") + 2] == ["-R", "22022:localhost:22"]
    assert f"{tmp_path / 'check-1.sock'}:127.0.0.1:8080" in argv
    assert argv[argv.index("-l") : argv.index("-l") + 4] == ["-l", "jump", "-p", "2222"]
    held = tunnel_argv(settings, paths, "ssh-ed25519", hold=True)
    assert held[-3:] == ["--", "jump.example.com", "hold"] and "-N" not in held
    assert reclaim_argv(settings, paths, "ssh-ed25519", (12, 34))[-3:] == [
        "--",
        "jump.example.com",
        "reclaim 12 34",
    ]
    guard = guard_argv(settings, paths, "ssh-ed25519", settings.forwards[0])
    assert guard[-4:] == ["-W", "127.0.0.1:22022", "--", "jump.example.com"]
    assert reclaim_argv(settings, paths, "ssh-ed25519", None)[-1] == "reclaim"


# ---------------------------------------------------------------------------- authorized_keys


def _unquote(options: str, name: str) -> str:
    match = re.search(name + r'="((?:[^"\\]|\\")*)"', options)
    assert match, options
    return match.group(1).replace('\\"', '"')


def test_tunnel_key_options() -> None:
    forwards = parse_forwards(["22022:localhost:22", "127.0.0.1:8080:web:80"])
    options = tunnel_key_options(forwards, reclaim=False)
    assert options == (
        'restrict,port-forwarding,permitlisten="localhost:22022",permitlisten="127.0.0.1:8080",'
        'permitopen="127.0.0.1:22022",permitopen="127.0.0.1:8080",command="/bin/false"'
    )
    with_reclaim = tunnel_key_options(forwards, reclaim=True)
    assert _unquote(with_reclaim, "command") == reclaim_forced_command(forwards)
    assert "\n" not in with_reclaim


def test_ci_key_options() -> None:
    forwards = parse_forwards(["22022:localhost:22"])
    assert ci_jump_key_options(forwards) == (
        'restrict,port-forwarding,permitopen="localhost:22022",permitopen="127.0.0.1:22022",command="/bin/false"'
    )
    assert ci_target_key_options(forwards) == 'restrict,from="127.0.0.1,::1"'
    assert ci_target_key_options(parse_forwards(["22022:10.0.0.5:22"])) == "restrict"
    assert 'permitopen="10.9.8.7:22022"' in ci_jump_key_options(
        parse_forwards(["10.9.8.7:22022:localhost:22"])
    )


def test_render_authorized_keys() -> None:
    text = render_authorized_keys(parse_forwards(["22022:localhost:22"]), tunnel_key="ssh-ed25519 AAAAT t",
                                  ci_key="ssh-ed25519 AAAAC c", reclaim=False)  # fmt: skip
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith('restrict,port-forwarding,permitlisten="localhost:22022"')
    assert lines[0].endswith('command="/bin/false" ssh-ed25519 AAAAT t')
    assert lines[1].endswith("ssh-ed25519 AAAAC c") and "permitopen" in lines[1]
    assert lines[2] == 'restrict,from="127.0.0.1,::1" ssh-ed25519 AAAAC c'
    assert lines[3:] == ["ClientAliveInterval 5", "ClientAliveCountMax 3", "AllowTcpForwarding yes"]
    assert "GatewayPorts clientspecified" not in text
    wide = render_authorized_keys(parse_forwards(["*:22022:localhost:22"]), tunnel_key="k", ci_key="c",
                                  reclaim=True, client_alive_interval=10, client_alive_count=2)  # fmt: skip
    assert "GatewayPorts clientspecified" in wide and "ClientAliveInterval 10" in wide
    assert 'command="f=\\"$HOME/.deployer-tunnel/22022\\"' in wide


def test_authorized_keys_command(tmp_path: Path) -> None:
    tunnel_pub = write_keypair(tmp_path / "tunnel", comment="tunnel")
    ci_pub = write_keypair(tmp_path / "ci", comment="ci")
    runner = CliRunner()
    result = runner.invoke(authorized_keys, ["-R", "22022:localhost:22", "--key-file", str(tmp_path / "tunnel"),
                                             "--ci-key", str(tmp_path / "ci.pub")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f'command="/bin/false" {tunnel_pub.rsplit(" ", 1)[0]}' in result.output
    assert ci_pub in result.output
    # a private key file given as --tunnel-key prints only its public half
    result = runner.invoke(
        authorized_keys, ["-R", "22022:localhost:22", "--tunnel-key", str(tmp_path / "tunnel")]
    )
    assert "PRIVATE" not in result.output and tunnel_pub.split()[1] in result.output
    assert "CI-PUBLIC-KEY" in result.output
    result = runner.invoke(authorized_keys, ["-R", "22022:localhost:22", "--ci-key", "nonsense"])
    assert result.exit_code != 0


# ---------------------------------------------------------------------------- the forced command, run by sh


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _forced(tmp_path: Path, command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    script = reclaim_forced_command(parse_forwards(["22022:localhost:22"]))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SSH_ORIGINAL_COMMAND": command}
    return subprocess.run(["/bin/sh", "-c", script], input=stdin, env=env, capture_output=True, text=True,
                          timeout=10)  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_forced_command_hold_records_its_session(tmp_path: Path) -> None:
    done = _forced(tmp_path, "hold", "up\nmore\n")
    me = os.getpid()  # the shell's parent plays the sshd session process
    assert done.stdout.splitlines() == [HOLDING_LINE, f"{RECORDED_PREFIX} {me} {_start_time(me)}"]
    assert (tmp_path / ".deployer-tunnel" / "22022").read_text() == f"{me} {_start_time(me)}\n"
    # without "up" (the keeper never verified the forward) nothing is recorded
    (tmp_path / ".deployer-tunnel" / "22022").unlink()
    assert _forced(tmp_path, "hold", "").stdout.splitlines() == [HOLDING_LINE]
    assert not (tmp_path / ".deployer-tunnel" / "22022").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_forced_command_reclaim_kills_only_the_recorded_process(tmp_path: Path) -> None:
    record = tmp_path / ".deployer-tunnel" / "22022"
    record.parent.mkdir()
    stale = subprocess.Popen(["sleep", "60"])
    try:
        start = _start_time(stale.pid)
        assert _forced(tmp_path, "reclaim").stdout.strip() == NOTHING_LINE  # nothing recorded
        record.write_text(f"{stale.pid} {int(start) + 1}\n")  # same pid, other process (reused pid)
        assert _forced(tmp_path, "reclaim").stdout.strip() == NOTHING_LINE
        record.write_text(f"{stale.pid} {start}\n")
        assert (
            _forced(tmp_path, "reclaim 1 2").stdout.strip() == NOTHING_LINE
        )  # not the one we named
        assert stale.poll() is None
        record.write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")  # our own session: never
        assert _forced(tmp_path, "reclaim").stdout.strip() == NOTHING_LINE
        record.write_text(f"{stale.pid} {start}\n")
        assert (
            _forced(tmp_path, f"reclaim {stale.pid} {start}").stdout.strip()
            == f"{RECLAIMED_PREFIX} {stale.pid}"
        )
        assert stale.wait(timeout=5) != 0
    finally:
        stale.kill()
        stale.wait()
    refused = _forced(tmp_path, "rm -rf /; reclaim")
    assert refused.returncode == 1 and "only hold and reclaim" in refused.stderr


# ---------------------------------------------------------------------------- systemd


def test_quote_word() -> None:
    assert quote_word("/usr/bin/deployer") == "/usr/bin/deployer"
    assert quote_word("100%") == "100%%"
    assert quote_word("$HOME") == "$$HOME"
    assert quote_word("a b") == '"a b"'
    assert quote_word('say "hi"') == '"say \\"hi\\""'
    assert quote_word(Specifier("%d/tunnel-key")) == "%d/tunnel-key"


def test_install_service_prints_a_hardened_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "SSH_PRIVATE_KEY",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETSECRET\n-----END OPENSSH PRIVATE KEY-----",
    )
    result = CliRunner().invoke(tunnel, [
        "install-service", "jump@jump.example.com:2222", "-R", "22022:localhost:22", "-R", "8080:localhost:80",
        "--known-hosts", "/etc/deployer/known_hosts", "--reclaim", "--deployer", "/opt/deployer/bin/deployer",
        "--print",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    unit = result.output
    assert "SECRET" not in unit and "PRIVATE" not in unit
    for line in ("Restart=always", "User=deployer-tunnel", "LoadCredential=tunnel-key:/etc/deployer/tunnel.key",
                 "RuntimeDirectory=deployer-tunnel", "StartLimitIntervalSec=0", "KillMode=mixed",
                 "WantedBy=multi-user.target", *HARDENING):  # fmt: skip
        assert line in unit.splitlines(), line
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/opt/deployer/bin/deployer tunnel jump@jump.example.com:2222 -R 22022:localhost:22"
        " -R 8080:localhost:80 --key-file %d/tunnel-key --known-hosts /etc/deployer/known_hosts"
        " --connect-timeout 10 --alive-interval 2 --alive-count 2 --check-interval 30 --max-backoff 8"
        " --status-file /run/deployer-tunnel/status.json --reclaim"
    )


def test_install_service_needs_host_keys_and_writes_the_file(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        tunnel, ["install-service", "jump@h", "-R", "22022:localhost:22", "--print"]
    )
    assert result.exit_code != 0 and "keyscan" in str(result.exception)
    result = runner.invoke(tunnel, [
        "install-service", "jump@h", "-R", "22022:localhost:22", "--host-key-fingerprint",
        "SHA256:" + "A" * 43, "--unit-dir", str(tmp_path), "--name", "tun-a", "--deployer", "/usr/bin/deployer",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    unit = (tmp_path / "tun-a.service").read_text()
    assert "--host-key-fingerprint SHA256:" + "A" * 43 in unit and "RuntimeDirectory=tun-a" in unit
    assert "systemctl daemon-reload && systemctl enable --now tun-a.service" in result.output
    assert "useradd --system" in result.output


# ---------------------------------------------------------------------------- jnovack/autossh variables


def test_autossh_mapping_full() -> None:
    env = {
        "SSH_REMOTE_USER": "tunnel", "SSH_REMOTE_HOST": "jump.example.com", "SSH_REMOTE_PORT": "2222",
        "SSH_TUNNEL_PORT": "22022", "SSH_TARGET_HOST": "10.0.0.5", "SSH_TARGET_PORT": "2200",
        "SSH_BIND_IP": "0.0.0.0", "SSH_SERVER_ALIVE_INTERVAL": "10", "SSH_SERVER_ALIVE_COUNT_MAX": "3",
        "SSH_KEY_FILE": "/run/secrets/key", "SSH_KNOWN_HOSTS_FILE": "/run/secrets/known_hosts",
    }  # fmt: skip
    config = autossh_config(env, lambda path: True)
    assert config == AutosshConfig(
        jump="tunnel@jump.example.com:2222",
        forward="0.0.0.0:22022:10.0.0.5:2200",
        key_file=Path("/run/secrets/key"),
        known_hosts_file=Path("/run/secrets/known_hosts"),
        key_text=None,
        alive_interval=10,
        alive_count=3,
    )
    assert parse_forward(config.forward).needs_gateway_ports


def test_autossh_mapping_defaults() -> None:
    existing = {"/id_rsa", "/known_hosts"}
    config = autossh_config(
        {"SSH_REMOTE_HOST": "jump", "SSH_TUNNEL_PORT": "22022"}, existing.__contains__
    )
    assert config.jump == "root@jump:22"
    assert config.forward == "127.0.0.1:22022:localhost:22"
    assert config.key_file == Path("/id_rsa") and config.known_hosts_file == Path("/known_hosts")
    assert config.alive_interval is None and config.alive_count is None
    bare = autossh_config(
        {"SSH_REMOTE_HOST": "::1", "SSH_TUNNEL_PORT": "1", "SSH_KEY": "k"}, lambda p: False
    )
    assert bare.jump == "root@[::1]:22" and bare.key_file is None and bare.key_text == "k"
    assert bare.known_hosts_file is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SSH_TUNNEL_PORT": "22022"}, "SSH_REMOTE_HOST"),
        ({"SSH_REMOTE_HOST": "jump"}, "SSH_TUNNEL_PORT"),
        ({"SSH_REMOTE_HOST": "jump", "SSH_TUNNEL_PORT": "1", "SSH_MODE": "-L"}, "SSH_MODE"),
        ({"SSH_REMOTE_HOST": "jump", "SSH_TUNNEL_PORT": "0"}, "random port"),
        (
            {"SSH_REMOTE_HOST": "jump", "SSH_TUNNEL_PORT": "1", "SSH_SERVER_ALIVE_INTERVAL": "ten"},
            "whole number",
        ),
        (
            {"SSH_REMOTE_HOST": "jump", "SSH_TUNNEL_PORT": "1", "SSH_KNOWN_HOSTS_FILE": "/nope"},
            "does not exist",
        ),
    ],
)
def test_autossh_mapping_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        autossh_config(env, lambda path: path != "/nope")


def test_tunnel_cli_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(tunnel, [])
    assert isinstance(result.exception, ConfigError) and "no jump host" in str(result.exception)
    result = runner.invoke(tunnel, ["jump@h"])
    assert isinstance(result.exception, ConfigError) and "-R" in str(result.exception)
    result = runner.invoke(tunnel, ["jump@h", "-R", "22022"])
    assert isinstance(result.exception, ConfigError) and "SOCKS" in str(result.exception)
    monkeypatch.setenv("SSH_REMOTE_HOST", "jump")
    result = runner.invoke(tunnel, [])  # no arguments + autossh variables: autossh mode
    assert isinstance(result.exception, ConfigError) and "SSH_TUNNEL_PORT" in str(result.exception)
    result = runner.invoke(tunnel, ["--autossh-env", "jump@h"])
    assert isinstance(result.exception, ConfigError) and "drop USER@JUMP" in str(result.exception)


def test_tunnel_help_lists_subcommands() -> None:
    result = CliRunner().invoke(tunnel, ["--help"])
    assert result.exit_code == 0
    assert "-R, --remote-forward" in result.output and "install-service" in result.output
    assert "status" in result.output


def test_status_command(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(
        json.dumps({"state": "up", "healthy": True, "pid": os.getpid(), "since": time.time()})
    )
    runner = CliRunner()
    assert runner.invoke(tunnel, ["status", "--status-file", str(path)]).exit_code == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(json.dumps({"state": "up", "healthy": True, "pid": dead.pid}))
    result = runner.invoke(tunnel, ["status", "--status-file", str(path)])
    assert result.exit_code == ExitCode.CONNECT and "not running" in result.output
