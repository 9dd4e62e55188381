"""Host keys on the OpenSSH path are judged by deployer's own rules, before ssh logs in anywhere.

Every master deployer starts has a ``KnownHostsCommand``: a few lines of ``/bin/sh`` that hand
the key its hop presented to this broker through a pair of FIFOs in deployer's private directory
and print a known_hosts line for it only if the broker says the key is trusted; ssh's strict
checking refuses everything else. The broker runs the hop's check (``HostKeyPolicy.check``,
exactly as on the paramiko path: the same verdicts, messages and --accept-new-host-keys
notices) and keeps what it concluded for the caller: the refusal to report, or the key accepted.
A shell and two FIFOs, not a helper program: ssh runs the command once per hop while the
deploy waits, and a Python interpreter would add tens of milliseconds to every login.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deployer.errors import DeployerError, InternalError
from deployer.ssh.openssh.argv import config_word

MAX_REQUEST = 64 * 1024
TRUSTED = b"trusted\n"
REFUSED = b"refused\n"
JOIN_WAIT = 2.0  # seconds close() waits for each hop's thread once it is woken

# $0: the FIFOs' common name; $1, $2, $3: ssh's %t (key type), %K (base64 key), %H (the name
# ssh looks the key up under). Exits 0 whatever happens: ssh treats a failing command as fatal,
# while printing nothing refuses the key, which is what deployer wants then.
_ASK = (
    'printf "%%s %%s\\n" "$1" "$2" >"$0.q" || exit 0; read -r v <"$0.a" || exit 0;'
    ' [ "$v" = trusted ] && printf "%%s %%s %%s\\n" "$3" "$1" "$2"; exit 0'
)

Check = Callable[[str, bytes], None]
"""Raises a DeployerError (HostKeyError) unless (key type, key blob) is trusted for its hop."""


@dataclass
class HopVerdict:
    """What the check of one hop's host key concluded (nothing yet: neither field set)."""

    check: Check
    key: tuple[str, bytes] | None = None  # (key type, blob) once accepted
    error: DeployerError | None = None  # the refusal to report
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def checked(self) -> bool:
        """Whether ssh got as far as presenting this hop's key."""
        return self.key is not None or self.error is not None

    def answer(self, request: bytes) -> bytes:
        """TRUSTED or REFUSED for one request line: the key type and the base64 key."""
        try:
            key_type, key = request.decode().split()
            blob = base64.b64decode(key, validate=True)
        except (UnicodeDecodeError, ValueError, binascii.Error):
            return REFUSED
        if "NONE" in (key_type, key):
            return REFUSED  # asked without a key (ssh ordering algorithms): nothing to vouch for
        with self.lock:
            if self.key is not None:  # asked again: only the key already accepted
                return TRUSTED if self.key == (key_type, blob) else REFUSED
            if self.error is not None:
                return REFUSED
            try:
                self.check(key_type, blob)
            except DeployerError as exc:
                self.error = exc
                return REFUSED
            except Exception as exc:  # a bug must refuse the key, and be reported as one
                self.error = InternalError(
                    f"internal error checking a host key ({type(exc).__name__}: {exc})"
                    " — rerun with --traceback and report it"
                )
                return REFUSED
            self.key = (key_type, blob)
            return TRUSTED


class _Hop:
    """One hop's FIFOs and the thread that answers on them."""

    def __init__(self, base: Path, verdict: HopVerdict) -> None:
        self.base = base
        self.verdict = verdict
        self.stopping = False
        for suffix in (".q", ".a"):
            os.mkfifo(f"{base}{suffix}", 0o600)
        self.thread = threading.Thread(target=self._serve, name="deployer-hostkey", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            with open(f"{self.base}.q", "rb") as asked:  # waits for ssh's command (or close())
                request = asked.read(MAX_REQUEST)
            if self.stopping:
                return
            reply = self.verdict.answer(request)
            if self.stopping:  # closed meanwhile: no master is to log in any more
                reply = REFUSED
            with contextlib.suppress(OSError), open(f"{self.base}.a", "wb") as said:
                said.write(reply)

    def stop(self) -> None:
        """Wake whoever waits on either FIFO (this thread, or a helper whose ssh was stopped)."""
        self.stopping = True
        for _ in range(3):  # it may move from one FIFO to the other meanwhile
            for suffix in (".q", ".a"):
                for flags in (os.O_WRONLY, os.O_RDONLY):
                    try:
                        os.close(os.open(f"{self.base}{suffix}", flags | os.O_NONBLOCK))
                    except OSError as exc:
                        if exc.errno not in (errno.ENXIO, errno.ENOENT):  # ENXIO: no reader
                            raise
            self.thread.join(timeout=JOIN_WAIT / 3)
            if not self.thread.is_alive():
                break
        for suffix in (".q", ".a"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.base}{suffix}")


class HostKeyBroker:
    """Answers ssh's KnownHostsCommand with deployer's verdict on the key of each hop it expects."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._hops: dict[str, _Hop] = {}
        self._lock = threading.Lock()

    def expect(self, hop: str, check: Check) -> str:
        """Judge keys presented for `hop` with `check`; the KnownHostsCommand that asks about them."""
        base = self._directory / f"hostkey-{hop}"
        with self._lock:
            self._hops[hop] = _Hop(base, HopVerdict(check))
        return f"/bin/sh -c '{_ASK}' {config_word(str(base))} %t %K %H"

    def verdict(self, hop: str) -> HopVerdict:
        """What the check of `hop` concluded so far."""
        with self._lock:
            return self._hops[hop].verdict

    def close(self) -> None:
        """Stop answering and remove the FIFOs."""
        with self._lock:
            hops, self._hops = list(self._hops.values()), {}
        for hop in hops:
            hop.stop()
