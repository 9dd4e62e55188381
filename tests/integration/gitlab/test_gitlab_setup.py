"""deployer setup gitlab against recorded GitLab API responses, scanning the real sshd + tunnel topology.

GitLab cannot run here: the API is the `responses` library's recorded answers (as in python-gitlab's
own tests), and every request the command sends is asserted. The host keys come from a real scan,
and the stored key and known hosts are then used for a real push through the tunnel.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import responses

from deployer.cli.main import main
from deployer.ssh.keys import load_private_key, public_key_line
from tests.integration.helpers import live, make_app

pytestmark = pytest.mark.integration

URL = "https://gitlab.example.com"
TOKEN = "glpat-SECRET-token-value"
VARIABLES = f"{URL}/api/v4/projects/acme%2Fapp/variables"


@dataclass
class Run:
    """The command's exit status and what it printed."""

    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr


@dataclass
class Api:
    """The recorded API: the project's variables, and the requests the command sent."""

    mock: responses.RequestsMock
    variables: list[dict[str, Any]]

    def writes(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(method, url, JSON body) of every POST and PUT."""
        return [(c.request.method, c.request.url, json.loads(c.request.body))
                for c in self.mock.calls if c.request.method in ("POST", "PUT")]  # fmt: skip


@pytest.fixture
def api() -> Iterator[Api]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        state = Api(mock, [])

        def listing(request: Any) -> tuple[int, dict[str, str], str]:
            assert request.headers["PRIVATE-TOKEN"] == TOKEN
            return 200, {"Content-Type": "application/json"}, json.dumps(state.variables)

        def created(request: Any) -> tuple[int, dict[str, str], str]:
            return 201, {"Content-Type": "application/json"}, request.body

        mock.add_callback(responses.GET, VARIABLES, callback=listing)
        mock.add_callback(responses.POST, VARIABLES, callback=created)
        mock.add_callback(responses.PUT, f"{VARIABLES}/SSH_PRIVATE_KEY", callback=created)
        mock.add_callback(responses.PUT, f"{VARIABLES}/SSH_KNOWN_HOSTS", callback=created)
        yield state


def setup_gitlab(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str],
                 *args: str) -> Run:  # fmt: skip
    """Run `deployer setup gitlab ARGS` in this process (so the recorded API answers it)."""
    for name, value in {"GITLAB_URL": URL, "GITLAB_TOKEN": TOKEN, **env}.items():
        monkeypatch.setenv(name, value)
    try:
        main(["setup", "gitlab", "--project", "acme/app", *args])
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    out = capsys.readouterr()
    return Run(status, out.out, out.err)


def _route(topology) -> list[str]:
    return topology.route


def test_first_run_stores_key_and_known_hosts_then_a_push_works(
    topology, api: Api, monkeypatch, capsys, tmp_path: Path, deployer
) -> None:
    run = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--yes")
    assert run.status == 0, run.output
    writes = api.writes()
    assert [(method, body["key"]) for method, _, body in writes] == [
        ("POST", "SSH_PRIVATE_KEY"), ("POST", "SSH_KNOWN_HOSTS")]  # fmt: skip
    key_body, hosts_body = writes[0][2], writes[1][2]
    assert {k: v for k, v in key_body.items() if k != "value"} == {
        "key": "SSH_PRIVATE_KEY", "masked": True, "protected": True, "raw": True,
        "variable_type": "env_var", "environment_scope": "production"}  # fmt: skip
    decoded = base64.b64decode(key_body["value"], validate=True).decode()
    assert decoded.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key = load_private_key(key_body["value"])  # deployer's own loader takes the stored form
    assert public_key_line(key).startswith("ssh-ed25519 ")
    assert {k: v for k, v in hosts_body.items() if k != "value"} == {
        "key": "SSH_KNOWN_HOSTS", "masked": False, "protected": False, "raw": True,
        "variable_type": "env_var", "environment_scope": "production"}  # fmt: skip
    known = hosts_body["value"]
    assert f"[127.0.0.1]:{topology.box.jump.port} ssh-ed25519 " in known
    assert f"[localhost]:{topology.box.tunnel_port} ssh-ed25519 " in known
    assert "SHA256:" in run.stderr and "(new)" in run.stderr  # fingerprints shown before storing
    assert (
        TOKEN not in run.output
        and key_body["value"] not in run.output
        and "PRIVATE KEY" not in run.output
    )

    # The printed lines, installed as printed, let the stored key push through jump host and tunnel.
    lines = [line for line in run.stdout.splitlines() if line and not line.startswith("#")]
    public = public_key_line(key)
    assert len(lines) == 2 and all(
        line.endswith(f"{public} deployer-ci acme/app production") for line in lines
    )
    assert (
        lines[0].startswith("restrict,port-forwarding,permitopen=")
        and 'command="/bin/false"' in lines[0]
    )
    assert lines[1].startswith('restrict,from="127.0.0.1,::1" ')
    topology.box.jump.authorize(lines[0])
    topology.box.target.authorize(lines[1])
    target = topology.deploy_path(f"setup-{tmp_path.name}")
    push = deployer(["push", str(make_app(tmp_path, "v1")), *topology.route, "--path", str(target)],
                    env={"CI": "true", "SSH_PRIVATE_KEY": key_body["value"], "SSH_KNOWN_HOSTS": known})  # fmt: skip
    assert push.status == 0, push.output
    assert live(target)


def _stored(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "description": None, "hidden": False}


def test_second_run_changes_nothing(topology, api: Api, monkeypatch, capsys) -> None:
    first = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--yes")
    assert first.status == 0, first.output
    api.variables = [_stored(body) for _, _, body in api.writes()]
    api.mock.calls.reset()
    second = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology))  # no --yes needed
    assert second.status == 0, second.output
    assert [c.request.method for c in api.mock.calls] == ["GET"]
    assert "SSH_PRIVATE_KEY [production]: keep" in second.stderr
    assert "SSH_KNOWN_HOSTS [production]: keep" in second.stderr
    assert "already in SSH_KNOWN_HOSTS" in second.stderr
    assert second.stdout == first.stdout  # the same key, so the same authorized_keys lines


def test_existing_key_with_wrong_flags_is_updated_not_regenerated(
    topology, api: Api, monkeypatch, capsys
) -> None:
    first = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--yes")
    key_body = api.writes()[0][2]
    api.variables = [_stored({**key_body, "protected": False})]
    api.mock.calls.reset()
    run = setup_gitlab(monkeypatch, capsys, topology.env, "--yes")  # no --to: the key only
    assert run.status == 0, run.output
    [(method, url, body)] = api.writes()
    assert method == "PUT" and body == key_body  # same value, protected again
    assert parse_qs(urlparse(url).query) == {"filter[environment_scope]": ["production"]}
    assert "deploy key (existing)" in run.stderr and first.status == 0


def test_rotate_replaces_the_key(api: Api, monkeypatch, capsys) -> None:
    setup_gitlab(monkeypatch, capsys, {})
    old = api.writes()[0][2]
    api.variables = [_stored(old)]
    api.mock.calls.reset()
    run = setup_gitlab(monkeypatch, capsys, {}, "--rotate")
    assert run.status == 0, run.output
    [(method, _, body)] = api.writes()
    assert (
        method == "PUT" and body["value"] != old["value"] and body["masked"] and body["protected"]
    )
    assert "--rotate: a new key" in run.stderr


def test_dry_run_writes_nothing(topology, api: Api, monkeypatch, capsys) -> None:
    run = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--dry-run")
    assert run.status == 0, run.output
    assert [c.request.method for c in api.mock.calls] == ["GET"]
    assert "SSH_PRIVATE_KEY [production]: create (not set yet; masked, protected)" in run.stderr
    assert "SSH_KNOWN_HOSTS [production]: create" in run.stderr
    assert "dry run: nothing was changed" in run.stderr
    assert "CI-PUBLIC-KEY" in run.stdout  # no key exists yet to print


def test_environment_scope_is_passed_through(api: Api, monkeypatch, capsys) -> None:
    run = setup_gitlab(monkeypatch, capsys, {}, "--environment", "staging/*")
    assert run.status == 0, run.output
    assert api.writes()[0][2]["environment_scope"] == "staging/*"


def test_unconfirmed_host_keys_without_a_terminal_change_nothing(
    topology, api: Api, monkeypatch, capsys
) -> None:
    run = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology))
    assert run.status == 2, run.output
    assert run.stderr.strip().splitlines()[-1] == (
        "deployer: error: stdin is not a terminal, so the host keys above cannot be confirmed — check their"
        " fingerprints with the servers' owners, then rerun with --yes")  # fmt: skip
    assert api.writes() == []


def test_host_keys_confirmed_at_the_terminal(topology, api: Api, monkeypatch, capsys) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    refused = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology))
    assert refused.status == 2 and "host keys not confirmed — nothing was changed" in refused.stderr
    assert api.writes() == []
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    accepted = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology))
    assert accepted.status == 0, accepted.output
    assert [body["key"] for _, _, body in api.writes()] == ["SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS"]


def test_rejected_token_is_one_clear_line(monkeypatch, capsys) -> None:
    with responses.RequestsMock() as mock:
        mock.get(VARIABLES, status=401, json={"message": "401 Unauthorized"})
        run = setup_gitlab(monkeypatch, capsys, {})
    assert run.status == 13
    assert run.stderr == (
        "deployer: error: GitLab at https://gitlab.example.com refused the token (401 Unauthorized) — check"
        " GITLAB_TOKEN: it must be valid, unexpired and have the api scope\n")  # fmt: skip
    assert TOKEN not in run.output


@pytest.mark.parametrize(("status", "message"), [
    (403, "GitLab refused to list the CI/CD variables of acme/app on https://gitlab.example.com (403 Forbidden)"
          " — the token's user needs the Maintainer role on the project"),
    (404, "project acme/app on https://gitlab.example.com not found (404) — check --project, and that the token"
          " can see it"),
])  # fmt: skip
def test_forbidden_and_missing_project(monkeypatch, capsys, status: int, message: str) -> None:
    with responses.RequestsMock() as mock:
        mock.get(VARIABLES, status=status, json={"message": f"{status}"})
        run = setup_gitlab(monkeypatch, capsys, {})
    assert (run.status, run.stderr) == (13, f"deployer: error: {message}\n")


def test_unreachable_gitlab(monkeypatch, capsys) -> None:
    with responses.RequestsMock():  # no recorded answer: the connection fails
        run = setup_gitlab(monkeypatch, capsys, {})
    assert run.status == 13
    assert run.stderr == (
        "deployer: error: cannot reach GitLab at https://gitlab.example.com (ConnectionError) — check"
        " GITLAB_URL and the network\n")  # fmt: skip


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"GITLAB_TOKEN": ""}, (), "GITLAB_TOKEN is not set — create an access token with the api scope (Maintainer"
                               " role on the project) and export GITLAB_TOKEN"),
    ({"GITLAB_URL": "gitlab.example.com"}, (), "GITLAB_URL 'gitlab.example.com' must start with https:// — e.g."
                                               " https://gitlab.example.com"),
    ({}, ("--environment", "a b"), "--environment 'a b' is not an environment scope — e.g. production or '*'"),
])  # fmt: skip
def test_bad_settings(
    monkeypatch, capsys, env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    with responses.RequestsMock():  # nothing may be sent
        run = setup_gitlab(monkeypatch, capsys, env, *args)
    assert (run.status, run.stderr) == (2, f"deployer: error: {message}\n")


def test_bad_project_path(monkeypatch, capsys) -> None:
    monkeypatch.setenv("GITLAB_TOKEN", TOKEN)
    with pytest.raises(SystemExit) as exc:
        main(["setup", "gitlab", "--project", "no-group"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "deployer: error: --project 'no-group' is not a project path — pass GROUP/NAME (or its numeric id)\n"
    )


def test_json_plan(topology, api: Api, monkeypatch, capsys) -> None:
    run = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--dry-run", "--json")
    assert run.status == 0, run.output
    document = json.loads(run.stdout)
    assert document["changes"] == [
        {"key": "SSH_PRIVATE_KEY", "action": "create", "reason": "not set yet"},
        {"key": "SSH_KNOWN_HOSTS", "action": "create", "reason": "not set yet"}]  # fmt: skip
    assert {key["status"] for key in document["host_keys"]} == {"new"}
    assert document["public_key"] == "" and "CI-PUBLIC-KEY" in document["authorized_keys"]


# ---------------------------------------------------------------------------- host keys already known


def _known_hosts_variable(value: str) -> dict[str, Any]:
    return _stored({"key": "SSH_KNOWN_HOSTS", "value": value, "masked": False, "protected": False, "raw": True,
                    "variable_type": "env_var", "environment_scope": "production"})  # fmt: skip


def _impostor_line(host_id: str, tmp_path: Path) -> str:
    """A known_hosts line for host_id with an ed25519 key the real server does not have."""
    from deployer.sandbox.servers import write_keypair

    key_type, blob = write_keypair(tmp_path / "impostor", "ed25519").split()[:2]
    return f"{host_id} {key_type} {blob}"


@pytest.mark.parametrize("hop", ["jump", "target"])
def test_a_changed_key_stops_an_unattended_run_unless_named(topology, api: Api, monkeypatch, capsys,
                                                            tmp_path: Path, hop: str) -> None:  # fmt: skip
    """A man in the middle during `--yes` must not rewrite the project's SSH_KNOWN_HOSTS."""
    box = topology.box
    ident = f"[127.0.0.1]:{box.jump.port}" if hop == "jump" else f"[localhost]:{box.tunnel_port}"
    stale = _impostor_line(ident, tmp_path)
    other = f"other.example.com {stale.split(' ', 1)[1]}"
    api.variables = [_known_hosts_variable(f"{stale}\n{other}\n")]
    refused = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--yes")
    assert refused.status == 5, refused.output
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("deployer: error: the host key of ") and "CHANGED" in line
    assert f"rerun with --replace-host-key '{ident}'" in line and "nothing was changed" in line
    assert api.writes() == []
    api.mock.calls.reset()
    replaced = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--yes",
                            "--replace-host-key", ident)  # fmt: skip
    assert replaced.status == 0, replaced.output
    assert "CHANGED from SSH_KNOWN_HOSTS: replacing it (--replace-host-key)" in replaced.stderr
    stored = next(body["value"] for _, _, body in api.writes() if body["key"] == "SSH_KNOWN_HOSTS")
    assert stale not in stored and other in stored  # the named hop's line gave way, others stay
    real = box.jump.host_keys if hop == "jump" else box.target.host_keys
    assert all(f"{ident} {key}" in stored for key in real)


def test_a_host_pinned_by_one_key_type_keeps_it(topology, api: Api, monkeypatch, capsys) -> None:
    """Keys of other types a known host offers are shown, never stored without being asked for."""
    box = topology.box
    ident = f"[127.0.0.1]:{box.jump.port}"
    ecdsa = next(key for key in box.jump.host_keys if key.startswith("ecdsa"))
    api.variables = [_known_hosts_variable(f"{ident} {ecdsa}\n")]
    run = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--yes")
    assert run.status == 0, run.output
    assert "not stored: the host is pinned by its key of another type" in run.stderr
    stored = next(body["value"] for _, _, body in api.writes() if body["key"] == "SSH_KNOWN_HOSTS")
    assert [line for line in stored.splitlines() if line.startswith(ident)] == [f"{ident} {ecdsa}"]
    assert f"[localhost]:{box.tunnel_port} ssh-ed25519 " in stored  # the target was new: stored


def test_replace_host_key_must_name_a_hop(topology, api: Api, monkeypatch, capsys) -> None:
    run = setup_gitlab(monkeypatch, capsys, topology.env, *_route(topology), "--yes",
                       "--replace-host-key", "elsewhere.example.com")  # fmt: skip
    assert run.status == 2
    assert "--replace-host-key 'elsewhere.example.com' names no hop of the route" in run.stderr
    assert api.writes() == []
