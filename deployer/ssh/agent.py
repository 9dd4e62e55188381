"""A read-only ssh-agent serving keys from this process's memory (draft-miller-ssh-agent).

``deployer agent -- CMD`` runs CMD with SSH_AUTH_SOCK pointing here, so plain ssh, rsync and git
authenticate with the CI key while no key file ever exists. Only listing identities and signing
are answered; adding, removing, locking and extensions are refused with SSH_AGENT_FAILURE.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

import paramiko

from deployer.environment import child_environment
from deployer.errors import ConfigError

# Message numbers and sign flags from draft-miller-ssh-agent.
SSH_AGENT_FAILURE = 5
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENT_IDENTITIES_ANSWER = 12
SSH_AGENTC_SIGN_REQUEST = 13
SSH_AGENT_SIGN_RESPONSE = 14
SSH_AGENT_RSA_SHA2_256 = 2
SSH_AGENT_RSA_SHA2_512 = 4

MAX_FRAME = 256 * 1024  # OpenSSH's ssh-agent uses the same bound (AGENT_MAX_LEN)
SOCKET_NAME = "agent.sock"

_FAILURE = bytes([SSH_AGENT_FAILURE])
_UINT32 = struct.Struct(">I")
_UCRED = struct.Struct("=iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
_POLL_SECONDS = 0.2  # how often the accept loop looks at the stop flag


class _FrameError(Exception):
    """The client sent a frame this agent will not read; its connection is closed."""


def _string(data: bytes) -> bytes:
    return _UINT32.pack(len(data)) + data


def _take_string(buf: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = _UINT32.unpack_from(buf, offset)
    start = offset + 4
    end = start + length
    if end > len(buf):
        raise ValueError("string runs past the end of the message")
    return buf[start:end], end


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    """Exactly size bytes, or None if the peer closed the connection first."""
    chunks: list[bytes] = []
    missing = size
    while missing:
        chunk = conn.recv(min(missing, 65536))
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _read_frame(conn: socket.socket) -> bytes | None:
    """One length-prefixed request body, or None at end of stream."""
    header = _recv_exact(conn, 4)
    if header is None:
        return None
    (length,) = _UINT32.unpack(header)
    if length == 0 or length > MAX_FRAME:
        raise _FrameError(f"frame of {length} bytes")
    return _recv_exact(conn, length)


def _rsa_algorithm(flags: int) -> str | None:
    """The rsa-sha2 algorithm the flags ask for; OpenSSH's agent checks SHA2_256 first too."""
    if flags & SSH_AGENT_RSA_SHA2_256:
        return "rsa-sha2-256"
    if flags & SSH_AGENT_RSA_SHA2_512:
        return "rsa-sha2-512"
    return None


def _peer_is_allowed(conn: socket.socket) -> bool:
    """Like OpenSSH's ssh-agent: only our own uid or root may talk to us (Linux SO_PEERCRED)."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return True  # the socket's 0600 mode inside a 0700 directory still applies
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, peercred, _UCRED.size)
        _, uid, _ = _UCRED.unpack(raw)
    except (OSError, struct.error):
        return False
    return uid in (os.geteuid(), 0)


class MemoryAgent:
    """An ssh-agent serving keys held in this process's memory, on a private Unix socket."""

    socket_path: str

    def __init__(self, keys: Sequence[paramiko.PKey], comment: str = "deployer") -> None:
        self._keys: dict[bytes, paramiko.PKey] = {}
        for key in keys:
            self._keys.setdefault(key.asbytes(), key)
        self._comment = comment.encode()
        self.socket_path = ""
        self._dir = ""
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def __enter__(self) -> MemoryAgent:
        """Create the private directory and socket and start serving."""
        directory = ""
        try:
            directory = tempfile.mkdtemp(prefix="deployer-agent-")
            os.chmod(directory, 0o700)
            path = os.path.join(directory, SOCKET_NAME)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(path)
                os.chmod(path, 0o600)
                listener.listen(16)
                listener.settimeout(_POLL_SECONDS)
            except BaseException:
                listener.close()
                raise
        except OSError as exc:
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
            where = directory or tempfile.gettempdir()
            raise ConfigError(
                f"cannot create the agent socket in {where}: {exc.strerror or exc}"
                " — set TMPDIR to a short, writable directory"
            ) from exc
        self._dir = directory
        self.socket_path = path
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="agent", daemon=True)
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving, drop open connections and remove the socket directory."""
        self._stopping.set()
        if self._listener is not None and self.socket_path:
            # a connection wakes accept() now; it would otherwise notice at its next poll
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as poke:
                poke.connect(self.socket_path)
        if self._acceptor is not None:
            self._acceptor.join(timeout=5 * _POLL_SECONDS + 1)
        # Close only once the accept loop is gone, so it never touches a reused descriptor.
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._clients:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue  # e.g. ECONNABORTED or EMFILE: keep serving the others
            conn.settimeout(None)
            if not _peer_is_allowed(conn):
                conn.close()
                continue
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._clients.add(conn)
            threading.Thread(
                target=self._serve_client, args=(conn,), name="agent-client", daemon=True
            ).start()

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            while True:
                request = _read_frame(conn)
                if request is None:
                    return
                reply = self._answer(request)
                conn.sendall(_string(reply))
        except (OSError, _FrameError):
            return
        finally:
            with self._lock:
                self._clients.discard(conn)
            conn.close()

    def _answer(self, request: bytes) -> bytes:
        """The reply body for one request body; never raises."""
        kind = request[0]
        if kind == SSH_AGENTC_REQUEST_IDENTITIES:
            return self._identities()
        if kind == SSH_AGENTC_SIGN_REQUEST:
            return self._sign(request)
        return _FAILURE  # read-only: no add, remove, lock or extensions

    def _identities(self) -> bytes:
        entries = b"".join(_string(blob) + _string(self._comment) for blob in self._keys)
        return bytes([SSH_AGENT_IDENTITIES_ANSWER]) + _UINT32.pack(len(self._keys)) + entries

    def _sign(self, request: bytes) -> bytes:
        try:
            blob, offset = _take_string(request, 1)
            data, offset = _take_string(request, offset)
            (flags,) = _UINT32.unpack_from(request, offset)
        except (ValueError, struct.error):
            return _FAILURE
        key = self._keys.get(blob)
        if key is None:
            return _FAILURE
        algorithm = None
        if isinstance(key, paramiko.RSAKey):
            algorithm = _rsa_algorithm(flags)
            if algorithm is None:
                return _FAILURE  # plain ssh-rsa means SHA-1, which paramiko 5 no longer signs
        try:
            signature = key.sign_ssh_data(data, algorithm=algorithm)
            raw = signature.asbytes() if isinstance(signature, paramiko.Message) else signature
        except Exception:  # a key that cannot sign must not end this client's session
            return _FAILURE
        return bytes([SSH_AGENT_SIGN_RESPONSE]) + _string(bytes(raw))


def run_with_agent(
    keys: Sequence[paramiko.PKey], argv: Sequence[str], env: Mapping[str, str] | None = None
) -> int:
    """Run argv with SSH_AUTH_SOCK set to a MemoryAgent holding keys; return its exit status.

    The command gets env (default: ours) without its secrets: the key it needs is in the agent.
    """
    if not argv:
        raise ConfigError("no command given — put the command to run after --")
    child_env = child_environment(os.environ if env is None else env)
    child_env.pop("SSH_AGENT_PID", None)  # that agent is not the one SSH_AUTH_SOCK names
    with MemoryAgent(keys) as agent:
        child_env["SSH_AUTH_SOCK"] = agent.socket_path
        child: subprocess.Popen[bytes] | None = None
        pending: list[int] = []

        def forward(signum: int, _frame: FrameType | None) -> None:
            if child is None:
                pending.append(signum)  # arrived while the child was being started
            else:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

        # Handlers can only be set from the main thread; a signal we were started ignoring (a
        # background job's SIGINT) must stay ignored in the child, so it is left alone.
        main = threading.current_thread() is threading.main_thread()
        forwarded = [
            sig
            for sig in (signal.SIGTERM, signal.SIGINT)
            if main and signal.getsignal(sig) != signal.SIG_IGN
        ]
        previous = {sig: signal.signal(sig, forward) for sig in forwarded}
        try:
            try:
                child = subprocess.Popen(list(argv), env=child_env)
            except FileNotFoundError as exc:
                raise ConfigError(f"command not found: {argv[0]}") from exc
            except OSError as exc:
                raise ConfigError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
            for signum in pending:
                forward(signum, None)
            status = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if child is not None and child.poll() is None:
                child.kill()  # only reached if waiting itself failed
                child.wait()
    return 128 - status if status < 0 else status
