"""Everything the tunnel keeper needs besides credentials and host keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deployer.errors import (
    ConfigError,
)
from deployer.tunnel.policy import (
    DEFAULT_MAX_BACKOFF,
)

if TYPE_CHECKING:
    from deployer.ssh.forwards import Forward
    from deployer.ssh.proxy import ProxySpec
    from deployer.ssh.route import Endpoint

    pass


DEFAULT_ALIVE_INTERVAL = 2  # ServerAliveInterval: a dead flow is found after 3 silent intervals


DEFAULT_ALIVE_COUNT = 2


DEFAULT_CHECK_INTERVAL = 30.0  # end-to-end check of a running tunnel


@dataclass(frozen=True)
class TunnelSettings:
    """Everything the keeper needs besides credentials and host keys."""

    jump: Endpoint
    forwards: tuple[Forward, ...]
    connect_timeout: float = 10.0
    alive_interval: int = DEFAULT_ALIVE_INTERVAL
    alive_count: int = DEFAULT_ALIVE_COUNT
    check_interval: float = DEFAULT_CHECK_INTERVAL
    check_timeout: float = 5.0
    max_backoff: float = DEFAULT_MAX_BACKOFF
    reclaim: bool = False
    status_file: Path | None = None
    healthz: tuple[str, int] | None = None
    ssh_binary: str = "ssh"
    proxy: ProxySpec | None = None  # how the jump host is reached, when not directly

    def __post_init__(self) -> None:
        if not self.forwards:
            raise ConfigError(
                "no forward given — pass -R PORT:HOST:HOSTPORT, e.g. -R 22022:localhost:22"
            )
        if self.alive_interval < 1 or self.alive_count < 1:
            raise ConfigError("--alive-interval and --alive-count must be at least 1")
        if self.max_backoff < 1:
            raise ConfigError("--max-backoff must be at least 1 second")
        if self.check_interval < 0 or self.check_timeout <= 0:
            raise ConfigError("--check-interval must be >= 0 (0: off) and --check-timeout > 0")

    @property
    def dead_after(self) -> int:
        """Seconds of silence after which ssh gives a connection up (ServerAlive)."""
        return self.alive_interval * (self.alive_count + 1)
