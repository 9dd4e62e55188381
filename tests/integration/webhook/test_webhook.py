"""The webhook receiver for real: HTTP(S) on loopback, an HTTPS artifact server with its own CA,
a recorded GitLab API, and `deployer push --mode webhook|auto` as a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import responses
from responses import matchers

from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Provenance
from deployer.deploy.settings import PushSettings
from deployer.errors import ExitCode
from deployer.output import Reporter
from deployer.sandbox.servers import free_port
from deployer.webhook.client import WebhookClient
from deployer.webhook.poll import Poller, PollSettings
from deployer.webhook.receiver import Receiver, tls_context
from deployer.webhook.request import DeployRequest
from deployer.webhook.signing import sign_headers
from deployer.webhook.sources import FetchSettings, GitlabSource, HttpsSource
from tests.integration.helpers import live, releases
from tests.integration.webhook_kit import (
    SECRET,
    make_tls,
    request,
    running_receiver,
    tarball,
    wait_final,
)

pytestmark = pytest.mark.integration

APP = {"index.html": "<h1>v1</h1>\n", "VERSION": "v1\n"}
GITLAB = "https://gitlab.example.com"
TOKEN = "glpat-server-side-token"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "srv" / "app"


def document(path: Path, source: Any, sha256: str, **hooks: Any) -> bytes:
    settings = PushSettings(path=str(path), hooks=HookSettings(healthcheck_interval=0, **hooks))
    request_ = DeployRequest(str(path), source, sha256, settings, Provenance("ci", "abc123"))
    return json.dumps(request_.to_document()).encode()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def post(receiver, body: bytes) -> tuple[int, dict[str, Any]]:
    return request(receiver, "POST", "/deploys", body)


def test_signed_request_deploys_and_status_streams_the_log(site, target: Path) -> None:
    www, url, ca = site
    artifact = tarball(www, "app.tar.gz", APP)
    hooks = {str(target): HookSettings(before=("echo before in $PWD",))}  # the receiver's own
    with running_receiver((str(target),), FetchSettings(ca_bundle=ca), hooks=hooks) as receiver:
        status, answer = post(
            receiver, document(target, HttpsSource(f"{url}/app.tar.gz"), sha(artifact))
        )
        assert status == 202 and answer["status_url"] == f"/deploys/{answer['id']}"
        lines: list[str] = []
        final = WebhookClient(receiver.url, SECRET).follow(
            answer["id"], lines.append, time.monotonic() + 60
        )
    assert final["state"] == "deployed" and final["exit_code"] == 0, lines
    assert (target / "current" / "VERSION").read_text() == "v1\n"
    assert any("sha256 matches the signed request" in line for line in lines)
    assert any(
        line.endswith(f"before| before in {target}/releases/{live(target)}") for line in lines
    )
    assert final["outcome"]["release"] == live(target)


def test_tls_receiver_with_a_ca_bundle(site, target: Path, tmp_path: Path) -> None:
    www, url, ca = site
    artifact = tarball(www, "app.tar.gz", APP)
    tls = make_tls(tmp_path / "receiver-tls")
    context = tls_context(tls.cert, tls.key)
    with running_receiver((str(target),), FetchSettings(ca_bundle=ca), tls=context) as receiver:
        assert receiver.url.startswith("https://")
        client = WebhookClient(receiver.url, SECRET, tls.ca)
        answer = client.submit(
            json.loads(document(target, HttpsSource(f"{url}/app.tar.gz"), sha(artifact)))
        )
        final = client.follow(answer["id"], lambda line: None, time.monotonic() + 60)
    assert final["state"] == "deployed"


# ---------------------------------------------------------------------------- refusals


@contextmanager
def serving_live(site, target: Path, **settings: Any) -> Iterator[tuple[Receiver, str, Path]]:
    """A receiver (with settings) with one release already live at target."""
    www, url, ca = site
    first = tarball(www, "app.tar.gz", APP)
    with running_receiver(
        (str(target),), FetchSettings(ca_bundle=ca), max_body=4096, **settings
    ) as receiver:
        status, answer = post(
            receiver, document(target, HttpsSource(f"{url}/app.tar.gz"), sha(first))
        )
        assert status == 202
        assert wait_final(receiver, answer["id"])["state"] == "deployed"
        yield receiver, url, www


@pytest.fixture
def live_receiver(site, target: Path):
    """A receiver with one release already live at target; yields (receiver, site URL, www)."""
    with serving_live(site, target) as running:
        yield running


def assert_live_unchanged(target: Path, before: tuple[str, list[str]]) -> None:
    assert (live(target), releases(target)) == before
    assert not (target / ".deployer" / "lock").exists()


def test_forged_signature_is_refused(live_receiver, target: Path) -> None:
    receiver, url, _www = live_receiver
    before = (live(target), releases(target))
    body = document(target, HttpsSource(f"{url}/app.tar.gz"), "0" * 64)
    forged = sign_headers(
        b"not-the-secret-at-all-0123456789", "POST", "/deploys", body, time.time()
    )
    status, answer = request(receiver, "POST", "/deploys", body, headers=forged)
    assert status == 401 and "bad signature" in answer["error"]
    status, answer = request(receiver, "POST", "/deploys", body, headers={})
    assert status == 401 and "unsigned request" in answer["error"]
    assert_live_unchanged(target, before)


def test_replayed_request_is_refused(live_receiver, target: Path) -> None:
    receiver, url, www = live_receiver
    artifact = tarball(www, "v2.tar.gz", {"VERSION": "v2\n"})
    body = document(target, HttpsSource(f"{url}/v2.tar.gz"), sha(artifact))
    headers = sign_headers(SECRET, "POST", "/deploys", body, time.time())
    status, first = request(receiver, "POST", "/deploys", body, headers=headers)
    assert status == 202
    assert wait_final(receiver, first["id"])["state"] == "deployed"
    after_first = (live(target), releases(target))
    status, answer = request(receiver, "POST", "/deploys", body, headers=headers)
    assert status == 409 and "replayed" in answer["error"]
    assert_live_unchanged(target, after_first)


def test_stale_timestamp_is_refused(live_receiver, target: Path) -> None:
    receiver, url, www = live_receiver
    before = (live(target), releases(target))
    body = document(target, HttpsSource(f"{url}/app.tar.gz"), sha(www / "app.tar.gz"))
    stale = sign_headers(SECRET, "POST", "/deploys", body, time.time() - 3600)
    status, answer = request(receiver, "POST", "/deploys", body, headers=stale)
    assert status == 401, answer
    assert re.search(r"is 360[01] s old \(more than 300 s\)", answer["error"]), answer
    assert_live_unchanged(target, before)


def test_hooks_named_in_a_request_are_refused(live_receiver, target: Path, tmp_path: Path) -> None:
    """The webhook secret deploys; it does not choose commands to run on the server."""
    receiver, url, www = live_receiver
    before = (live(target), releases(target))
    known = set(receiver.deployments.records)  # the fixture's first deploy
    pwned = tmp_path / "pwned"
    artifact = tarball(www, "v2.tar.gz", {"VERSION": "v2\n"})
    for hooks in (
        {"before": (f"touch {pwned}",)},
        {"after": (f"touch {pwned}",)},
        {"healthcheck": f"touch {pwned}"},
    ):
        status, answer = post(
            receiver, document(target, HttpsSource(f"{url}/v2.tar.gz"), sha(artifact), **hooks)
        )
        assert status == 403, answer
        assert (
            "refuses hooks named in a request" in answer["error"]
            and "--allow-request-hooks" in answer["error"]
        )
    time.sleep(0.5)
    assert not pwned.exists() and set(receiver.deployments.records) == known  # nothing queued
    assert_live_unchanged(target, before)


def test_receiver_hooks_run_without_the_receivers_secrets(
    site, target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deployer serve` holds the webhook secret and a GitLab token; its hooks must not."""
    secrets = {"DEPLOYER_WEBHOOK_SECRET": SECRET.decode(), "DEPLOYER_GITLAB_TOKEN": TOKEN,
               "CREDENTIALS_DIRECTORY": str(tmp_path / "credentials")}  # fmt: skip
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    dump = tmp_path / "hook-env"
    hooks = {str(target): HookSettings(before=(f"env > {dump}",), after=(f"env >> {dump}",))}
    with serving_live(site, target, hooks=hooks):
        pass
    names = {line.partition("=")[0] for line in dump.read_text().splitlines()}
    assert "DEPLOYER_RELEASE_DIR" in names  # the hook's own environment is there
    assert names.isdisjoint(secrets), names & set(secrets)
    assert SECRET.decode() not in dump.read_text() and TOKEN not in dump.read_text()


def test_serve_takes_hooks_per_path_from_its_deployer_toml(deployer, site, tmp_path: Path) -> None:
    """A real `deployer serve`: the flags' hooks for every path, a [served] table for one of them."""
    www, url, ca = site
    app, api = tmp_path / "srv" / "app", tmp_path / "srv" / "api"
    marks = tmp_path / "marks"
    marks.mkdir()
    config = tmp_path / "receiver"
    config.mkdir()
    (config / "deployer.toml").write_text(
        f'paths = ["{app}", "{api}"]\nca_bundle = "{ca}"\nreplay_file = "{tmp_path / "replay"}"\n'
        f'before = ["touch {marks}/common-$(basename $DEPLOYER_PATH)"]\n'
        f'[served."{api}"]\nbefore = ["touch {marks}/api-only"]\nhook_timeout = 20\n'
    )
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "serve", "--listen", f"127.0.0.1:{port}"],
                            cwd=config, env={**os.environ, "DEPLOYER_WEBHOOK_SECRET": SECRET.decode()},
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = ""
        deadline = time.monotonic() + 20
        while (
            "receiving deploys" not in seen and time.monotonic() < deadline and proc.poll() is None
        ):
            seen += proc.stderr.readline()  # type: ignore[union-attr]
        assert "receiving deploys" in seen, seen
        client = WebhookClient(f"http://127.0.0.1:{port}", SECRET)
        artifact = tarball(www, "app.tar.gz", APP)
        for path in (app, api):
            answer = client.submit(
                json.loads(document(path, HttpsSource(f"{url}/app.tar.gz"), sha(artifact)))
            )
            final = client.follow(answer["id"], lambda line: None, time.monotonic() + 60)
            assert final["state"] == "deployed", final
        refused = deployer(["push", str(artifact), "--mode", "webhook", "--webhook-url", f"http://127.0.0.1:{port}",
                            "--artifact-url", f"{url}/app.tar.gz", "--path", str(app), "--before", "id"],
                           env=cli_env())  # fmt: skip
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert sorted(p.name for p in marks.iterdir()) == ["api-only", "common-app"]
    assert refused.status == ExitCode.WEBHOOK
    assert (
        "(HTTP 403)" in one_error_line(refused.stderr)
        and "refuses hooks named in a request" in refused.stderr
    )


def test_wrong_digest_fails_the_deploy_before_anything_changes(live_receiver, target: Path) -> None:
    receiver, url, www = live_receiver
    before = (live(target), releases(target))
    tarball(www, "v2.tar.gz", {"VERSION": "v2\n"})
    status, answer = post(receiver, document(target, HttpsSource(f"{url}/v2.tar.gz"), "ab" * 32))
    assert status == 202
    final = wait_final(receiver, answer["id"])
    assert final["state"] == "failed" and final["exit_code"] == ExitCode.ARTIFACT
    assert "but the signed request says " + "ab" * 32 in final["error"]
    assert_live_unchanged(target, before)


def test_oversized_body_is_refused(live_receiver, target: Path) -> None:
    receiver, _url, _www = live_receiver
    before = (live(target), releases(target))
    body = json.dumps({"padding": "x" * 10_000}).encode()
    status, answer = post(receiver, body)
    assert status == 413 and "the limit is 4096" in answer["error"]
    assert_live_unchanged(target, before)


def test_path_traversal_archive_is_refused_before_extraction(live_receiver, target: Path) -> None:
    receiver, url, www = live_receiver
    before = (live(target), releases(target))
    evil = tarball(www, "evil.tar.gz", {"VERSION": "evil\n"}, evil="../../escaped")
    status, answer = post(receiver, document(target, HttpsSource(f"{url}/evil.tar.gz"), sha(evil)))
    assert status == 202
    final = wait_final(receiver, answer["id"])
    assert final["state"] == "failed" and final["exit_code"] == ExitCode.ARTIFACT
    assert "../../escaped" in final["error"]
    assert not (target.parent / "escaped").exists() and not (target / "escaped").exists()
    assert_live_unchanged(target, before)


def test_malformed_requests_are_refused(live_receiver, target: Path) -> None:
    receiver, url, _www = live_receiver
    before = (live(target), releases(target))
    status, answer = post(receiver, b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    elsewhere = document(target.parent / "other", HttpsSource(f"{url}/app.tar.gz"), "0" * 64)
    status, answer = post(receiver, elsewhere)
    assert status == 403 and f"serves {target}" in answer["error"]
    status, answer = post(receiver, json.dumps({"path": str(target), "sha256": "0" * 64,
                                                "source": {"type": "https", "url": "http://x/a.tgz"}}).encode())  # fmt: skip
    assert status == 400 and "https://" in answer["error"]
    status, answer = request(receiver, "GET", "/deploys/" + "A" * 24)
    assert status == 404
    assert_live_unchanged(target, before)


def test_concurrent_requests_to_one_path_are_serialized(site, target: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    hook = f"echo start $DEPLOYER_RELEASE_ID >> {trace}; sleep 1; echo end $DEPLOYER_RELEASE_ID >> {trace}"
    with serving_live(site, target, hooks={str(target): HookSettings(before=(hook,))}) as running:
        receiver, url, www = running
        trace.unlink()  # the first deploy's before hook ran
        bodies = []
        for version in ("v2", "v3"):
            artifact = tarball(www, f"{version}.tar.gz", {"VERSION": f"{version}\n"})
            bodies.append(document(target, HttpsSource(f"{url}/{version}.tar.gz"), sha(artifact)))
        answers: list[tuple[int, dict[str, Any]]] = []
        threads = [
            threading.Thread(target=lambda b=b: answers.append(post(receiver, b))) for b in bodies
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(status for status, _ in answers) == [202, 202]
        finals = [wait_final(receiver, answer["id"]) for _, answer in answers]
    assert [f["state"] for f in finals] == ["deployed", "deployed"]
    words = [line.split()[0] for line in trace.read_text().splitlines()]
    assert words == ["start", "end", "start", "end"]  # never two before hooks at once
    assert len(releases(target)) == 3


# ---------------------------------------------------------------------------- GitLab source


@responses.activate
def test_gitlab_job_artifact_is_fetched_with_the_server_token(target: Path, tmp_path: Path) -> None:
    artifact = tarball(tmp_path, "app.tar.gz", APP)
    responses.add(
        responses.GET, f"{GITLAB}/api/v4/projects/42/jobs/7/artifacts/dist/app.tar.gz",
        body=artifact.read_bytes(), match=[matchers.header_matcher({"PRIVATE-TOKEN": TOKEN})],
    )  # fmt: skip
    responses.add(
        responses.GET, f"{GITLAB}/api/v4/projects/42/jobs/artifacts/main/raw/dist/app.tar.gz",
        body=artifact.read_bytes(),
        match=[matchers.query_param_matcher({"job": "build"}), matchers.header_matcher({"PRIVATE-TOKEN": TOKEN})],
    )  # fmt: skip
    fetching = FetchSettings(gitlab_url=GITLAB, gitlab_token=TOKEN)
    with running_receiver((str(target),), fetching) as receiver:
        by_id = document(target, GitlabSource("42", "dist/app.tar.gz", job=7), sha(artifact))
        by_ref = document(
            target,
            GitlabSource("42", "dist/app.tar.gz", ref="main", job_name="build"),
            sha(artifact),
        )
        for body in (by_id, by_ref):
            assert TOKEN.encode() not in body
            status, answer = post(receiver, body)
            assert status == 202
            assert wait_final(receiver, answer["id"])["state"] == "deployed"
        assert not any(TOKEN in line for line in receiver.log_lines)  # type: ignore[attr-defined]
    assert [call.request.url for call in responses.calls] == [
        f"{GITLAB}/api/v4/projects/42/jobs/7/artifacts/dist/app.tar.gz",
        f"{GITLAB}/api/v4/projects/42/jobs/artifacts/main/raw/dist/app.tar.gz?job=build",
    ]
    assert len(releases(target)) == 2


@responses.activate
def test_gitlab_refusal_is_reported(target: Path, tmp_path: Path) -> None:
    responses.add(responses.GET, f"{GITLAB}/api/v4/projects/42/jobs/8/artifacts/app.tar.gz",
                  status=404, json={"message": "404 Not Found"})  # fmt: skip
    with running_receiver(
        (str(target),), FetchSettings(gitlab_url=GITLAB, gitlab_token=TOKEN)
    ) as receiver:
        status, answer = post(
            receiver, document(target, GitlabSource("42", "app.tar.gz", job=8), "0" * 64)
        )
        assert status == 202
        final = wait_final(receiver, answer["id"])
    assert final["exit_code"] == ExitCode.ARTIFACT
    assert "GitLab refused GitLab project 42 job 8: app.tar.gz: HTTP 404" in final["error"]
    assert not target.exists() or live(target) == ""


# ---------------------------------------------------------------------------- pull mode


@responses.activate
def test_poll_deploys_each_new_successful_pipeline_once(target: Path, tmp_path: Path) -> None:
    artifact = tarball(tmp_path, "app.tar.gz", APP)
    api = f"{GITLAB}/api/v4/projects/42"

    def pipeline(number: int) -> dict[str, Any]:
        return {"id": number, "sha": f"{number:040d}", "ref": "main", "status": "success",
                "web_url": f"{GITLAB}/group/app/-/pipelines/{number}"}  # fmt: skip

    listing = [matchers.query_param_matcher(
        {"ref": "main", "status": "success", "order_by": "id", "sort": "desc", "per_page": "1"})]  # fmt: skip
    for number in (100, 100, 101):  # three cycles: new, unchanged, newer
        responses.add(responses.GET, f"{api}/pipelines", json=[pipeline(number)], match=listing)
    for number, job in ((100, 7), (101, 9)):
        responses.add(responses.GET, f"{api}/pipelines/{number}/jobs",
                      json=[{"id": job - 1, "name": "test"}, {"id": job, "name": "build"}],
                      match=[matchers.query_param_matcher({"scope[]": "success"})])  # fmt: skip
        responses.add(
            responses.GET, f"{api}/jobs/{job}/artifacts/dist/app.tar.gz", body=artifact.read_bytes()
        )
    lines: list[str] = []

    class Collect:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    reporter = Reporter(Collect(), tty=False)  # type: ignore[arg-type]
    poller = Poller(
        PollSettings("42", "main", "build", "dist/app.tar.gz", interval=0),
        PushSettings(path=str(target)), FetchSettings(gitlab_url=GITLAB, gitlab_token=TOKEN), reporter, "here",
    )  # fmt: skip
    poller.run(cycles=3, sleep=lambda seconds: None)
    log = "".join(lines)
    assert log.count("new pipeline") == 2, log
    assert len(releases(target)) == 2
    history = [
        json.loads(line) for line in (target / ".deployer" / "history").read_text().splitlines()
    ]
    assert [h["pipeline"].rsplit("/", 1)[-1] for h in history] == ["100", "101"]
    assert [h["by"] for h in history] == ["deployer serve --poll"] * 2
    urls = [call.request.url.split("?")[0] for call in responses.calls]
    assert urls == [f"{api}/pipelines", f"{api}/pipelines/100/jobs", f"{api}/jobs/7/artifacts/dist/app.tar.gz",
                    f"{api}/pipelines", f"{api}/pipelines", f"{api}/pipelines/101/jobs",
                    f"{api}/jobs/9/artifacts/dist/app.tar.gz"]  # fmt: skip
    assert all(call.request.headers["PRIVATE-TOKEN"] == TOKEN for call in responses.calls)
    # a restart reads the history: the last pipeline is not deployed again
    assert Poller(poller.poll, poller.push, poller.fetching, reporter, "here").handled.endswith(
        "/101"
    )


# ---------------------------------------------------------------------------- the CLI, end to end


def cli_env(**extra: str) -> dict[str, str]:
    return {"DEPLOYER_WEBHOOK_SECRET": SECRET.decode(), "CI": "true", **extra}


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("deployer: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_push_mode_webhook_end_to_end(deployer, site, target: Path) -> None:
    """A push that names exactly the receiver's hooks asks for nothing more: it goes through."""
    www, url, ca = site
    artifact = tarball(www, "app.tar.gz", APP)
    hooks = {str(target): HookSettings(after=("echo after-hook-ran",))}
    with running_receiver((str(target),), FetchSettings(ca_bundle=ca), hooks=hooks) as receiver:
        run = deployer(["push", str(artifact), "--mode", "webhook", "--webhook-url", receiver.url,
                        "--artifact-url", f"{url}/app.tar.gz", "--path", str(target),
                        "--after", "echo after-hook-ran"], env=cli_env())  # fmt: skip
    assert run.status == 0, run.output
    assert "after| after-hook-ran" in run.stderr and "accepted as deploy" in run.stderr
    assert (target / "current" / "VERSION").read_text() == "v1\n"


def test_excludes_reach_the_receiver(deployer, site, target: Path) -> None:
    """--exclude travels in the signed request; the receiver reads the artifact's .deployignore."""
    www, url, ca = site
    files = {**APP, "app.js.map": "map\n", "notes.txt": "notes\n", ".deployignore": "*.map\n"}
    artifact = tarball(www, "app.tar.gz", files)
    with running_receiver((str(target),), FetchSettings(ca_bundle=ca)) as receiver:
        run = deployer(["push", str(artifact), "--mode", "webhook", "--webhook-url", receiver.url,
                        "--artifact-url", f"{url}/app.tar.gz", "--path", str(target),
                        "--exclude", "notes.txt"], env=cli_env())  # fmt: skip
    assert run.status == 0, run.output
    assert sorted(p.name for p in (target / "current").iterdir()) == ["VERSION", "index.html"]
    assert (
        "excluded from the release (.deployignore, --exclude): .deployignore, app.js.map,"
        in run.stderr
    )


def test_failing_healthcheck_through_the_webhook_fails_the_job(
    deployer, site, target: Path
) -> None:
    """A receiver started with --allow-request-hooks runs the hooks the push names."""
    with serving_live(site, target, allow_request_hooks=True) as (receiver, url, www):
        before = (live(target), releases(target))
        artifact = tarball(www, "v2.tar.gz", {"VERSION": "v2\n"})
        run = deployer(["push", str(artifact), "--mode", "webhook", "--webhook-url", receiver.url,
                        "--artifact-url", f"{url}/v2.tar.gz", "--path", str(target), "--healthcheck", "exit 3",
                        "--healthcheck-retries", "0"], env=cli_env())  # fmt: skip
    assert run.status == ExitCode.HOOK, run.output
    line = one_error_line(run.stderr)
    assert "healthcheck `exit 3`" in line and f"switched back to {before[0]}" in line
    assert f"switched current back -> releases/{before[0]}" in run.stderr
    assert_live_unchanged(target, before)


def test_push_mode_webhook_bad_secret_and_missing_source(
    deployer, live_receiver, target: Path
) -> None:
    receiver, url, www = live_receiver
    artifact = www / "app.tar.gz"
    args = [
        "push",
        str(artifact),
        "--mode",
        "webhook",
        "--webhook-url",
        receiver.url,
        "--path",
        str(target),
    ]
    run = deployer([*args, "--artifact-url", f"{url}/app.tar.gz"],
                   env=cli_env(DEPLOYER_WEBHOOK_SECRET="another-secret-0123456789"))  # fmt: skip
    assert run.status == ExitCode.WEBHOOK
    assert "(HTTP 401): bad signature" in one_error_line(run.stderr)
    assert "another-secret" not in run.output
    run = deployer(args, env=cli_env())
    assert run.status == ExitCode.USAGE and "--gitlab-job ID" in one_error_line(run.stderr)


def test_auto_falls_back_when_the_ssh_route_cannot_be_established(
    deployer, topology, site, target: Path
) -> None:
    www, url, ca = site
    artifact = tarball(www, "app.tar.gz", APP)
    dead = free_port()  # nothing listens there
    with running_receiver((str(target),), FetchSettings(ca_bundle=ca)) as receiver:
        run = deployer(["push", str(artifact), "--mode", "auto", "--to", f"deploy@127.0.0.1:{dead}",
                        "--webhook-url", receiver.url, "--artifact-url", f"{url}/app.tar.gz",
                        "--path", str(target), "--connect-timeout", "3"],
                       env={**topology.env, **cli_env()})  # fmt: skip
    assert run.status == 0, run.output
    assert f"SSH route to deploy@127.0.0.1:{dead} cannot be established" in run.stderr
    assert f"falling back to the webhook at {receiver.url}" in run.stderr
    assert live(target)


def test_auto_does_not_fall_back_after_a_hook_failed(
    deployer, topology, site, tmp_path: Path
) -> None:
    www, url, ca = site
    artifact = tarball(www, "app.tar.gz", APP)
    os.chmod(artifact, 0o644)
    over_ssh = topology.deploy_path(f"auto-{tmp_path.name}")
    with running_receiver((str(over_ssh),), FetchSettings(ca_bundle=ca)) as receiver:
        run = deployer(["push", str(artifact), "--mode", "auto", *topology.route, "--webhook-url", receiver.url,
                        "--artifact-url", f"{url}/app.tar.gz", "--path", str(over_ssh), "--before", "exit 4"],
                       env={**topology.env, **cli_env()})  # fmt: skip
        assert not receiver.deployments.records  # the receiver was never asked
    assert run.status == ExitCode.HOOK, run.output
    assert "falling back" not in run.output
    assert "before hook `exit 4`" in one_error_line(run.stderr)
    assert live(over_ssh) == ""


def test_serve_command_warns_without_tls_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployer", "serve", "--path", str(tmp_path / "app"), "--listen", f"0.0.0.0:{port}"],
        env={**os.environ, "DEPLOYER_WEBHOOK_SECRET": SECRET.decode()},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen = ""
        deadline = time.monotonic() + 20
        while "receiving deploys" not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()  # type: ignore[union-attr]
        assert "WARNING: listening on 0.0.0.0 without TLS" in seen
        assert f"on http://0.0.0.0:{port}" in seen
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=20)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.INTERRUPTED and "stopped" in rest
    assert SECRET.decode() not in seen + rest


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_install_service_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "deployer", "serve", "install-service", "--path", str(tmp_path),
                           "--gitlab-token-file", "/etc/deployer/gitlab.token",
                           "--deployer", shutil.which("true") or "/bin/true", "--unit-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path}/deployer-serve.service" in done.stderr
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "deployer-serve.service")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert "deployer-serve.service" not in verify.stderr


def test_push_env_reaches_the_receivers_hooks_masked_and_only_under_allowed_names(
    deployer, site, target: Path
) -> None:
    """--env through the webhook: signed in the request, allowed by name on the receiver, masked
    in the job log, in the receiver's own log and in the deploy's state."""
    www, url, ca = site
    value = "w3bhook-Secret-Value-5c0d"
    artifact = tarball(www, "app.tar.gz", APP)
    hook = 'printf %s "$API_TOKEN" | sha256sum; echo "token=$API_TOKEN"'
    hooks = {str(target): HookSettings(after=(hook,))}
    args = ["push", str(artifact), "--mode", "webhook", "--artifact-url", f"{url}/app.tar.gz",
            "--path", str(target), "--env", "API_TOKEN"]  # fmt: skip
    with running_receiver((str(target),), FetchSettings(ca_bundle=ca), hooks=hooks,
                          allow_env=("OTHER",)) as receiver:  # fmt: skip
        refused = deployer([*args, "--webhook-url", receiver.url],
                           env=cli_env(API_TOKEN=value))  # fmt: skip
        assert not receiver.deployments.records  # nothing queued
    assert refused.status == ExitCode.WEBHOOK, refused.output
    line = one_error_line(refused.stderr)
    assert "(HTTP 403)" in line and "does not pass API_TOKEN to its hooks" in line
    assert "--allow-env" in line and value not in refused.output
    assert live(target) == ""

    with running_receiver((str(target),), FetchSettings(ca_bundle=ca), hooks=hooks,
                          allow_env=("API_TOKEN",)) as receiver:  # fmt: skip
        run = deployer([*args, "--webhook-url", receiver.url], env=cli_env(API_TOKEN=value))
        (record,) = receiver.deployments.records.values()
        server_log = "\n".join(receiver.log_lines)  # type: ignore[attr-defined]
    assert run.status == 0, run.output
    assert f"after| {hashlib.sha256(value.encode()).hexdigest()}  -" in run.stderr
    assert "after| token=***" in run.stderr and value not in run.output
    assert "token=***" in server_log and value not in server_log
    assert value not in json.dumps(record.summary()) + "\n".join(record.lines)
    assert not record.request.settings.hooks.env  # not kept once the deploy is over
    assert live(target)
