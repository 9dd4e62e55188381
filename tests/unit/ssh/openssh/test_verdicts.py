"""Host keys on the OpenSSH path: deployer's verdict, asked by the helper ssh runs, kept per hop."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.errors import ExitCode, HostKeyError, InternalError
from deployer.ssh.openssh import knownhosts_command
from deployer.ssh.openssh.verdicts import TRUSTED, HostKeyBroker

KEY = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
B64 = base64.b64encode(KEY).decode()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[HostKeyBroker]:
    broker = HostKeyBroker(tmp_path)
    try:
        yield broker
    finally:
        broker.close()
    assert not Path(broker.socket_path).exists()


def ask(broker: HostKeyBroker, hop: str, key_type: str = "ssh-ed25519", key: str = B64) -> str:
    """Run the helper as ssh runs it (python -I -S FILE SOCKET HOP %H %t %K); its stdout."""
    argv = [sys.executable, "-I", "-S", knownhosts_command.__file__, broker.socket_path, hop,
            "[localhost]:22022", key_type, key]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_trusted_key_is_printed_as_a_known_hosts_line_under_the_name_ssh_asked_for(
    broker: HostKeyBroker,
) -> None:
    seen: list[tuple[str, bytes]] = []
    broker.expect("1", lambda key_type, blob: seen.append((key_type, blob)))
    assert ask(broker, "1") == f"[localhost]:22022 ssh-ed25519 {B64}\n"
    assert seen == [("ssh-ed25519", KEY)]
    verdict = broker.verdict("1")
    assert verdict.checked and verdict.key == ("ssh-ed25519", KEY) and verdict.error is None


def test_a_refused_key_prints_nothing_and_the_refusal_is_kept_to_be_reported(
    broker: HostKeyBroker,
) -> None:
    def refuse(key_type: str, blob: bytes) -> None:
        raise HostKeyError("the host key of target x CHANGED: ...")

    broker.expect("2", refuse)
    assert ask(broker, "2") == ""
    verdict = broker.verdict("2")
    assert verdict.checked and verdict.key is None
    assert isinstance(verdict.error, HostKeyError) and "CHANGED" in str(verdict.error)
    assert ask(broker, "2") == ""  # and stays refused


def test_a_key_is_checked_once_and_only_that_key_is_trusted_again(broker: HostKeyBroker) -> None:
    calls: list[bytes] = []
    broker.expect("3", lambda key_type, blob: calls.append(blob))
    assert ask(broker, "3")
    assert ask(broker, "3")  # a re-key shows the same key: no second check, no second notice
    other = base64.b64encode(KEY[:-1] + b"\xff").decode()
    assert ask(broker, "3", key=other) == ""  # another key on the same connection: never
    assert calls == [KEY]


def test_requests_about_other_hops_or_without_a_key_are_refused(broker: HostKeyBroker) -> None:
    broker.expect("4", lambda key_type, blob: None)
    assert ask(broker, "5") == ""  # a hop nobody expects
    assert ask(broker, "4", key_type="NONE", key="NONE") == ""  # ssh ordering algorithms
    assert ask(broker, "4", key="not base64!") == ""
    assert not broker.verdict("4").checked
    assert broker.answer(b"\xff\xfe\n") == b"" and broker.answer(b"4\tonly-two\n") == b""
    assert broker.answer(f"4\tssh-ed25519\t{B64}\n".encode()) == TRUSTED


def test_a_bug_in_a_check_refuses_the_key_and_is_reported_as_an_internal_error(
    broker: HostKeyBroker,
) -> None:
    broker.expect("6", lambda key_type, blob: 1 / 0)  # type: ignore[func-returns-value]
    assert ask(broker, "6") == ""
    error = broker.verdict("6").error
    assert isinstance(error, InternalError) and error.exit_code == ExitCode.ERROR
    assert "ZeroDivisionError" in str(error)


def test_the_helper_fails_when_deployer_is_gone(tmp_path: Path) -> None:
    argv = [sys.executable, "-I", "-S", knownhosts_command.__file__, str(tmp_path / "gone.sock"),
            "1", "h", "ssh-ed25519", B64]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stdout == ""
    assert "deployer's host key check is gone" in done.stderr
