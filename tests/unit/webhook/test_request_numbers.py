"""Deploy requests: numbers that are no time limits (NaN, infinity, 1e999) are refused by name."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest

from deployer.deploy.outcome import Provenance
from deployer.deploy.settings import PushSettings
from deployer.webhook.request import DeployRequest, parse_request
from deployer.webhook.signing import Rejected
from deployer.webhook.sources import HttpsSource


def body(**hooks: object) -> bytes:
    request = DeployRequest("/srv/app", HttpsSource("https://example.com/a.tar.gz"), "a" * 64,
                            PushSettings(path="/srv/app"), Provenance("alice"))  # fmt: skip
    document = request.to_document()
    document["hooks"] = {**document["hooks"], **hooks}
    return json.dumps(document).encode()  # Python writes NaN and Infinity, and reads them back


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("timeout", float("nan"), "nan"), ("timeout", float("-inf"), "-inf"),
     ("timeout", 10**400, "inf"), ("healthcheck_interval", float("inf"), "inf")],
)  # fmt: skip
def test_non_finite_numbers_are_refused(field: str, value: object, shown: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse_request(body(**{field: value}), ("/srv/app",))
    assert caught.value.status == HTTPStatus.BAD_REQUEST
    assert caught.value.message == f"'hooks.{field}' must be a finite number, not {shown}"


def test_finite_numbers_still_pass() -> None:
    parsed = parse_request(body(timeout=12.5, healthcheck_interval=0), ("/srv/app",))
    assert parsed.settings.hooks.timeout == 12.5 and parsed.settings.hooks.healthcheck_interval == 0


@pytest.mark.parametrize("field", ["timeout", "healthcheck_interval"])
def test_hook_settings_refuse_them_wherever_they_come_from(field: str) -> None:
    from deployer.deploy.hooks import HookSettings
    from deployer.errors import ConfigError

    for value in (float("nan"), float("inf")):
        with pytest.raises(
            ConfigError, match=f"--{field.replace('_', '-').replace('timeout', 'hook-timeout')}"
        ):
            HookSettings(**{field: value})  # type: ignore[arg-type]
