"""Which ssh deployer may use: OpenSSH 8.5 or newer, found on the PATH it was given."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deployer.ssh.openssh.binary import OpenSSH, find_openssh, parse_version


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.11 19 Sep 2023", (9, 2)),
        ("OpenSSH_8.4p1 Debian-5+deb11u3, OpenSSL 1.1.1w  11 Sep 2023", (8, 4)),
        ("OpenSSH_10.0p2, LibreSSL 3.3.6", (10, 0)),
        ("Dropbear v2022.83", None),
    ],
)
def test_versions_are_read_from_ssh_dash_v(text: str, version: tuple[int, int] | None) -> None:
    assert parse_version(text) == version


def fake_ssh(folder: Path, says: str) -> str:
    """A program called ssh that answers -V like some other client would (none of these is
    installable here: an OpenSSH older than 8.5, or not OpenSSH at all)."""
    folder.mkdir()
    program = folder / "ssh"
    program.write_text(f"#!/bin/sh\necho '{says}' >&2\n")
    program.chmod(0o755)
    return str(folder)


def test_this_machines_openssh_is_found() -> None:
    real = shutil.which("ssh")
    assert real is not None, "the tests need OpenSSH's client (apt-get install openssh-client)"
    found = find_openssh(str(Path(real).parent))
    assert isinstance(found, OpenSSH) and found.path == real and found.version >= (8, 5)


def test_no_ssh_an_old_one_or_another_client_say_why(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_openssh(str(empty)) == "no ssh on the PATH"
    old = fake_ssh(tmp_path / "old", "OpenSSH_8.4p1 Debian-5+deb11u3, OpenSSL 1.1.1w")
    assert find_openssh(old) == f"{old}/ssh is OpenSSH 8.4, older than 8.5"
    other = fake_ssh(tmp_path / "other", "Dropbear v2022.83")
    assert find_openssh(other) == f"{other}/ssh is not OpenSSH ('Dropbear v2022.83')"
