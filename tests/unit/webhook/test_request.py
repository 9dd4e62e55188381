"""Deploy requests, artifact sources, the exposure warning and the systemd unit of `deployer serve`."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import pytest
from click.testing import CliRunner

from deployer.cli.serve import serve
from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Provenance
from deployer.deploy.settings import PushSettings
from deployer.systemd import HARDENING
from deployer.webhook.receiver import exposure_warning
from deployer.webhook.request import DeployRequest, parse_request
from deployer.webhook.signing import Rejected
from deployer.webhook.sources import GitlabSource, HttpsSource, parse_source

PATHS = ("/srv/app",)
SHA = "a" * 64


def body(**changes: Any) -> bytes:
    settings = PushSettings(path="/srv/app", keep=3, shared=("storage/",),
                            hooks=HookSettings(before=("./bin/migrate",), healthcheck="curl -fsS localhost"))  # fmt: skip
    request = DeployRequest("/srv/app", HttpsSource("https://example.com/a.tar.gz"), SHA, settings,
                            Provenance("alice", "abc"))  # fmt: skip
    document = {**request.to_document(), **changes}
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def refused(data: bytes) -> Rejected:
    with pytest.raises(Rejected) as caught:
        parse_request(data, PATHS)
    return caught.value


def test_a_request_round_trips() -> None:
    parsed = parse_request(body(), PATHS)
    assert parsed.settings.keep == 3 and parsed.settings.shared == ("storage/",)
    assert parsed.settings.hooks.before == ("./bin/migrate",)
    assert parsed.settings.hooks.healthcheck == "curl -fsS localhost"
    assert parsed.provenance == Provenance("alice", "abc")
    assert parse_request(body(path=None), PATHS).path == "/srv/app"  # one path served: implied
    assert parse_request(body(path="/srv/app/"), PATHS).path == "/srv/app"


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"path": "/etc"}, HTTPStatus.FORBIDDEN, "does not deploy to /etc"),
        ({"sha256": "xyz"}, HTTPStatus.BAD_REQUEST, "64 lowercase hex"),
        ({"keep": 0}, HTTPStatus.BAD_REQUEST, "'keep' must be a positive integer"),
        ({"shared": ["../etc"]}, HTTPStatus.BAD_REQUEST, "shared entry '../etc'"),
        (
            {"hooks": {"before": "not a list"}},
            HTTPStatus.BAD_REQUEST,
            "'hooks.before' must be a list",
        ),
        ({"hooks": {"timeout": -1}}, HTTPStatus.BAD_REQUEST, "--hook-timeout must be a positive"),
        ({"source": {"type": "ftp"}}, HTTPStatus.BAD_REQUEST, "'gitlab' or 'https'"),
        ({"provenance": {"by": 3}}, HTTPStatus.BAD_REQUEST, "'provenance' values must be strings"),
    ],
)
def test_bad_requests_name_the_field(
    changes: dict[str, Any], status: HTTPStatus, words: str
) -> None:
    rejected = refused(body(**changes))
    assert rejected.status == status and words in rejected.message


def test_malformed_bodies() -> None:
    assert "not valid JSON" in refused(b"{").message
    assert "not valid JSON" in refused(b"\xff\xfe").message
    assert "must be a JSON object" in refused(b"[1]").message


def test_sources() -> None:
    assert parse_source(
        {"type": "gitlab", "project": 42, "job": 7, "path": "dist/app.tar.gz"}
    ) == GitlabSource("42", "dist/app.tar.gz", 7)
    by_ref = parse_source(
        {"type": "gitlab", "project": "g/app", "ref": "main", "job_name": "build", "path": "a.zip"}
    )
    assert by_ref == GitlabSource("g/app", "a.zip", None, "main", "build")
    assert by_ref.document() == {"type": "gitlab", "project": "g/app", "path": "a.zip", "ref": "main",
                                 "job_name": "build"}  # fmt: skip
    for bad, words in [
        ({"type": "gitlab", "project": 1, "path": "../a.tgz", "job": 1}, "relative path"),
        ({"type": "gitlab", "project": 1, "path": "a.tgz"}, "needs 'job'"),
        ({"type": "gitlab", "project": 1, "path": "a.tgz", "job": True}, "positive integer"),
        ({"type": "https", "url": "https://example.com/app.exe"}, "is not a .tar"),
        ({"type": "https", "url": "file:///etc/passwd"}, "https:// URL"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_source(bad)
    assert HttpsSource("https://h/p/a.tgz?token=x").describe() == "https://h/p/a.tgz"


def test_exposure_warning_only_for_plain_http_beyond_loopback() -> None:
    assert exposure_warning("127.0.0.1", False) is None
    assert exposure_warning("::1", False) is None
    assert exposure_warning("localhost", False) is None
    assert exposure_warning("0.0.0.0", True) is None
    warning = exposure_warning("0.0.0.0", False)
    assert warning is not None and warning.startswith("WARNING: listening on 0.0.0.0 without TLS")
    assert "--tls-cert" in warning


def test_install_service_prints_a_unit_with_credentials_and_write_access() -> None:
    result = CliRunner().invoke(serve, [
        "install-service", "--path", "/srv/app", "--path", "/srv/api/", "--listen", "0.0.0.0:8443",
        "--tls-cert", "/etc/deployer/tls.pem", "--tls-key", "/etc/deployer/tls.key",
        "--gitlab-token-file", "/etc/deployer/gitlab.token", "--deployer", "/opt/deployer/bin/deployer", "--print",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for line in ("LoadCredential=webhook-secret:/etc/deployer/webhook.secret",
                 "LoadCredential=tls-key:/etc/deployer/tls.key",
                 "LoadCredential=gitlab-token:/etc/deployer/gitlab.token",
                 "ReadWritePaths=/srv/app /srv/api", "UMask=0022", "TimeoutStopSec=infinity",
                 "SuccessExitStatus=130", "User=deployer", "NoNewPrivileges=yes", "ProtectSystem=strict"):  # fmt: skip
        assert line in lines, line
    assert "UMask=0077" not in lines and "TimeoutStopSec=15" not in lines
    assert len([h for h in HARDENING if h in lines]) == len(HARDENING) - 1  # all but the umask
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/opt/deployer/bin/deployer serve --listen 0.0.0.0:8443 --path /srv/app --path /srv/api"
        " --secret-file %d/webhook-secret --gitlab-url https://gitlab.com --max-artifact-size 4096"
        " --max-body 65536 --window 300 --tls-cert /etc/deployer/tls.pem --tls-key %d/tls-key"
        " --gitlab-token-file %d/gitlab-token"
    )
    assert "WARNING" not in result.stderr  # TLS is configured


def test_serve_refuses_bad_settings_in_one_line() -> None:
    runner = CliRunner()
    result = runner.invoke(serve, ["--path", "/srv/app"], env={"DEPLOYER_WEBHOOK_SECRET": ""})
    assert "no webhook secret" in str(result.exception)
    result = runner.invoke(serve, ["--path", "relative"], env={"DEPLOYER_WEBHOOK_SECRET": "x" * 32})
    assert "must be an absolute directory" in str(result.exception)
    result = runner.invoke(serve, ["--path", "/srv/app", "--listen", "nope:port"],
                           env={"DEPLOYER_WEBHOOK_SECRET": "x" * 32})  # fmt: skip
    assert "use [HOST:]PORT" in str(result.exception)
    result = runner.invoke(serve, ["--path", "/srv/app", "--poll", "--ref", "main"])
    assert "missing: --gitlab-project, --job-name, --artifact-path" in str(result.exception)


def test_serve_without_a_secret_exits_2_with_one_line() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYER_")}
    run = subprocess.run([sys.executable, "-m", "deployer", "serve", "--path", "/srv/app"],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "deployer: error: no webhook secret — set DEPLOYER_WEBHOOK_SECRET (the same value on the receiver"
        " and in CI; e.g. `openssl rand -hex 32`)"
    ]
