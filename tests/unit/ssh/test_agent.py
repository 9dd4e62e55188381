"""The in-memory agent, driven by the real OpenSSH client tools (ssh-add, ssh-keygen -Y)."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from deployer.errors import ConfigError, ExitCode
from deployer.ssh.agent import MAX_FRAME, MemoryAgent, run_with_agent

# A request that crashes an agent thread must fail the test, not just print a traceback.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

KINDS = ("ed25519", "ecdsa", "rsa")
FAILURE = b"\x05"
TIMEOUT = 30  # seconds; every subprocess and socket wait below is bounded
REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Key:
    """A key made by ssh-keygen: the private file, the loaded key and its public line."""

    path: Path
    pkey: paramiko.PKey
    public: str  # "type base64", as `ssh-keygen -y -f` prints it (comment dropped)

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.public.split()[1])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    folder = tmp_path_factory.mktemp("agent-keys")
    made = {}
    for kind in KINDS:
        path = folder / kind
        extra = ["-b", "3072"] if kind == "rsa" else []
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "on-disk-comment", "-f", str(path)],
            check=True, timeout=TIMEOUT,
        )  # fmt: skip
        public = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(path)],
            check=True, capture_output=True, text=True, timeout=TIMEOUT,
        ).stdout  # fmt: skip
        made[kind] = Key(path, paramiko.PKey.from_path(path), " ".join(public.split()[:2]))
    return made


def tool(agent: MemoryAgent, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run an OpenSSH tool against the agent."""
    env = {**os.environ, "SSH_AUTH_SOCK": agent.socket_path}
    return subprocess.run(
        list(argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def listed(agent: MemoryAgent) -> list[str]:
    """`ssh-add -L` lines, which must succeed."""
    result = tool(agent, "ssh-add", "-L")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def connect(agent: MemoryAgent) -> socket.socket:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(5)
    raw.connect(agent.socket_path)
    return raw


def recv_exact(raw: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = raw.recv(size - len(data))
        assert chunk, "the agent closed the connection mid-reply"
        data += chunk
    return data


def exchange(raw: socket.socket, body: bytes) -> bytes:
    """Send one request frame and return the reply body."""
    raw.sendall(ssh_string(body))
    (length,) = struct.unpack(">I", recv_exact(raw, 4))
    return recv_exact(raw, length)


def closed_by_agent(raw: socket.socket) -> bool:
    """True once the agent has closed this connection (False would mean it is still waiting)."""
    try:
        return raw.recv(64) == b""
    except ConnectionResetError:
        return True


def sign_request(blob: bytes, data: bytes, flags: int) -> bytes:
    return b"\x0d" + ssh_string(blob) + ssh_string(data) + struct.pack(">I", flags)


def split_strings(data: bytes) -> list[bytes]:
    fields, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        fields.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return fields


# --------------------------------------------------------------------------- what ssh-add sees


def test_ssh_add_lists_exactly_the_public_keys(keys: dict[str, Key]) -> None:
    pkeys = [k.pkey for k in keys.values()]
    with MemoryAgent([*pkeys, *pkeys]) as agent:  # duplicates are served once
        lines = listed(agent)
        fingerprints = tool(agent, "ssh-add", "-l")
    assert len(lines) == len(KINDS)
    assert {" ".join(line.split()[:2]) for line in lines} == {k.public for k in keys.values()}
    assert all(line.split()[2:] == ["deployer"] for line in lines)
    assert fingerprints.returncode == 0
    assert len(fingerprints.stdout.splitlines()) == len(KINDS)


def test_comment_and_an_empty_agent(keys: dict[str, Key]) -> None:
    with MemoryAgent([keys["ed25519"].pkey], comment="ci deploy key") as agent:
        assert listed(agent) == [f"{keys['ed25519'].public} ci deploy key"]
    with MemoryAgent([]) as agent:
        empty = tool(agent, "ssh-add", "-L")
    assert empty.returncode == 1  # ssh-add's answer for an agent without identities
    assert "no identities" in empty.stdout + empty.stderr


# --------------------------------------------------------------------------- signing


def sshsig_algorithm(path: Path) -> str:
    """The signature algorithm inside an SSHSIG file (PROTOCOL.sshsig)."""
    armored = [ln for ln in path.read_text().splitlines() if not ln.startswith("-----")]
    blob = base64.b64decode("".join(armored))
    assert blob[:6] == b"SSHSIG"
    # after magic and version: publickey, namespace, reserved, hash_algorithm, signature
    signature = split_strings(blob[10:])[4]
    return split_strings(signature)[0].decode()


@pytest.mark.parametrize("kind", KINDS)
def test_ssh_keygen_signs_through_the_agent(
    keys: dict[str, Key], kind: str, tmp_path: Path
) -> None:
    key = keys[kind]
    public = tmp_path / "signer.pub"  # no private key beside it: only the agent can sign
    public.write_text(key.public + "\n")
    data = tmp_path / "data"
    data.write_bytes(b"release 42\n")
    with MemoryAgent([k.pkey for k in keys.values()]) as agent:
        signed = tool(agent, "ssh-keygen", "-Y", "sign", "-f", str(public), "-n", "file", str(data))
    assert signed.returncode == 0, signed.stderr
    signature = tmp_path / "data.sig"
    expected = {"ed25519": "ssh-ed25519", "ecdsa": "ecdsa-sha2-nistp256", "rsa": "rsa-sha2-512"}
    assert sshsig_algorithm(signature) == expected[kind]

    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'ci@example namespaces="file" {key.public}\n')

    def verify(content: bytes, mode: str = "verify") -> subprocess.CompletedProcess[bytes]:
        extra = ["-f", str(allowed), "-I", "ci@example"] if mode == "verify" else []
        return subprocess.run(
            ["ssh-keygen", "-Y", mode, *extra, "-n", "file", "-s", str(signature)],
            input=content, capture_output=True, timeout=TIMEOUT,
        )  # fmt: skip

    good = verify(b"release 42\n")
    assert good.returncode == 0, good.stderr
    assert b"Good" in good.stdout + good.stderr
    assert verify(b"release 42\n", "check-novalidate").returncode == 0
    assert verify(b"release 43\n").returncode != 0  # the check can fail


def test_signing_needs_the_agent(keys: dict[str, Key], tmp_path: Path) -> None:
    public = tmp_path / "signer.pub"
    public.write_text(keys["rsa"].public + "\n")
    data = tmp_path / "data"
    data.write_bytes(b"x")
    argv = ("ssh-keygen", "-Y", "sign", "-f", str(public), "-n", "file", str(data))
    with MemoryAgent([keys["ed25519"].pkey]) as agent:  # holds another key only
        refused = tool(agent, *argv)
        assert refused.returncode != 0
        assert not (tmp_path / "data.sig").exists()
        with connect(agent) as raw:
            assert exchange(raw, sign_request(keys["rsa"].blob, b"x", 4)) == FAILURE
            assert exchange(raw, sign_request(keys["ed25519"].blob, b"x", 0))[:1] == b"\x0e"


@pytest.mark.parametrize(
    ("kind", "flags", "algorithm"),
    [
        ("rsa", 2, "rsa-sha2-256"),
        ("rsa", 4, "rsa-sha2-512"),
        ("rsa", 6, "rsa-sha2-256"),  # both set: OpenSSH's ssh-agent picks SHA-256 as well
        ("rsa", 0, None),  # ssh-rsa would mean SHA-1: refused
        ("ed25519", 4, "ssh-ed25519"),  # the flags only concern RSA keys
        ("ecdsa", 0, "ecdsa-sha2-nistp256"),
    ],
)
def test_sign_flags_choose_the_rsa_algorithm(
    keys: dict[str, Key], kind: str, flags: int, algorithm: str | None
) -> None:
    key = keys[kind]
    data = b"session identifier and userauth request"
    with MemoryAgent([key.pkey]) as agent, connect(agent) as raw:
        reply = exchange(raw, sign_request(key.blob, data, flags))
    if algorithm is None:
        assert reply == FAILURE
        return
    assert reply[:1] == b"\x0e"
    (signature,) = split_strings(reply[1:])
    assert split_strings(signature)[0].decode() == algorithm
    public = paramiko.PKey.from_type_string(key.public.split()[0], key.blob)
    assert public.verify_ssh_sig(data, paramiko.Message(signature))
    assert not public.verify_ssh_sig(data + b"!", paramiko.Message(signature))


def test_concurrent_clients_all_get_valid_signatures(keys: dict[str, Key]) -> None:
    key = keys["ed25519"]
    public = paramiko.PKey.from_type_string("ssh-ed25519", key.blob)
    results: list[bool] = []

    def client(n: int) -> None:
        with connect(agent) as raw:
            for i in range(5):
                data = f"{n}-{i}".encode()
                reply = exchange(raw, sign_request(key.blob, data, 0))
                (signature,) = split_strings(reply[1:])
                results.append(public.verify_ssh_sig(data, paramiko.Message(signature)))

    with MemoryAgent([key.pkey]) as agent:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=TIMEOUT)
    assert results == [True] * 40


# --------------------------------------------------------------------------- read-only and robust


def test_agent_is_read_only(keys: dict[str, Key], tmp_path: Path) -> None:
    key = keys["ed25519"]
    with MemoryAgent([key.pkey]) as agent:
        assert tool(agent, "ssh-add", "-D").returncode != 0
        assert tool(agent, "ssh-add", str(keys["rsa"].path)).returncode != 0
        public = tmp_path / "ed25519.pub"
        public.write_text(key.public + "\n")
        assert tool(agent, "ssh-add", "-d", str(public)).returncode != 0
        with connect(agent) as raw:
            # add, remove, remove all, lock, unlock, add constrained, add smartcard, extension,
            # the SSH1 requests and an unknown number: all refused, on one connection
            for kind in (17, 18, 19, 22, 23, 25, 20, 27, 1, 9, 200):
                assert exchange(raw, bytes([kind]) + b"\x00" * 8) == FAILURE, kind
            assert exchange(raw, b"\x0b")[:1] == b"\x0c"  # the connection still serves
        assert listed(agent) == [f"{key.public} deployer"]


def test_bad_frames_do_not_stop_the_agent(keys: dict[str, Key]) -> None:
    key = keys["ed25519"]
    with MemoryAgent([key.pkey]) as agent:
        for header in (struct.pack(">I", 0xFFFFFFFF), struct.pack(">I", MAX_FRAME + 1), bytes(4)):
            with connect(agent) as raw:
                raw.sendall(header)
                assert closed_by_agent(raw), header
        with connect(agent) as raw:  # the largest allowed frame is read whole and answered
            assert exchange(raw, b"\xff" + bytes(MAX_FRAME - 1)) == FAILURE
        with connect(agent) as raw:  # a frame cut short by the client's end of stream
            raw.sendall(struct.pack(">I", 100) + b"\x0b")
            raw.shutdown(socket.SHUT_WR)
            assert closed_by_agent(raw)
        with connect(agent) as raw:  # malformed sign requests
            assert exchange(raw, b"\x0d" + struct.pack(">I", 1000) + b"short") == FAILURE
            assert exchange(raw, b"\x0d" + ssh_string(key.blob) + ssh_string(b"d")) == FAILURE
            assert exchange(raw, b"\x0d") == FAILURE
        connect(agent).close()  # connects and leaves at once
        with connect(agent) as stuck:
            stuck.sendall(b"\x00\x00")  # half a header, never finished: others are still served
            assert listed(agent) == [f"{key.public} deployer"]


def test_exit_closes_open_connections(keys: dict[str, Key]) -> None:
    key = keys["ed25519"]
    with MemoryAgent([key.pkey]) as agent, connect(agent) as raw:
        assert exchange(raw, b"\x0b")[:1] == b"\x0c"
        agent.__exit__(None, None, None)
        assert closed_by_agent(raw)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            raw.sendall(ssh_string(sign_request(key.blob, b"late", 0)))
        assert closed_by_agent(raw)


def test_socket_directory_is_private_and_removed(keys: dict[str, Key]) -> None:
    with MemoryAgent([k.pkey for k in keys.values()]) as agent:
        sock = Path(agent.socket_path)
        folder = sock.parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert folder.stat().st_uid == os.geteuid()
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert [p.name for p in folder.rglob("*")] == [sock.name]  # nothing holding key material
        listed(agent)
    assert not folder.exists()
    with pytest.raises(OSError), socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(str(sock))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_other_users_are_refused_even_when_the_socket_is_open_to_them(
    keys: dict[str, Key],
) -> None:
    with MemoryAgent([keys["ed25519"].pkey]) as agent:
        os.chmod(Path(agent.socket_path).parent, 0o711)
        os.chmod(agent.socket_path, 0o666)
        env = {"PATH": os.environ["PATH"], "SSH_AUTH_SOCK": agent.socket_path}
        nobody = subprocess.run(
            ["ssh-add", "-L"], env=env, user=65534, group=65534, extra_groups=[],
            capture_output=True, text=True, timeout=TIMEOUT, cwd="/",
        )  # fmt: skip
        assert nobody.returncode != 0
        assert keys["ed25519"].public not in nobody.stdout
        # it could connect (the socket is open to it) and was then cut off: ssh-add either reports
        # that or dies of SIGPIPE, depending on whether its request was written before the close
        assert (
            nobody.returncode == -signal.SIGPIPE
            or "communication with agent failed" in nobody.stderr
        )
        assert listed(agent) == [f"{keys['ed25519'].public} deployer"]


# --------------------------------------------------------------------------- run_with_agent


def test_run_with_agent_returns_status_and_the_child_sees_the_agent(
    keys: dict[str, Key], tmp_path: Path
) -> None:
    script = (
        'ssh-add -L > "$1/listed"; printf %s "$SSH_AUTH_SOCK" > "$1/sock";'
        ' printf %s "${SSH_AGENT_PID-unset}" > "$1/pid"; exit 3'
    )
    env = {**os.environ, "SSH_AGENT_PID": "4242", "SSH_AUTH_SOCK": "/nonexistent"}
    status = run_with_agent(
        [keys["ed25519"].pkey, keys["rsa"].pkey], ["sh", "-c", script, "sh", str(tmp_path)], env
    )
    assert status == 3
    lines = (tmp_path / "listed").read_text().splitlines()
    assert lines == [f"{keys['ed25519'].public} deployer", f"{keys['rsa'].public} deployer"]
    sock = Path((tmp_path / "sock").read_text())
    assert sock.name == "agent.sock"
    assert not sock.parent.exists()  # removed once the command finished
    assert (tmp_path / "pid").read_text() == "unset"


@pytest.mark.parametrize(("sig", "status"), [("TERM", 143), ("KILL", 137), ("INT", 130)])
def test_run_with_agent_reports_death_by_signal_like_a_shell(
    keys: dict[str, Key], sig: str, status: int
) -> None:
    script = f"trap - INT; kill -{sig} $$; sleep 5"
    assert run_with_agent([keys["ed25519"].pkey], ["sh", "-c", script]) == status


def test_run_with_agent_finds_commands_on_the_given_path(
    keys: dict[str, Key], tmp_path: Path
) -> None:
    tool_path = tmp_path / "bin" / "deploy-step"
    tool_path.parent.mkdir()
    tool_path.write_text('#!/bin/sh\ntest -S "$SSH_AUTH_SOCK" && exit 7\nexit 1\n')
    tool_path.chmod(0o755)
    env = {**os.environ, "PATH": f"{tool_path.parent}{os.pathsep}{os.environ['PATH']}"}
    assert run_with_agent([keys["ed25519"].pkey], ["deploy-step"], env) == 7
    with pytest.raises(ConfigError, match=r"^command not found: deploy-step$"):
        run_with_agent([keys["ed25519"].pkey], ["deploy-step"])


def test_commands_that_cannot_run_are_config_errors(
    keys: dict[str, Key], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkeys = [keys["ed25519"].pkey]
    private_tmp = tmp_path / "tmp"  # the agent's directory goes here, away from parallel runs
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    with pytest.raises(ConfigError) as missing:
        run_with_agent(pkeys, ["no-such-command-for-deployer", "--flag"])
    assert str(missing.value) == "command not found: no-such-command-for-deployer"
    assert missing.value.exit_code == ExitCode.USAGE
    plain = tmp_path / "not-executable"
    plain.write_text("echo hi\n")
    plain.chmod(0o644)
    with pytest.raises(ConfigError, match=r"^cannot run .*not-executable: Permission denied$"):
        run_with_agent(pkeys, [str(plain)])
    with pytest.raises(ConfigError, match=r"^no command given"):
        run_with_agent(pkeys, [])
    assert list(private_tmp.iterdir()) == []  # each failed start removed its agent directory


FORWARDING_CHILD = """
import sys
import paramiko
from deployer.ssh.agent import run_with_agent
script = (
    'trap "exit 42" TERM; trap "exit 43" INT;'
    ' printf "%s %s" $$ "$SSH_AUTH_SOCK" > "$1.tmp"; mv "$1.tmp" "$1";'
    ' while :; do sleep 0.1; done'
)
key = paramiko.PKey.from_path(sys.argv[1])
sys.exit(run_with_agent([key], ["sh", "-c", script, "sh", sys.argv[2]]))
"""


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 42), (signal.SIGINT, 43)])
def test_run_with_agent_forwards_signals_to_the_command(
    keys: dict[str, Key], tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runner = subprocess.Popen(
        [sys.executable, "-c", FORWARDING_CHILD, str(keys["ed25519"].path), str(ready)], env=env
    )
    child_pid = 0
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready.exists():
            assert runner.poll() is None, "the runner exited before its command started"
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        pid_text, sock = ready.read_text().split()
        child_pid = int(pid_text)
        runner.send_signal(sig)
        assert runner.wait(timeout=TIMEOUT) == status
        assert not Path(sock).parent.exists()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=TIMEOUT)
        if child_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
