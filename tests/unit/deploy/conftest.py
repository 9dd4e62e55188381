"""Fixtures shared by the deploy tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.artifact.scan import open_artifact
from deployer.deploy.payload import Payload, prepare_payload


@pytest.fixture
def payload(tmp_path: Path) -> Payload:
    """A one-file artifact (dist/index.html: "hi"), hashing in the background."""
    app = tmp_path / "dist"
    app.mkdir()
    (app / "index.html").write_text("hi")
    return prepare_payload(open_artifact(app))
