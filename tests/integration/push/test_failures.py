"""Every failure path: one clear line, the documented exit code, and the live release untouched."""

from __future__ import annotations

import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from deployer.errors import ExitCode
from deployer.sandbox.servers import free_port, write_keypair
from tests.integration.helpers import live, make_app, one_error_line, releases

pytestmark = pytest.mark.integration


def push(deployer, topology, artifact: Path, target: Path, *extra: str, env=None, route=None):
    return deployer(
        ["push", str(artifact), *(route or topology.route), "--path", str(target), *extra],
        env=env or topology.env,
    )


def assert_untouched(target: Path, live_before: str, releases_before: list[str]) -> None:
    assert live(target) == live_before
    assert releases(target) == releases_before
    assert not (target / ".deployer" / "lock").exists()
    assert not list((target / "releases").glob(".*.partial"))


# --------------------------------------------------------------------------- hooks


def test_failing_before_hook_aborts_with_live_release_untouched(
    topology, deployer, deployed, tmp_path
) -> None:
    before, kept = live(deployed), releases(deployed)
    run = push(
        deployer, topology, make_app(tmp_path, "bad"), deployed, "--before", "echo boom >&2; exit 7"
    )
    assert run.status == ExitCode.HOOK
    line = one_error_line(run.stderr)
    assert "before hook `echo boom >&2; exit 7`" in line and "exited with status 7" in line
    assert "boom" in run.stderr  # the hook's own output reached the log
    assert_untouched(deployed, before, kept)


def test_failing_healthcheck_switches_back(topology, deployer, deployed, tmp_path) -> None:
    before, kept = live(deployed), releases(deployed)
    marker = deployed / "shared" / "after-ran-in"
    run = push(deployer, topology, make_app(tmp_path, "sick"), deployed,
               "--after", f"basename $PWD >> {marker}", "--healthcheck", "exit 1",
               "--healthcheck-retries", "1", "--healthcheck-interval", "0")  # fmt: skip
    assert run.status == ExitCode.HOOK
    line = one_error_line(run.stderr)
    assert (
        "healthcheck `exit 1`" in line
        and "after 2 attempt(s)" in line
        and f"switched back to {before}" in line
    )
    assert_untouched(deployed, before, kept)
    ran_in = marker.read_text().split()
    assert (
        ran_in[-1] == before and ran_in[0] != before
    )  # after hooks re-ran in the restored release
    history = (deployed / ".deployer" / "history").read_text()
    assert '"action":"failed"' in history


def test_healthcheck_failure_on_first_deploy_removes_current(topology, deployer, tmp_path) -> None:
    target = topology.deploy_path("first-sick")
    run = push(deployer, topology, make_app(tmp_path, "x"), target, "--healthcheck", "false",
               "--healthcheck-retries", "0")  # fmt: skip
    assert run.status == ExitCode.HOOK
    assert "no earlier release" in one_error_line(run.stderr)
    assert_untouched(target, "", [])


def test_hook_timeout(topology, deployer, deployed, tmp_path) -> None:
    before, kept = live(deployed), releases(deployed)
    started = time.monotonic()
    run = push(deployer, topology, make_app(tmp_path, "slow"), deployed, "--before", "sleep 30",
               "--hook-timeout", "1")  # fmt: skip
    assert time.monotonic() - started < 20
    assert run.status == ExitCode.HOOK
    assert "did not finish within 1 s" in one_error_line(run.stderr)
    assert_untouched(deployed, before, kept)


# --------------------------------------------------------------------------- routes


def test_unreachable_jump_host_is_refused(topology, deployer, deployed, tmp_path) -> None:
    port = free_port()
    route = [
        "--to",
        f"{topology.user}@localhost:{topology.box.tunnel_port}",
        "--jump",
        f"jump@127.0.0.1:{port}",
    ]
    before, kept = live(deployed), releases(deployed)
    run = push(deployer, topology, make_app(tmp_path, "r"), deployed, route=route)
    assert run.status == ExitCode.CONNECT
    line = one_error_line(run.stderr)
    assert f"jump host jump@127.0.0.1:{port} refused the connection on 127.0.0.1:{port}" in line
    assert_untouched(deployed, before, kept)


def test_silent_jump_host_fails_within_the_connect_timeout(
    topology, deployer, deployed, tmp_path
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    try:
        route = [
            "--to",
            "x@localhost:22022",
            "--jump",
            f"jump@127.0.0.1:{port}",
            "--connect-timeout",
            "2",
        ]
        started = time.monotonic()
        run = push(deployer, topology, make_app(tmp_path, "t"), deployed, route=route)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert run.status == ExitCode.CONNECT
    assert elapsed < 10
    assert (
        f"jump host jump@127.0.0.1:{port} closed the connection during the SSH handshake"
        in one_error_line(run.stderr)
    )


def test_tunnel_down_names_the_port_and_the_jump(topology, deployer, deployed, tmp_path) -> None:
    before, kept = live(deployed), releases(deployed)
    topology.box.close_tunnel()
    try:
        run = push(deployer, topology, make_app(tmp_path, "down"), deployed)
    finally:
        topology.box.open_tunnel()
    assert run.status == ExitCode.CONNECT
    line = one_error_line(run.stderr)
    assert (
        f"nothing listens on localhost:{topology.box.tunnel_port} on {topology.user}@127.0.0.1:"
        in line
    )
    assert "is the tunnel up?" in line
    assert_untouched(deployed, before, kept)


def test_forward_refused_by_the_jump_host(topology, deployer, deployed, tmp_path) -> None:
    port = free_port()  # the CI key may only open the tunnel port (permitopen)
    route = [
        "--to",
        f"{topology.user}@localhost:{port}",
        "--jump",
        f"{topology.user}@127.0.0.1:{topology.box.jump.port}",
    ]
    run = push(deployer, topology, make_app(tmp_path, "p"), deployed, route=route)
    assert run.status == ExitCode.CONNECT
    assert (
        f"refused to forward to localhost:{port} (administratively prohibited)"
        in one_error_line(run.stderr)
    )


def test_wrong_user(topology, deployer, deployed, tmp_path) -> None:
    before, kept = live(deployed), releases(deployed)
    route = ["--to", f"nobody-here@localhost:{topology.box.tunnel_port}", "--jump",
             f"{topology.user}@127.0.0.1:{topology.box.jump.port}"]  # fmt: skip
    run = push(deployer, topology, make_app(tmp_path, "u"), deployed, route=route)
    assert run.status == ExitCode.AUTH
    line = one_error_line(run.stderr)
    assert f"target nobody-here@localhost:{topology.box.tunnel_port}" in line
    assert "refused the key (SHA256:" in line and "for user 'nobody-here'" in line
    assert_untouched(deployed, before, kept)


# --------------------------------------------------------------------------- host keys


def test_unknown_host_key_is_refused_with_the_keyscan_command(
    topology, deployer, deployed, tmp_path
) -> None:
    env = {
        **topology.env,
        "SSH_KNOWN_HOSTS": topology.box.known_hosts().splitlines()[0] + "\n",
    }  # jump only
    before, kept = live(deployed), releases(deployed)
    run = push(deployer, topology, make_app(tmp_path, "k"), deployed, env=env)
    assert run.status == ExitCode.HOST_KEY
    assert_untouched(deployed, before, kept)
    line = one_error_line(run.stderr)
    assert f"[localhost]:{topology.box.tunnel_port}" in line and "SHA256:" in line
    assert (
        f"deployer keyscan --to {topology.user}@localhost:{topology.box.tunnel_port} --jump "
        in line
    )


def test_changed_host_key_is_refused(topology, deployer, deployed, tmp_path) -> None:
    other = tmp_path / "other"
    fake = write_keypair(other, "ed25519").split()
    text = topology.box.known_hosts().replace(
        topology.box.target.host_keys[0], f"{fake[0]} {fake[1]}"
    )
    run = push(
        deployer,
        topology,
        make_app(tmp_path, "c"),
        deployed,
        env={**topology.env, "SSH_KNOWN_HOSTS": text},
    )
    assert run.status == ExitCode.HOST_KEY
    assert "CHANGED" in one_error_line(run.stderr)


def test_accept_new_host_keys_says_what_it_accepted(topology, deployer, tmp_path) -> None:
    env = {**topology.env, "SSH_KNOWN_HOSTS": ""}
    run = deployer(["exec", *topology.route, "--accept-new-host-keys", "--", "true"], env=env)
    assert run.status == 0, run.output
    assert (
        run.stderr.count("SHA256:") >= 2 and f"[localhost]:{topology.box.tunnel_port}" in run.stderr
    )


def test_cert_authority_lines_do_not_break_known_hosts(topology, deployer) -> None:
    ca = "@cert-authority *.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    env = {**topology.env, "SSH_KNOWN_HOSTS": ca + "\n" + topology.box.known_hosts()}
    assert deployer(["exec", *topology.route, "--", "true"], env=env).status == 0


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("kind", "fmt", "mangle"),
    [
        ("ed25519", "openssh", "as-is"),
        ("ecdsa", "pem", "crlf"),
        ("rsa", "pem", "no-final-newline"),
        ("rsa", "openssh", "spaces"),
        ("ed25519", "openssh", "base64"),
        ("ecdsa", "openssh", "encrypted"),
    ],
)
def test_every_key_form_deploys(topology, deployer, tmp_path, kind, fmt, mangle) -> None:
    import base64

    key = tmp_path / "key"
    cmd = [
        "ssh-keygen",
        "-q",
        "-t",
        kind,
        "-N",
        "s3cret phrase" if mangle == "encrypted" else "",
        "-f",
        str(key),
    ]
    if fmt == "pem":
        cmd += ["-m", "PEM"]
    subprocess.run(cmd, check=True)
    topology.authorize((tmp_path / "key.pub").read_text().strip())
    text = key.read_text()
    variants = {
        "as-is": text,
        "crlf": text.replace("\n", "\r\n"),
        "no-final-newline": text.rstrip("\n"),
        "spaces": text.strip().replace("\n", " "),
        "base64": base64.b64encode(text.encode()).decode(),
        "encrypted": text,
    }
    env = {**topology.env, "SSH_PRIVATE_KEY": variants[mangle]}
    if mangle == "encrypted":
        env["SSH_PRIVATE_KEY_PASSPHRASE"] = "s3cret phrase"
    target = topology.deploy_path(f"keys-{kind}-{fmt}-{mangle}")
    run = push(deployer, topology, make_app(tmp_path, "k"), target, env=env)
    assert run.status == 0, run.output
    assert live(target)
    body = [line for line in text.splitlines() if line and not line.startswith("-----")]
    assert not any(line in run.output for line in body)  # never printed


def test_encrypted_key_without_passphrase(topology, deployer, deployed, tmp_path) -> None:
    key = tmp_path / "key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw-123456", "-f", str(key)], check=True
    )
    before, kept = live(deployed), releases(deployed)
    run = push(deployer, topology, make_app(tmp_path, "e"), deployed,
               env={**topology.env, "SSH_PRIVATE_KEY": key.read_text()})  # fmt: skip
    assert run.status == ExitCode.KEY
    assert "SSH_PRIVATE_KEY_PASSPHRASE" in one_error_line(run.stderr)
    assert_untouched(deployed, before, kept)


def test_public_key_pasted_instead_of_private(topology, deployer, deployed, tmp_path) -> None:
    public = topology.box.ci_key.with_name("ci_ed25519.pub").read_text()
    run = push(
        deployer,
        topology,
        make_app(tmp_path, "p"),
        deployed,
        env={**topology.env, "SSH_PRIVATE_KEY": public},
    )
    assert run.status == ExitCode.KEY
    assert "public key" in one_error_line(run.stderr)


# --------------------------------------------------------------------------- target and artifact


def test_unwritable_path(topology, deployer, tmp_path) -> None:
    locked_dir = topology.deploy_path("readonly")
    locked_dir.mkdir(mode=0o555)
    run = push(deployer, topology, make_app(tmp_path, "w"), locked_dir / "app")
    assert run.status == ExitCode.REMOTE
    line = one_error_line(run.stderr)
    assert (
        f"{locked_dir} on {topology.user}@localhost:{topology.box.tunnel_port}" in line
        and "not writable" in line
    )
    assert not (locked_dir / "app").exists()


def test_missing_artifact(topology, deployer, deployed, tmp_path) -> None:
    before, kept = live(deployed), releases(deployed)
    run = push(deployer, topology, tmp_path / "dist", deployed)
    assert run.status == ExitCode.ARTIFACT
    assert f"artifact {tmp_path / 'dist'} not found — build it first" in one_error_line(run.stderr)
    assert_untouched(deployed, before, kept)


def test_archive_with_parent_member_is_refused_before_anything_is_written(
    topology, deployer, deployed, tmp_path
) -> None:
    before, kept = live(deployed), releases(deployed)
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("owned")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="ok.txt")
        tar.add(payload, arcname="../../escaped.txt")
    run = push(deployer, topology, evil, deployed)
    assert run.status == ExitCode.ARTIFACT
    assert "../../escaped.txt" in one_error_line(run.stderr)
    assert_untouched(deployed, before, kept)
    assert not (deployed.parent / "escaped.txt").exists()


def test_symlink_pointing_outside_is_refused(topology, deployer, deployed, tmp_path) -> None:
    before, kept = live(deployed), releases(deployed)
    app = make_app(tmp_path, "link")
    (app / "etc").symlink_to("/etc")
    run = push(deployer, topology, app, deployed)
    assert run.status == ExitCode.ARTIFACT
    assert "points outside the release" in one_error_line(run.stderr)
    assert_untouched(deployed, before, kept)


def test_lock_held_then_unlock(topology, deployer, deployed, tmp_path) -> None:
    before, kept = live(deployed), releases(deployed)
    lock = deployed / ".deployer" / "lock"
    lock.mkdir()
    (lock / "info").write_text("deploy by bob since 2026-11-22T10:00:00Z token abc\n")
    topology.give(lock)
    run = push(deployer, topology, make_app(tmp_path, "l"), deployed)
    assert run.status == ExitCode.LOCK
    line = one_error_line(run.stderr)
    assert "deploy by bob" in line and "deployer unlock" in line
    assert live(deployed) == before and releases(deployed) == kept
    unlocked = deployer(["unlock", *topology.route, "--path", str(deployed)], env=topology.env)
    assert unlocked.status == 0 and "removed lock (deploy by bob" in unlocked.stderr
    assert push(deployer, topology, make_app(tmp_path, "l2"), deployed).status == 0


def test_bad_option_values_are_usage_errors(topology, deployer, tmp_path) -> None:
    run = deployer(
        ["push", str(tmp_path), "--to", "not a host", "--path", "/srv/app"], env=topology.env
    )
    assert run.status == ExitCode.USAGE
    assert "is not USER@HOST[:PORT]" in one_error_line(run.stderr)


def test_sigterm_during_a_hook_cleans_up(topology, deployed, tmp_path) -> None:
    import os
    import signal
    import sys

    before, kept = live(deployed), releases(deployed)
    marker = deployed / "shared" / "hook-started"  # a place the login user may write
    args = [sys.executable, "-m", "deployer", "push", str(make_app(tmp_path, "cancel")), *topology.route,
            "--path", str(deployed), "--before", f"touch {marker}; sleep 30"]  # fmt: skip
    proc = subprocess.Popen(args, env={**os.environ, **topology.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the hook never started"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted: cleaned up" in stderr
    assert_untouched(deployed, before, kept)
