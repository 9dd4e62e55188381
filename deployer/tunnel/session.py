"""One supervised ssh and what its output has told the keeper so far.

The keeper runs ``ssh -v``: its stderr says when it authenticated and which forwards the jump
host granted or refused; with --reclaim, the forced command on the jump host says on stdout
that it holds the session and under which sshd pid it recorded it.
"""

from __future__ import annotations

import re
import subprocess
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deployer.ssh.authorized_keys import (
    HOLDING_LINE,
    RECORDED_PREFIX,
)
from deployer.tunnel.policy import (
    FORWARD_REFUSED,
)

if TYPE_CHECKING:
    pass


@dataclass
class Session:
    """One running ssh and what its output told us so far."""

    gen: int
    process: subprocess.Popen[bytes]
    hold: bool
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    granted: set[int] = field(default_factory=set)
    all_granted: bool = False
    authenticated: bool = False
    holding: bool = False
    recorded: tuple[int, int] | None = None  # our sshd session on the jump host (pid, start time)
    refused: bool = False
    exit_code: int | None = None

    def take(self, kind: str, payload: Any) -> None:
        """Fold one event of this ssh into what is known: an exit, or a line of its output."""
        if kind == "exit":
            self.exit_code = int(payload)
        elif kind == "stderr":
            line = str(payload)
            self.lines.append(line)
            if line.startswith("Authenticated to "):
                self.authenticated = True
            elif match := _SUCCESS.search(line):
                self.granted.add(int(match.group(1)))
            elif _ALL_GRANTED.search(line):
                self.all_granted = True
            elif FORWARD_REFUSED.search(line):
                self.refused = True
        elif kind == "stdout":  # the forced command's lines (hold mode only)
            line = str(payload).strip()
            if line == HOLDING_LINE:
                self.holding = True
            elif line.startswith(RECORDED_PREFIX):
                fields = line.removeprefix(RECORDED_PREFIX).split()
                if len(fields) == 2 and all(f.isdigit() for f in fields):
                    self.recorded = (int(fields[0]), int(fields[1]))

    @property
    def exited(self) -> bool:
        """ssh has exited and its output was read to the end."""
        return self.exit_code is not None


_SUCCESS = re.compile(r"remote forward success for: listen (?:.*:)?(\d+),")


_ALL_GRANTED = re.compile(
    r"forwarding_success: all expected forwarding replies received|All remote forwarding requests processed"
)


Event = tuple[str, int, Any]
