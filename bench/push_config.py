"""What the push benchmark (bench/run.py) measures, and where it keeps its files.

The method names (they label the table rows and the JSON results), the link profiles
(``--profiles``, parsed by ``parse_profile``) and the corpus sets of the full and ``--quick`` runs.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from bench.corpora import CorpusSpec

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"  # corpora (kept) and run-<pid>/ work directories (removed)
RELAY_SCRIPT = BENCH / "relay.py"  # the link emulator, run as its own process

MiB = 1 << 20

# ---------------------------------------------------------------------------- methods

DEPLOYER = "deployer push"
DEPLOYER_LINKED = "deployer push --link-unchanged"
# deployer with one SSH client forced, to compare with the default on request:
# --methods "deployer push,deployer push --ssh-client paramiko,..."
DEPLOYER_OPENSSH = "deployer push --ssh-client openssh"
DEPLOYER_PARAMIKO = "deployer push --ssh-client paramiko"
TAR = "tar | ssh"
TARGZ = "tar | gzip -1 | ssh"
TARZSTD = "tar | zstd -3 -T0 | ssh"  # the honest best hand-made pipe
RSYNC = "rsync -az"
SCP = "scp -r"
PLAIN = (TAR, TARGZ, TARZSTD, RSYNC)  # the goal's "best plain practice"
METHODS = (DEPLOYER, TAR, TARGZ, TARZSTD, RSYNC, SCP)
EXTRA_METHODS = (DEPLOYER_OPENSSH, DEPLOYER_PARAMIKO)  # measured only when --methods names them
# full deploys must beat these by a margin (issue 18): at most 0.85x their time
MARGIN_METHODS = (TARGZ, RSYNC)
MARGIN = 0.85

# the adaptation check: zstd at fixed levels next to the adaptive default, on the source tree
ADAPT_LEVELS = (1, 3, 6, 9)


def fixed_zstd(level: int) -> str:
    """The method name of a push with zstd at one fixed level."""
    return f"{DEPLOYER} --compress zstd --compress-level {level}"


def deployer_flags(method: str) -> tuple[str, ...]:
    """The flags a deployer method adds to `deployer push` ("deployer push --x y" -> --x y)."""
    return tuple(method.removeprefix(DEPLOYER).split())


# redeploy scenarios: the next release with 1 % of the files changed, and either the other files'
# mtimes kept (hard links: what a working tree redeployed looks like) or every mtime new (a fresh
# checkout and build: what a CI job sees)
REDEPLOY = "redeploy"
REBUILD = "rebuild"

# ---------------------------------------------------------------------------- link profiles


@dataclass(frozen=True)
class Profile:
    """A WAN link between the CI runner and the jump host."""

    key: str
    rtt_ms: float
    rate_mbit: float

    @property
    def label(self) -> str:
        """'40 ms RTT / 100 Mbit/s': how tables name the profile."""
        rate = (
            f"{self.rate_mbit / 1000:g} Gbit/s"
            if self.rate_mbit >= 1000
            else f"{self.rate_mbit:g} Mbit/s"
        )
        return f"{self.rtt_ms:g} ms RTT / {rate}"

    @property
    def rate_bytes(self) -> float:
        """The nominal rate in bytes per second."""
        return self.rate_mbit * 1e6 / 8


def parse_profile(text: str) -> Profile:
    """'40ms-100m' (Mbit/s) or '10ms-1g' (Gbit/s)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)ms-(\d+(?:\.\d+)?)([mg])", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"profile {text!r}: use RTTms-RATEm or RTTms-RATEg, like 40ms-100m"
        )
    rate = float(match[2]) * (1000 if match[3] == "g" else 1)
    return Profile(text.strip().lower(), float(match[1]), rate)


FULL_PROFILES = "10ms-1g,40ms-100m,100ms-20m"
QUICK_PROFILES = "10ms-1g,40ms-100m"

# ---------------------------------------------------------------------------- corpora

FULL_CORPORA = {
    "small": CorpusSpec("small", "random-files", files=3000, total=66 * 10**6),
    "src": CorpusSpec("src", "stdlib"),
    "big": CorpusSpec("big", "one-file", files=1, total=200 * MiB),
    "huge": CorpusSpec("huge", "one-file", files=1, total=1024 * MiB),
}
TINY = CorpusSpec("tiny", "one-file", files=1, total=1000)  # latency only: what round trips cost
QUICK_CORPORA = {
    "small": CorpusSpec("small", "random-files", files=500, total=8 * 10**6),
    "src": CorpusSpec("src", "stdlib", files=400),
    "big": CorpusSpec("big", "one-file", files=1, total=32 * MiB),
}
