"""Interrupts wait for the packet being written or read (deployer.interrupts)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from deployer import interrupts


@pytest.fixture
def handler() -> Iterator[None]:
    previous = signal.signal(signal.SIGUSR1, interrupts.interrupt)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_an_interrupt_inside_whole_is_raised_when_the_block_ends(handler: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.whole():
        os.kill(os.getpid(), signal.SIGUSR1)
        done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]
    with interrupts.whole():  # nothing pending any more
        pass


def test_an_interrupt_outside_is_raised_at_once(handler: None) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):  # the handler runs between bytecodes, within these
            pass
        pytest.fail("the interrupt was not raised")
