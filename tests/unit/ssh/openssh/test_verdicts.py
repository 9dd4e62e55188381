"""Host keys on the OpenSSH path: deployer's verdict, asked by the command ssh runs, kept per hop."""

from __future__ import annotations

import base64
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.errors import ExitCode, HostKeyError, InternalError
from deployer.ssh.openssh.verdicts import HostKeyBroker

KEY = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
B64 = base64.b64encode(KEY).decode()
HOST = "deployer-hop"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[HostKeyBroker]:
    broker = HostKeyBroker(tmp_path)
    try:
        yield broker
    finally:
        broker.close()
    assert list(tmp_path.iterdir()) == []  # the FIFOs are gone


def as_ssh_runs(command: str, key_type: str, key: str) -> list[str]:
    """The argv ssh runs for KnownHostsCommand: argv_split (which reads our quoting as a POSIX
    shell does), then %-tokens expanded in every argument but the program."""
    words = shlex.split(command)
    values = {"%": "%", "t": key_type, "K": key, "H": HOST}
    return [words[0]] + [re.sub(r"%(.)", lambda m: values[m[1]], word) for word in words[1:]]


def ask(command: str, key_type: str = "ssh-ed25519", key: str = B64) -> str:
    """Run the command as ssh does; what it prints (ssh reads that as known_hosts lines)."""
    done = subprocess.run(
        as_ssh_runs(command, key_type, key), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr  # ssh treats a failing command as fatal
    return done.stdout


def test_a_trusted_key_is_printed_as_a_known_hosts_line_under_the_name_ssh_asked_for(
    broker: HostKeyBroker,
) -> None:
    seen: list[tuple[str, bytes]] = []
    command = broker.expect("1", lambda key_type, blob: seen.append((key_type, blob)))
    assert command.startswith("/bin/sh -c ")  # no interpreter to start: a shell and two FIFOs
    assert ask(command) == f"{HOST} ssh-ed25519 {B64}\n"
    assert seen == [("ssh-ed25519", KEY)]
    verdict = broker.verdict("1")
    assert verdict.checked and verdict.key == ("ssh-ed25519", KEY) and verdict.error is None


def test_a_refused_key_prints_nothing_and_the_refusal_is_kept_to_be_reported(
    broker: HostKeyBroker,
) -> None:
    def refuse(key_type: str, blob: bytes) -> None:
        raise HostKeyError("the host key of target x CHANGED: ...")

    command = broker.expect("2", refuse)
    assert ask(command) == ""
    verdict = broker.verdict("2")
    assert verdict.checked and verdict.key is None
    assert isinstance(verdict.error, HostKeyError) and "CHANGED" in str(verdict.error)
    assert ask(command) == ""  # and stays refused


def test_a_key_is_checked_once_and_only_that_key_is_trusted_again(broker: HostKeyBroker) -> None:
    calls: list[bytes] = []
    command = broker.expect("3", lambda key_type, blob: calls.append(blob))
    assert ask(command)
    assert ask(command)  # a re-key shows the same key: no second check, no second notice
    other = base64.b64encode(KEY[:-1] + b"\xff").decode()
    assert ask(command, key=other) == ""  # another key on the same connection: never
    assert calls == [KEY]


def test_hops_are_judged_apart_and_a_request_without_a_key_is_refused(
    broker: HostKeyBroker,
) -> None:
    jump = broker.expect("4", lambda key_type, blob: None)
    target = broker.expect("5", lambda key_type, blob: None)
    assert ask(jump, key_type="NONE", key="NONE") == ""  # ssh ordering algorithms: no key
    assert ask(jump, key="not base64!") == ""
    assert not broker.verdict("4").checked and not broker.verdict("5").checked
    assert ask(target)
    assert broker.verdict("5").checked and not broker.verdict("4").checked


def test_a_bug_in_a_check_refuses_the_key_and_is_reported_as_an_internal_error(
    broker: HostKeyBroker,
) -> None:
    command = broker.expect("6", lambda key_type, blob: 1 / 0)  # type: ignore[func-returns-value]
    assert ask(command) == ""
    error = broker.verdict("6").error
    assert isinstance(error, InternalError) and error.exit_code == ExitCode.ERROR
    assert "ZeroDivisionError" in str(error)


def test_closing_frees_a_command_left_waiting_and_every_thread(tmp_path: Path) -> None:
    broker = HostKeyBroker(tmp_path)
    checking, release = threading.Event(), threading.Event()

    def slow(key_type: str, blob: bytes) -> None:
        checking.set()
        release.wait(30)  # the check is still running when the broker is closed

    command = broker.expect("7", slow)
    broker.expect("8", lambda key_type, blob: None)  # never asked at all
    helper = subprocess.Popen(as_ssh_runs(command, "ssh-ed25519", B64), stdout=subprocess.PIPE)
    threads = [t for t in threading.enumerate() if t.name == "deployer-hostkey"]
    assert len(threads) >= 2
    assert checking.wait(15)
    closing = threading.Thread(target=broker.close)
    closing.start()
    release.set()
    closing.join(timeout=15)
    assert not closing.is_alive()
    assert helper.wait(timeout=15) == 0  # the command ssh ran is not left behind either
    assert helper.stdout is not None and helper.stdout.read() == b""  # nothing was trusted
    helper.stdout.close()
    assert not any(t.is_alive() for t in threads)
    assert list(tmp_path.iterdir()) == []
