"""A project's CI/CD variables through python-gitlab: what deployer wants, what is there, what changes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployer.ci.gitlab_api import DEFAULT_GITLAB_URL, gitlab_client
from deployer.errors import ConfigError, GitLabError

if TYPE_CHECKING:  # keyscan brings paramiko: imported only when a route is scanned
    pass


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


@dataclass(frozen=True)
class GitLabSettings:
    """Where GitLab is and the token to use (GITLAB_URL or CI_SERVER_URL, GITLAB_TOKEN)."""

    url: str
    token: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GitLabSettings:
        """Read the settings; a missing token is a configuration error that says how to get one."""
        url = (env.get("GITLAB_URL") or env.get("CI_SERVER_URL") or DEFAULT_GITLAB_URL).rstrip("/")
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
        self.settings = settings
        self.project_path = project
        client = gitlab_client(settings.url, settings.token, timeout=30)
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
