"""A recorded connection to the sandbox's target sshd (see tests.integration.wire)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import paramiko
import pytest

from tests.integration.wire import Recording, stall_free_wire


@pytest.fixture
def wire(topology: Any) -> Iterator[tuple[Recording, paramiko.Transport]]:
    """A recorded TCP connection to the target sshd and its (not yet started) transport."""
    recording, transport = stall_free_wire(topology.box.target.port)
    try:
        yield recording, transport
    finally:
        transport.close()
