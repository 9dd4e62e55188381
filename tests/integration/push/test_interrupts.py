"""A cancelled CI job (SIGTERM) at random moments of a push over a shell account.

Whatever the moment — probe, lock, upload, before hook, switch, after hook, healthcheck, record,
prune — the push ends with the live release intact (the old one, or the new one when it finished
or was confirmed), and the lock released or named in the line before `deployer: interrupted`.
Without hooks, one command builds, switches, records and unlocks: a signal while it runs ends
switched back, or (exit 14) with the one line that names the live release and the rollback.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Topology, run_cli
from tests.integration.helpers import finished, live, make_app

ATTEMPTS = 8


@pytest.mark.parametrize("hooks", [True, False], ids=["hooks", "one-command"])
def test_sigterm_at_random_moments_leaves_a_live_release_and_no_silent_lock(
    topology: Topology, tmp_path: Path, hooks: bool
) -> None:
    path = topology.deploy_path(f"sigterm-random-{hooks}")
    big = make_app(tmp_path, "big")
    for index in range(1500):
        (big / "public" / f"page{index}.html").write_text(f"page {index}\n" * 200)
    options = ["--before", "sleep 0.3", "--after", "sleep 0.3", "--healthcheck", "sleep 0.2"]
    first = run_cli(["push", str(make_app(tmp_path, "one")), *topology.route, "--path", str(path)],
                    env=topology.env)  # fmt: skip
    assert first.status == 0, first.output
    good = {live(path)}
    rng = random.Random(16)
    for attempt in range(ATTEMPTS):
        process = subprocess.Popen(
            [sys.executable, "-m", "deployer", "push", str(big), *topology.route, "--path", str(path),
             *(options if hooks else [])],
            env={**os.environ, **topology.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        seen = ""
        deadline = time.monotonic() + 60
        while "deploying" not in seen and process.poll() is None and time.monotonic() < deadline:
            seen += process.stdout.readline()
        time.sleep(rng.random() * (2.5 if hooks else 1.5))  # anywhere from the probe to the prune
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"attempt {attempt}: the push hung after SIGTERM") from None
        output = seen + rest
        assert "Traceback" not in output, output
        assert (path / "current").resolve().is_dir(), output
        if finished(process.returncode, output):
            good = {live(path)}  # it finished before the signal: a complete, recorded deploy
            assert not (path / ".deployer" / "lock").exists(), output
            continue
        lines = [line for line in output.splitlines() if line.strip()]
        lock = path / ".deployer" / "lock"
        if process.returncode == 14 and not hooks:  # stopped while its one command ran
            said = lines[-1]
            assert "deployer rollback" in said, output
            assert "is live but unconfirmed" in said or "current may point at release" in said, (
                output
            )
            if lock.exists():
                unlocked = run_cli(
                    ["unlock", *topology.route, "--path", str(path)], env=topology.env
                )
                assert unlocked.status == 0, unlocked.output
            good = {live(path)}
            continue
        assert process.returncode == 130, (attempt, output)
        *_, said, last = lines
        if "is live and recorded" in said:  # the one command had finished: nothing to undo
            good = {live(path)}
        assert live(path) in good, (attempt, output)
        assert last == "deployer: interrupted", output
        assert not lock.exists() or "deployer unlock" in said or "deployer rollback" in said, (
            attempt,
            output,
        )
        if lock.exists():
            unlocked = run_cli(["unlock", *topology.route, "--path", str(path)], env=topology.env)
            assert unlocked.status == 0, unlocked.output
