"""Reclaim: free the jump host's port from our own stale session, never from a live tunnel.

After a dead flow the jump host keeps the old session (and its listener) until sshd reaps it,
and while clients keep knocking it may never do so. With --reclaim, the tunnel key's forced
command on the jump host (``deployer authorized-keys --reclaim``) records each session that holds
the ports and kills a recorded one on request. This module decides when to ask and what to ask.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from deployer.ssh.authorized_keys import NOTHING_LINE, RECLAIMED_PREFIX
from deployer.ssh.forwards import Forward
from deployer.tunnel.check import Expectation
from deployer.tunnel.processes import Helpers
from deployer.tunnel.settings import TunnelSettings
from deployer.tunnel.ssh_argv import RuntimePaths, guard_argv, reclaim_argv

RECLAIM_COOLDOWN = 10.0  # seconds between two reclaims: a reclaimed port needs a moment
SSH_ERROR = 255  # ssh's own failures (connect, auth, host key); a remote command's status otherwise

Holder = tuple[int, int]  # an sshd session on the jump host: (pid, start time)
Call = Callable[[Callable[[], Any], float], Any]  # run a function while the keeper handles events


class Reclaimer:
    """What the keeper knows about reclaiming, and the reclaim itself."""

    def __init__(
        self, settings: TunnelSettings, helpers: Helpers, call: Call, log: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.available = settings.reclaim  # off for good once the jump host says it is not set up
        self.own_holder: Holder | None = None  # our last session that held the ports
        self._last = 0.0
        self._helpers = helpers
        self._call = call
        self._log = log

    def ready(self) -> bool:
        """Reclaim is on and did not just run."""
        return self.available and time.monotonic() - self._last > RECLAIM_COOLDOWN

    def reclaim(
        self,
        paths: RuntimePaths,
        key_type: str,
        *,
        refused: bool,
        expectation: Callable[[int, Forward], Expectation | None],
    ) -> bool:
        """Kill our own stale session on the jump host; True: connect again at once.

        If our last session recorded itself (pid, start time) the jump host kills exactly that
        one: after a refused -R, and right after a dead flow, before the next -R runs into it.
        Otherwise (e.g. after a keeper restart) the recorded holder of a refused port is killed
        only if a connection to the port gets no answer from the target: a live holder is left
        alone. When the jump host cannot be asked (unreachable), reclaim stays on for next time.
        """
        self._last = time.monotonic()
        if self.own_holder is not None:
            holder = self.own_holder
            asked, output = self._ask(paths, key_type, holder)
            if not asked:
                return False
            self.own_holder = None
            if RECLAIMED_PREFIX in output:
                self._log(
                    f"tunnel: reclaimed the port from our stale session (sshd pid {holder[0]} on the jump host)"
                )
                return True
            if NOTHING_LINE not in output:
                return self._unavailable(output)
        if not refused:
            return True  # after a dead flow: its session is gone already, the port is free
        if not self._holder_silent(paths, key_type, expectation):
            return False
        asked, output = self._ask(paths, key_type, None)
        if not asked:
            return False
        if RECLAIMED_PREFIX in output:
            pid = output.split(RECLAIMED_PREFIX, 1)[1].split()[:1]
            self._log(
                f"tunnel: reclaimed the port from a stale session (sshd pid {''.join(pid)} on the jump host)"
            )
            return True
        if NOTHING_LINE in output:
            self._log(
                "tunnel: no recorded session of ours holds the port — it is held by another user or"
                " program, or by a session from before the keeper recorded it"
            )
            return False
        return self._unavailable(output)

    def _ask(self, paths: RuntimePaths, key_type: str, holder: Holder | None) -> tuple[bool, str]:
        """Run the forced command's reclaim; (whether the jump host answered, what it said)."""
        argv = reclaim_argv(self.settings, paths, key_type, holder)
        try:
            code, output = self._call(
                lambda: self._helpers.output(argv), self.settings.connect_timeout + 15
            )
        except TimeoutError:
            code, output = None, "timed out"
        if code is None or code == SSH_ERROR:
            said = output.strip().splitlines()[-1:] or ["no answer"]
            self._log(f"tunnel: could not ask the jump host to reclaim the port: {said[0][:120]}")
            return False, output
        return True, str(output)

    def _holder_silent(
        self,
        paths: RuntimePaths,
        key_type: str,
        expectation: Callable[[int, Forward], Expectation | None],
    ) -> bool:
        """Guard for an unknown holder: False if the port answers like our target (a live tunnel)."""
        for index, forward in enumerate(self.settings.forwards):
            expect = expectation(index, forward)
            if expect is None or expect.banner is None:
                continue  # nothing to compare with: cannot tell a live holder from a stale one
            argv = guard_argv(self.settings, paths, key_type, forward)
            try:
                answer = self._call(
                    lambda argv=argv: self._helpers.first_line(argv),  # type: ignore[misc]
                    self.settings.connect_timeout + 10,
                )
            except TimeoutError:
                answer = None
            if answer == expect.banner:
                self._log(
                    f"tunnel: {forward.permitlisten()} is held by a tunnel that works (another keeper"
                    " with this key?) — not reclaiming it"
                )
                return False
        return True

    def _unavailable(self, output: str) -> bool:
        self.available = False
        said = output.strip().splitlines()[-1:] or ["nothing"]
        self._log(
            "tunnel: reclaim is not set up on the jump host (it said: "
            f"{said[0][:120]}) — install the tunnel key line from `deployer authorized-keys --reclaim`;"
            " continuing without reclaim"
        )
        return False
