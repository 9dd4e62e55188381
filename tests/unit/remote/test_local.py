"""The local executor (the webhook receiver's): a command past its limit goes with its children."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deployer.errors import CommandTimeout
from deployer.remote.local import LocalExecutor
from tests.integration.helpers import gone


def test_a_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # a child in the background, one that ignores TERM, and the script itself
    script = (
        f"sleep 120 & echo $! >> {pids}; (trap '' TERM; sleep 120) & echo $! >> {pids};"
        f" echo $$ >> {pids}; sleep 120"
    )
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 1 s"):
        LocalExecutor("t").run(script, timeout=1)
    assert time.monotonic() - started < 15
    for pid in map(int, pids.read_text().split()):
        assert gone(pid), f"process {pid} outlived the timeout"
