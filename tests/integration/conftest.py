"""Fixtures for integration tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import make_app


@pytest.fixture
def deployed(topology, deployer: Callable[..., Any], tmp_path: Path) -> Path:
    """A deploy path with one good release live."""
    target = topology.deploy_path(f"live-{tmp_path.name}")
    run = deployer(["push", str(make_app(tmp_path, "good")), *topology.route, "--path", str(target)],
                   env=topology.env)  # fmt: skip
    assert run.status == 0, run.output
    return target
