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
    assert parsed.settings.exclude == ()
    excluding = parse_request(body(exclude=["node_modules/", "!keep.map"]), PATHS)
    assert excluding.settings.exclude == ("node_modules/", "!keep.map")


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"path": "/etc"}, HTTPStatus.FORBIDDEN, "does not deploy to /etc"),
        ({"sha256": "xyz"}, HTTPStatus.BAD_REQUEST, "64 lowercase hex"),
        ({"keep": 0}, HTTPStatus.BAD_REQUEST, "'keep' must be a positive integer"),
        ({"shared": ["../etc"]}, HTTPStatus.BAD_REQUEST, "shared entry '../etc'"),
        ({"exclude": "*.map"}, HTTPStatus.BAD_REQUEST, "'exclude' must be a list of strings"),
        ({"exclude": ["!"]}, HTTPStatus.BAD_REQUEST, "--exclude '!' is not a gitignore pattern"),
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
        "--before", "./bin/migrate", "--healthcheck", "curl -fsS localhost:8080/up", "--hook-timeout", "60",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for line in ("LoadCredential=webhook-secret:/etc/deployer/webhook.secret",
                 "LoadCredential=tls-key:/etc/deployer/tls.key",
                 "LoadCredential=gitlab-token:/etc/deployer/gitlab.token",
                 "ReadWritePaths=/srv/app /srv/api", "UMask=0022", "TimeoutStopSec=infinity",
                 "SuccessExitStatus=130", "User=deployer", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "StateDirectory=deployer-serve", "StateDirectoryMode=0700"):  # fmt: skip
        assert line in lines, line
    assert "UMask=0077" not in lines and "TimeoutStopSec=15" not in lines
    assert len([h for h in HARDENING if h in lines]) == len(HARDENING) - 1  # all but the umask
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/opt/deployer/bin/deployer serve --listen 0.0.0.0:8443 --path /srv/app --path /srv/api"
        " --secret-file %d/webhook-secret --gitlab-url https://gitlab.com"
        " --replay-file %S/deployer-serve/webhook-requests --max-artifact-size 4096"
        ' --max-body 65536 --window 300 --before ./bin/migrate --healthcheck "curl -fsS localhost:8080/up"'
        " --hook-timeout 60 --tls-cert /etc/deployer/tls.pem --tls-key %d/tls-key"
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


# ---------------------------------------------------------------------------- hooks are the receiver's


def test_hooks_named_in_a_request_are_refused_unless_allowed() -> None:
    from deployer.webhook.request import with_receiver_hooks

    asked = parse_request(body(), PATHS)  # names ./bin/migrate and a healthcheck
    configured = HookSettings(after=("systemctl --user reload app",), timeout=60)
    with pytest.raises(Rejected) as caught:
        with_receiver_hooks(asked, configured, allow=False)
    assert caught.value.status == HTTPStatus.FORBIDDEN
    assert "--allow-request-hooks" in caught.value.message and "\n" not in caught.value.message
    assert with_receiver_hooks(asked, configured, allow=True).settings.hooks == asked.settings.hooks
    # no hooks named: the receiver's run (with its own limits)
    bare = parse_request(body(hooks={}), PATHS)
    assert with_receiver_hooks(bare, configured, allow=False).settings.hooks == configured
    assert with_receiver_hooks(bare, configured, allow=True).settings.hooks == configured
    # exactly the receiver's hooks named: nothing more is asked for
    same = HookSettings(before=("./bin/migrate",), healthcheck="curl -fsS localhost", timeout=9)
    assert with_receiver_hooks(asked, same, allow=False).settings.hooks == same


def test_served_hooks_per_path() -> None:
    from deployer.errors import ConfigError
    from deployer.webhook.service import hook_arguments, served_hooks

    common = HookSettings(healthcheck="curl -fsS localhost/up")
    served = ("/srv/app", "/srv/api")
    assert served_hooks(served, common, None) == {"/srv/app": common, "/srv/api": common}
    hooks = served_hooks(served, common, {"/srv/api/": {"before": "./migrate", "hook-timeout": 30,
                                                         "healthcheck_retries": 0}})  # fmt: skip
    assert hooks["/srv/app"] == common
    assert hooks["/srv/api"] == HookSettings(before=("./migrate",), healthcheck="curl -fsS localhost/up",
                                             timeout=30, healthcheck_retries=0)  # fmt: skip
    for bad, words in [
        ({"/srv/other": {}}, "is not a served path — this receiver serves /srv/app, /srv/api"),
        ({"/srv/app": {"bfore": []}}, "unknown keys bfore"),
        ({"/srv/app": {"before": [1]}}, "before must be commands"),
        ({"/srv/app": {"hook_timeout": "soon"}}, "timeout must be a number"),
        ({"/srv/app": "x"}, "must be a table"),
        ("x", "per-path hooks go into"),
    ]:
        with pytest.raises(ConfigError, match=words):
            served_hooks(served, common, bad)
    assert hook_arguments(hooks["/srv/api"], True) == [
        "--before", "./migrate", "--healthcheck", "curl -fsS localhost/up", "--hook-timeout", "30",
        "--healthcheck-retries", "0", "--allow-request-hooks"]  # fmt: skip


# ---------------------------------------------------------------------------- variables (--env)


def test_variables_travel_in_the_request_and_pass_only_under_allowed_names() -> None:
    from deployer.webhook.request import with_receiver_hooks

    settings = PushSettings(path="/srv/app", hooks=HookSettings(env={"API_TOKEN": "t0ken", "NOTE": "n"},
                                                                healthcheck_delay=5))  # fmt: skip
    sent = DeployRequest("/srv/app", HttpsSource("https://example.com/a.tar.gz"), SHA, settings,
                         Provenance("alice"))  # fmt: skip
    asked = parse_request(json.dumps(sent.to_document()).encode(), PATHS)
    assert dict(asked.settings.hooks.env) == {"API_TOKEN": "t0ken", "NOTE": "n"}
    assert asked.settings.hooks.healthcheck_delay == 5
    configured = HookSettings(after=("./reload",))
    with pytest.raises(Rejected) as caught:
        with_receiver_hooks(asked, configured, allow=True, allowed_env=("API_TOKEN",))
    assert caught.value.status == HTTPStatus.FORBIDDEN  # even where requests may name hooks
    assert (
        "does not pass NOTE to its hooks" in caught.value.message
        and "t0ken" not in caught.value.message
    )
    passed = with_receiver_hooks(asked, configured, allow=False, allowed_env=("API_TOKEN", "NOTE"))
    assert passed.settings.hooks.after == ("./reload",)  # the receiver's hooks
    assert dict(passed.settings.hooks.env) == {
        "API_TOKEN": "t0ken",
        "NOTE": "n",
    }  # with the variables
    for env, words in (({"A-B": "x"}, "'A-B' is not a variable name"), ({"DEPLOYER_PATH": "/"}, "DEPLOYER_"),
                       (["A"], "'env' must be an object"), ({"A": 1}, "'env' must be an object")):  # fmt: skip
        rejected = refused(body(env=env))
        assert rejected.status == HTTPStatus.BAD_REQUEST and words in rejected.message


def test_the_receiver_writes_its_allowed_names_and_check_delay_into_its_unit() -> None:
    from deployer.errors import ConfigError
    from deployer.webhook.service import hook_arguments, served_hooks

    hooks = served_hooks(("/srv/app",), HookSettings(), {"/srv/app": {"healthcheck-delay": 10}})
    assert hooks["/srv/app"].healthcheck_delay == 10
    assert hook_arguments(hooks["/srv/app"], False, ("API_TOKEN", "DB_URL")) == [
        "--healthcheck-delay", "10", "--allow-env", "API_TOKEN", "--allow-env", "DB_URL"]  # fmt: skip
    with pytest.raises(ConfigError, match="healthcheck_delay must be a number"):
        served_hooks(("/srv/app",), HookSettings(), {"/srv/app": {"healthcheck_delay": "later"}})
    result = CliRunner().invoke(serve, ["install-service", "--path", "/srv/app", "--print",
                                        "--allow-env", "API-TOKEN"])  # fmt: skip
    assert "--allow-env 'API-TOKEN' is not a variable name" in str(result.exception)
