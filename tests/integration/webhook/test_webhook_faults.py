"""The receiver keeps the live site sacred too: a hook that hangs after the switch on a machine
without coreutils timeout, and requests carrying numbers that are no numbers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Provenance
from deployer.deploy.settings import PushSettings
from deployer.errors import ExitCode
from deployer.webhook.request import DeployRequest
from deployer.webhook.sources import FetchSettings, HttpsSource
from tests.integration.helpers import gone, live, releases, tools_without
from tests.integration.webhook_kit import request, running_receiver, tarball, wait_final

pytestmark = pytest.mark.integration


def document(path: Path, url: str, artifact: Path, **hooks: object) -> dict[str, object]:
    settings = PushSettings(path=str(path), hooks=HookSettings(**hooks))  # type: ignore[arg-type]
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    return DeployRequest(
        str(path), HttpsSource(url), digest, settings, Provenance("ci")
    ).to_document()


def post(receiver, body: dict[str, object] | bytes) -> tuple[int, dict[str, object]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(receiver, "POST", "/deploys", raw)


def test_hung_after_hook_without_timeout_switches_back_and_stops_its_group(
    site, tmp_path: Path, monkeypatch
) -> None:
    www, url, ca = site
    target = tmp_path / "srv" / "app"
    tools = tools_without("timeout", tmp_path / "tools")  # this machine's, but no timeout
    monkeypatch.setenv("PATH", str(tools))
    child = tmp_path / "child.pid"
    hook = f"if grep -q v2 VERSION; then sleep 120 & echo $! > {child}; exec sleep 120; fi"
    v1 = tarball(www, "v1.tar.gz", {"VERSION": "v1\n"})
    v2 = tarball(www, "v2.tar.gz", {"VERSION": "v2\n"})
    hooks = {str(target): HookSettings(after=(hook,), timeout=1)}  # the receiver's own hooks
    with running_receiver((str(target),), FetchSettings(ca_bundle=ca), hooks=hooks) as receiver:
        status, answer = post(receiver, document(target, f"{url}/v1.tar.gz", v1))
        assert status == 202 and wait_final(receiver, answer["id"])["state"] == "deployed"
        before = live(target)
        started = time.monotonic()
        status, answer = post(receiver, document(target, f"{url}/v2.tar.gz", v2))
        assert status == 202
        final = wait_final(receiver, str(answer["id"]), timeout=90)
    assert time.monotonic() - started < 60
    assert final["state"] == "failed" and final["exit_code"] == ExitCode.HOOK, final
    assert "did not finish within 1 s" in final["error"]
    assert f"switched back to {before}" in final["error"]
    assert live(target) == before and releases(target) == [before]
    assert (target / "current").resolve().is_dir()
    assert not (target / ".deployer" / "lock").exists()
    # the hook's own child went with it: the whole process group
    assert gone(int(child.read_text())), "the hook's child outlived the timeout"


@pytest.mark.parametrize(
    ("field", "raw"),
    [("timeout", "NaN"), ("timeout", "Infinity"), ("healthcheck_interval", "1e999"),
     ("timeout", "-Infinity")],
)  # fmt: skip
def test_a_request_with_a_non_finite_number_is_refused(
    site, tmp_path: Path, field: str, raw: str
) -> None:
    www, url, ca = site
    target = tmp_path / "srv" / "app"
    artifact = tarball(www, "app.tar.gz", {"VERSION": "v1\n"})
    body = json.dumps(document(target, f"{url}/app.tar.gz", artifact))
    # Python's JSON reads NaN, Infinity and 1e999; the receiver must refuse them
    body = body.replace(f'"{field}": ', f'"{field}": {raw}, "was": ', 1)
    with running_receiver((str(target),), FetchSettings(ca_bundle=ca)) as receiver:
        status, answer = post(receiver, body.encode())
    assert status == 400, answer
    assert f"'hooks.{field}' must be a finite number" in str(answer["error"])
    assert not target.exists()
