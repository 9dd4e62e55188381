"""Fixtures for the webhook tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.webhook_kit import https_files, make_tls


@pytest.fixture
def site(tmp_path: Path):
    """An HTTPS server (own CA) serving tmp_path/www; yields (www folder, base URL, CA file)."""
    www = tmp_path / "www"
    www.mkdir()
    tls = make_tls(tmp_path / "tls")
    with https_files(www, tls) as url:
        yield www, url, tls.ca
