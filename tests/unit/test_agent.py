"""The in-memory agent, driven by the real OpenSSH client tools (ssh-add, ssh-keygen -Y)."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import stat
import struct
import subprocess
from pathlib import Path

import paramiko
import pytest

from deployer.agent import MemoryAgent, run_with_agent
from deployer.errors import ConfigError
from deployer.keys import read_private_key_file


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[paramiko.PKey, Path]]:
    folder = tmp_path_factory.mktemp("agent-keys")
    made = {}
    for kind in ("ed25519", "ecdsa", "rsa"):
        path = folder / kind
        extra = ["-b", "2048"] if kind == "rsa" else []
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "", "-f", str(path)],
            check=True,
        )
        made[kind] = (read_private_key_file(path), path.with_name(kind + ".pub"))
    return made


def tool(
    agent: MemoryAgent, *argv: str, data: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SSH_AUTH_SOCK": agent.socket_path}
    return subprocess.run(list(argv), env=env, input=data, capture_output=True, timeout=30)


def test_ssh_add_lists_exactly_our_keys(keys) -> None:
    with MemoryAgent([k for k, _ in keys.values()]) as agent:
        listed = tool(agent, "ssh-add", "-L")
    assert listed.returncode == 0
    shown = {" ".join(line.split()[:2]) for line in listed.stdout.decode().splitlines()}
    assert shown == {" ".join(pub.read_text().split()[:2]) for _, pub in keys.values()}


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_ssh_keygen_signs_through_the_agent(keys, kind: str, tmp_path: Path) -> None:
    key, pub = keys[kind]
    data = tmp_path / "data"
    data.write_bytes(b"release 42")
    with MemoryAgent([key]) as agent:
        signed = tool(agent, "ssh-keygen", "-Y", "sign", "-f", str(pub), "-n", "file", str(data))
    assert signed.returncode == 0, signed.stderr
    signature = data.with_name("data.sig")
    check = subprocess.run(
        ["ssh-keygen", "-Y", "check-novalidate", "-n", "file", "-s", str(signature)],
        stdin=data.open("rb"), capture_output=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    expected = {"ed25519": "ssh-ed25519", "ecdsa": "ecdsa-sha2-nistp256", "rsa": "rsa-sha2-512"}[
        kind
    ]
    assert signature_algorithm(signature) == expected


def signature_algorithm(path: Path) -> str:
    """The algorithm inside an SSHSIG file (PROTOCOL.sshsig)."""
    armored = [ln for ln in path.read_text().splitlines() if not ln.startswith("-----")]
    blob = base64.b64decode("".join(armored))
    assert blob[:6] == b"SSHSIG"
    offset = 10  # magic + uint32 version
    fields = []
    for _ in range(5):  # publickey, namespace, reserved, hash_algorithm, signature
        (length,) = struct.unpack_from(">I", blob, offset)
        fields.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    (name_length,) = struct.unpack_from(">I", fields[4], 0)
    return fields[4][4 : 4 + name_length].decode()


def test_agent_is_read_only_and_survives_bad_clients(keys) -> None:
    key, pub = keys["ed25519"]
    private = pub.with_suffix("")
    with MemoryAgent([key]) as agent:
        assert tool(agent, "ssh-add", "-D").returncode != 0
        assert tool(agent, "ssh-add", str(private)).returncode != 0
        for garbage in (
            b"\xff\xff\xff\xff",
            struct.pack(">I", 3) + b"\x0d\x00",
            b"\x00\x00\x00\x01\x63",
        ):
            with socket.socket(socket.AF_UNIX) as raw:
                raw.settimeout(5)
                raw.connect(agent.socket_path)
                raw.sendall(garbage)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    raw.recv(64)
        assert tool(agent, "ssh-add", "-L").returncode == 0


def test_socket_is_private_and_removed(keys) -> None:
    with MemoryAgent([keys["ed25519"][0]]) as agent:
        folder = Path(agent.socket_path).parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(os.stat(agent.socket_path).st_mode) == 0o600
        assert os.listdir(folder) == ["agent.sock"]  # no key file beside it
    assert not folder.exists()


def test_run_with_agent_passes_status_and_socket(keys) -> None:
    status = run_with_agent(
        [keys["ed25519"][0]],
        ["sh", "-c", 'test -S "$SSH_AUTH_SOCK" && ssh-add -l >/dev/null && exit 3'],
    )
    assert status == 3
    assert run_with_agent([keys["ed25519"][0]], ["sh", "-c", "kill -TERM $$"]) == 143
    with pytest.raises(ConfigError, match="command not found: no-such-command"):
        run_with_agent([keys["ed25519"][0]], ["no-such-command"])
