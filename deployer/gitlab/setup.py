"""``deployer setup gitlab``: a deploy key and the route's host keys as CI/CD variables of a project.

It generates an ed25519 key pair (unless the project already has one), stores the private key
base64-encoded as a masked, protected SSH_PRIVATE_KEY scoped to the environment, stores the host
keys of every hop (scanned, shown, confirmed) as SSH_KNOWN_HOSTS, and prints the restricted
authorized_keys lines for the jump host and the target. Reading and planning come first; nothing
is written before every check passed and the host keys were confirmed. Existing variables are
updated only when they differ, so running it again changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import click

from deployer.cli.main import _connect_options, _route_kwargs, _routes, route_options
from deployer.errors import ConfigError, GitLabError, PrivateKeyError
from deployer.output import Reporter, emit_json
from deployer.ssh.authorized_keys import ci_jump_key_options, ci_target_key_options
from deployer.ssh.forwards import Forward, parse_forwards
from deployer.ssh.hostkeys import HostKeyPolicy, fingerprint, parse_known_hosts
from deployer.ssh.route import Route

if TYPE_CHECKING:  # keyscan brings paramiko: imported only when a route is scanned
    from deployer.ssh.keyscan import ScannedKey

PRIVATE_KEY = "SSH_PRIVATE_KEY"
KNOWN_HOSTS = "SSH_KNOWN_HOSTS"
DEFAULT_URL = "https://gitlab.com"
_PROJECT = re.compile(r"^(\d+|[\w.-]+(/[\w.-]+)+)$")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Variable:
    """A project CI/CD variable as deployer manages it."""

    key: str
    value: str | None  # None: a hidden variable, whose value the API does not return
    masked: bool
    protected: bool
    environment_scope: str
    raw: bool = True  # GitLab must not expand "$" in a key or a known_hosts line
    variable_type: str = "env_var"

    def fields(self) -> dict[str, Any]:
        """The API attributes (value included)."""
        return {"key": self.key, "value": self.value, "masked": self.masked,
                "protected": self.protected, "raw": self.raw, "variable_type": self.variable_type,
                "environment_scope": self.environment_scope}  # fmt: skip


@dataclass(frozen=True)
class Change:
    """What setup does to one variable: create, update or keep (and why)."""

    action: str
    variable: Variable
    reason: str


# ---------------------------------------------------------------------------- pure parts


def generate_key(comment: str) -> tuple[str, str]:
    """A new ed25519 key: (OpenSSH private key base64-encoded on one line, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()  # fmt: skip
    # masked values must be one line of base64-alphabet characters: encode the whole file
    return base64.b64encode(private).decode(), f"{public} {comment}"


def public_key_of(value: str, comment: str) -> str:
    """The public key line of a stored SSH_PRIVATE_KEY value (raw or base64)."""
    from deployer.ssh.keys import load_private_key, public_key_line

    try:
        return public_key_line(
            load_private_key(value, source=f"the project's {PRIVATE_KEY}"), comment
        )
    except PrivateKeyError as exc:
        raise PrivateKeyError(f"{exc} (rerun with --rotate to replace it with a new key)") from None


def find(variables: Sequence[Variable], key: str, scope: str) -> Variable | None:
    """The variable with this key and exactly this environment scope."""
    return next((v for v in variables if v.key == key and v.environment_scope == scope), None)


def plan_change(current: Variable | None, wanted: Variable) -> Change:
    """create when missing, update when value or flags differ, keep otherwise."""
    if current is None:
        return Change("create", wanted, "not set yet")
    differs = [name for name in ("masked", "protected", "raw", "variable_type")
               if getattr(current, name) != getattr(wanted, name)]  # fmt: skip
    if wanted.value is not None and _normal(current.value) != _normal(wanted.value):
        differs.insert(0, "value")
    if not differs:
        return Change("keep", wanted, "unchanged")
    return Change("update", wanted, ", ".join(differs) + " differ")


def _normal(value: str | None) -> str | None:
    return (
        None if value is None else "\n".join(line.rstrip() for line in value.strip().splitlines())
    )


def merge_known_hosts(
    existing: str, scanned: Sequence[ScannedKey], hops: Sequence[tuple[str, int]]
) -> str:
    """The existing lines for other hosts (and markers, comments), then the scanned lines."""
    kept: list[str] = []
    for line in existing.splitlines():
        entries = parse_known_hosts(line, KNOWN_HOSTS, lenient=True)
        replaced = (
            entries and entries[0].marker == "" and any(entries[0].matches(h, p) for h, p in hops)
        )
        if line.strip() and not replaced:
            kept.append(line.rstrip())
    lines = kept + [key.line for key in scanned if key.line not in kept]
    return "\n".join(dict.fromkeys(lines)) + "\n"


def route_forwards(route: Route, given: Sequence[str]) -> tuple[Forward, ...]:
    """The tunnel forwards behind a route: -R as given, else derived from the target's address."""
    if given:
        return parse_forwards(given)
    target = route.target
    if route.jumps and target.host in _LOOPBACK:
        # a loopback target behind a jump host is a reverse tunnel's port (ssh -R PORT:localhost:22)
        return (Forward(port=target.port, host="localhost", host_port=22),)
    # otherwise the last hop connects to the target's own address: that is what the key may open
    return (Forward(port=target.port, host=target.host, host_port=target.port,
                    bind=target.host if route.jumps else None),)  # fmt: skip


def render_ci_key_lines(routes: Sequence[Route], given: Sequence[str], public: str) -> str:
    """authorized_keys lines for the CI key: on the last jump host and on each target."""
    blocks: list[str] = []
    for route in routes:
        forwards = route_forwards(route, given)
        lines = []
        if route.jumps:
            lines += [f"# Jump host {route.jumps[-1]}, ~/.ssh/authorized_keys: the CI key may reach"
                      f" {route.target.address} and run nothing.",
                      f"{ci_jump_key_options(forwards)} {public}"]  # fmt: skip
        lines += [f"# Target {route.target}, ~/.ssh/authorized_keys of the deploy user.",
                  f"{ci_target_key_options(forwards)} {public}"]  # fmt: skip
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(dict.fromkeys(blocks))  # a target given twice is printed once


# ---------------------------------------------------------------------------- the GitLab API


@dataclass(frozen=True)
class GitLabSettings:
    """Where GitLab is and the token to use (GITLAB_URL or CI_SERVER_URL, GITLAB_TOKEN)."""

    url: str
    token: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GitLabSettings:
        """Read the settings; a missing token is a configuration error that says how to get one."""
        url = (env.get("GITLAB_URL") or env.get("CI_SERVER_URL") or DEFAULT_URL).rstrip("/")
        if not url.startswith(("https://", "http://")):
            raise ConfigError(
                f"GITLAB_URL {url!r} must start with https:// — e.g. https://gitlab.example.com"
            )
        token = env.get("GITLAB_TOKEN", "").strip()
        if not token:
            raise ConfigError("GITLAB_TOKEN is not set — create an access token with the api scope"
                              " (Maintainer role on the project) and export GITLAB_TOKEN")  # fmt: skip
        return cls(url, token)

    def __repr__(self) -> str:  # the token never reaches a log, even through a repr
        return f"GitLabSettings(url={self.url!r}, token=***)"


class ProjectVariables:
    """A project's CI/CD variables through python-gitlab; every failure becomes a GitLabError."""

    def __init__(self, settings: GitLabSettings, project: str) -> None:
        import gitlab

        self.settings = settings
        self.project_path = project
        client = gitlab.Gitlab(settings.url, private_token=settings.token, timeout=30)
        self._project = client.projects.get(project, lazy=True)  # no request until used

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        import gitlab.exceptions
        import requests

        where = f"{self.project_path} on {self.settings.url}"
        try:
            yield
        except gitlab.exceptions.GitlabError as exc:
            code = exc.response_code
            if code == 401:
                message = (f"GitLab at {self.settings.url} refused the token (401 Unauthorized) — check"
                           " GITLAB_TOKEN: it must be valid, unexpired and have the api scope")  # fmt: skip
            elif code == 403:
                message = (f"GitLab refused to {what} of {where} (403 Forbidden) — the token's user"
                           " needs the Maintainer role on the project")  # fmt: skip
            elif code == 404:
                message = f"project {where} not found (404) — check --project, and that the token can see it"
            else:
                detail = " ".join(str(exc.error_message or "").split())[:200]
                status = f"{code}: " if code else ""
                message = f"GitLab could not {what} of {where} ({status}{detail})"
            raise GitLabError(message) from None
        except requests.exceptions.RequestException as exc:
            raise GitLabError(f"cannot reach GitLab at {self.settings.url} ({type(exc).__name__}) — check"
                              " GITLAB_URL and the network") from None  # fmt: skip

    def list(self) -> list[Variable]:
        """Every variable of the project (all scopes)."""
        with self._translated("list the CI/CD variables"):
            items = self._project.variables.list(get_all=True)
        return [Variable(key=i.key, value=getattr(i, "value", None), masked=bool(getattr(i, "masked", False)),
                         protected=bool(getattr(i, "protected", False)),
                         environment_scope=getattr(i, "environment_scope", "*"), raw=bool(getattr(i, "raw", False)),
                         variable_type=getattr(i, "variable_type", "env_var")) for i in items]  # fmt: skip

    def apply(self, change: Change) -> None:
        """Create or update one variable (scoped by its environment_scope)."""
        variable = change.variable
        data = {k: v for k, v in variable.fields().items() if v is not None}
        with self._translated(f"{change.action} {variable.key} among the CI/CD variables"):
            if change.action == "create":
                self._project.variables.create(data)
            elif change.action == "update":
                self._project.variables.update(variable.key, data,
                                               filter={"environment_scope": variable.environment_scope})  # fmt: skip


# ---------------------------------------------------------------------------- the command


@click.group(name="setup")
def setup() -> None:
    """Store deploy credentials in a CI system."""


@setup.command(name="gitlab")
@route_options
@click.option(
    "--project",
    required=True,
    metavar="GROUP/NAME",
    help="The GitLab project (path or numeric id).",
)
@click.option("--environment", default="production", show_default=True,
              help="Environment scope of the variables ('*': every environment).")  # fmt: skip
@click.option("-R", "--remote-forward", "forwards", multiple=True, metavar="[BIND:]PORT:HOST:HOSTPORT",
              help="The tunnel's forwards, for the jump host's line (default: TARGET-PORT:localhost:22).")  # fmt: skip
@click.option("--rotate", is_flag=True, help="Replace an existing SSH_PRIVATE_KEY with a new key.")
@click.option(
    "--yes", is_flag=True, help="Store the scanned host keys without asking (non-interactive use)."
)
@click.option(
    "--dry-run", is_flag=True, help="Read and scan, print what would change, change nothing."
)
def gitlab(to: tuple[str, ...], jump: tuple[str, ...], as_json: bool, project: str, environment: str,
           forwards: tuple[str, ...], rotate: bool, yes: bool, dry_run: bool, **kwargs: Any) -> None:  # fmt: skip
    """Generate a deploy key and store it and the route's host keys as CI/CD variables of a project."""
    import os

    reporter = Reporter()
    settings = GitLabSettings.from_env(os.environ)
    if not _PROJECT.match(project):
        raise ConfigError(
            f"--project {project!r} is not a project path — pass GROUP/NAME (or its numeric id)"
        )
    if not environment.strip() or any(c.isspace() for c in environment):
        raise ConfigError(
            f"--environment {environment!r} is not an environment scope — e.g. production or '*'"
        )
    route_kwargs = _route_kwargs(kwargs)
    routes = _routes(to, jump) if to else []
    api = ProjectVariables(settings, project)
    existing = api.list()
    key_change, public = _plan_key(
        existing, environment, f"deployer-ci {project} {environment}", rotate
    )
    changes = [key_change]
    scanned: list[ScannedKey] = []
    if routes:
        options = _connect_options(routes[0], reporter=reporter, **route_kwargs)
        hosts_change, scanned = _plan_known_hosts(existing, environment, routes, options)
        changes.append(hosts_change)
        _show_fingerprints(reporter, scanned)
    else:
        reporter.line(
            f"note: no --to given: {KNOWN_HOSTS} left as it is (pass --to/--jump to scan the route)"
        )
    _show_plan(reporter, changes)
    new_key = key_change.action == "create" or "--rotate" in key_change.reason
    if dry_run:
        reporter.line("dry run: nothing was changed")
        if new_key:
            public = None  # that key will never exist: the real run generates its own
    else:
        if any(c.variable.key == KNOWN_HOSTS and c.action != "keep" for c in changes) and not yes:
            _confirm_host_keys()
        for change in changes:
            if change.action != "keep":
                api.apply(change)
                reporter.line(f"{change.variable.key} [{environment}]: {change.action}d")
    if public is not None:
        key_type, blob = public.split()[:2]
        origin = "new" if new_key else "existing"
        reporter.line(f"deploy key ({origin}): {key_type} {fingerprint(base64.b64decode(blob))}")
    elif not (dry_run and new_key):
        reporter.line(f"note: the project's {PRIVATE_KEY} is hidden, so its public key is unknown here"
                      " — put that key's public half into the lines below, or use --rotate")  # fmt: skip
    lines = render_ci_key_lines(routes, forwards, public or "CI-PUBLIC-KEY") if routes else ""
    if as_json:
        emit_json({"command": "setup gitlab", "project": project, "environment": environment, "dry_run": dry_run,
                   "changes": [{"key": c.variable.key, "action": c.action, "reason": c.reason} for c in changes],
                   "host_keys": [k.__dict__ for k in scanned], "public_key": public or "",
                   "authorized_keys": lines})  # fmt: skip
    elif lines:
        click.echo(lines, nl=False)


def _plan_key(
    existing: Sequence[Variable], environment: str, comment: str, rotate: bool
) -> tuple[Change, str | None]:
    """The SSH_PRIVATE_KEY change and the key's public line (None for a hidden existing key)."""
    current = find(existing, PRIVATE_KEY, environment)
    if current is None or rotate:  # an existing key is never replaced without --rotate
        value, public = generate_key(comment)
        wanted = Variable(
            PRIVATE_KEY, value, masked=True, protected=True, environment_scope=environment
        )
        change = plan_change(current, wanted)
        return (
            change if current is None else replace(change, reason="--rotate: a new key")
        ), public
    kept = public_key_of(current.value, comment) if current.value is not None else None
    wanted = Variable(
        PRIVATE_KEY, current.value, masked=True, protected=True, environment_scope=environment
    )
    return plan_change(current, wanted), kept


def _plan_known_hosts(
    existing: Sequence[Variable], environment: str, routes: Sequence[Route], options: Any
) -> tuple[Change, list[ScannedKey]]:
    """Scan every hop (statuses relative to the project's SSH_KNOWN_HOSTS) and plan the merged value."""
    from deployer.ssh.keyscan import scan

    current = find(existing, KNOWN_HOSTS, environment)
    text = (current.value or "") if current is not None else ""
    trusted = HostKeyPolicy(known=tuple(parse_known_hosts(text, KNOWN_HOSTS, lenient=True)))
    scanned: list[ScannedKey] = []
    hops: list[tuple[str, int]] = []
    for route in routes:
        seen = {key.line for key in scanned}
        scanned += [k for k in scan(route, options, trusted, hashed=False) if k.line not in seen]
        hops += [hop.known_as for hop in route.hops]
    merged = merge_known_hosts(text, scanned, hops)
    wanted = Variable(
        KNOWN_HOSTS, merged, masked=False, protected=False, environment_scope=environment
    )
    return plan_change(current, wanted), scanned


def _show_fingerprints(reporter: Reporter, scanned: Sequence[ScannedKey]) -> None:
    notes = {"known": f"already in {KNOWN_HOSTS}", "new": "new", "changed": f"CHANGED from {KNOWN_HOSTS}",
             "revoked": f"REVOKED in {KNOWN_HOSTS}"}  # fmt: skip
    reporter.line(
        "host keys found — compare with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on each server:"
    )
    for key in scanned:
        reporter.line(
            f"  {key.hop}: {key.host_id} {key.key_type} {key.fingerprint} ({notes[key.status]})"
        )


def _show_plan(reporter: Reporter, changes: Sequence[Change]) -> None:
    for change in changes:
        variable = change.variable
        flags = ", ".join(n for n in ("masked", "protected") if getattr(variable, n)) or "plain"
        reporter.line(
            f"{variable.key} [{variable.environment_scope}]: {change.action} ({change.reason}; {flags})"
        )


def _confirm_host_keys() -> None:
    """Ask before trusting scanned host keys; refuse when nobody can answer."""
    if not sys.stdin.isatty():
        raise ConfigError("stdin is not a terminal, so the host keys above cannot be confirmed — check their"
                          " fingerprints with the servers' owners, then rerun with --yes")  # fmt: skip
    if not click.confirm(f"Store these host keys in {KNOWN_HOSTS}?", default=False, err=True):
        raise ConfigError("host keys not confirmed — nothing was changed")
