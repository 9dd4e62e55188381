"""``deployer serve`` as a service: the deploy directories it serves, its secrets, its systemd unit.

Secrets (the webhook secret, the GitLab token, the TLS key) come from the environment or from
files systemd hands over with ``LoadCredential=``; they are never part of a request, a log line
or the unit file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from deployer.deploy.hooks import HookSettings
from deployer.errors import ConfigError
from deployer.systemd import Specifier, UnitSpec, render_unit

SECRET_CREDENTIAL = "webhook-secret"
TOKEN_CREDENTIAL = "gitlab-token"
TLS_KEY_CREDENTIAL = "tls-key"
REPLAY_FILE = "webhook-requests"


def read_secret(env: Mapping[str, str], variable: str, file: Path | None) -> tuple[str, str]:
    """(value, where it came from) from a file (a systemd credential) or else the environment."""
    if file is None:
        return env.get(variable, ""), variable
    try:
        return file.read_text(), str(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from exc


def served_paths(paths: Sequence[str]) -> tuple[str, ...]:
    """The deploy directories a receiver serves: absolute, without a trailing slash."""
    if not paths:
        raise ConfigError("no deploy directory — pass --path DIR (the directory deploys go to)")
    for path in paths:
        if not path.startswith("/") or "\n" in path:
            raise ConfigError(f"--path {path!r} must be an absolute directory, like /srv/app")
    return tuple(p.rstrip("/") or "/" for p in paths)


_HOOK_FIELDS = {"before": "before", "after": "after", "healthcheck": "healthcheck",
                "hook_timeout": "timeout", "healthcheck_retries": "healthcheck_retries",
                "healthcheck_interval": "healthcheck_interval",
                "healthcheck_delay": "healthcheck_delay"}  # fmt: skip


def served_hooks(
    served: Sequence[str], common: HookSettings, per_path: object
) -> dict[str, HookSettings]:
    """Each served path's hooks: common (the flags), with its [served."PATH"] table on top.

    per_path is what deployer.toml holds under `served` (None when nothing): a table per served
    path with before, after, healthcheck, hook_timeout, healthcheck_retries, healthcheck_interval,
    healthcheck_delay.
    """
    hooks = {path: common for path in served}
    if per_path is None:
        return hooks
    where = 'deployer.toml: [served."/srv/app"]'
    if not isinstance(per_path, Mapping):
        raise ConfigError(
            f"per-path hooks go into {where} tables (before, after, healthcheck, ...)"
        )
    for raw, table in per_path.items():
        path = str(raw).rstrip("/") or "/"
        if path not in hooks:
            raise ConfigError(
                f"deployer.toml: [served.{str(raw)!r}] is not a served path — this receiver serves"
                f" {', '.join(served)}"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"deployer.toml: served.{str(raw)!r} must be a table like {where}")
        unknown = sorted(str(k) for k in table if str(k).replace("-", "_") not in _HOOK_FIELDS)
        if unknown:
            raise ConfigError(
                f"deployer.toml: [served.{str(raw)!r}] has unknown keys {', '.join(unknown)} — known:"
                f" {', '.join(_HOOK_FIELDS)}"
            )
        changes = {_HOOK_FIELDS[str(k).replace("-", "_")]: v for k, v in table.items()}
        for name in ("before", "after"):
            if name in changes:
                value = changes[name]
                changes[name] = (value,) if isinstance(value, str) else value
                if not isinstance(changes[name], (list, tuple)) or not all(
                    isinstance(c, str) for c in changes[name]
                ):
                    raise ConfigError(f"deployer.toml: served.{str(raw)!r}.{name} must be commands")
                changes[name] = tuple(changes[name])
        if not isinstance(changes.get("healthcheck", ""), str):
            raise ConfigError(f"deployer.toml: served.{str(raw)!r}.healthcheck must be a command")
        for name in ("timeout", "healthcheck_retries", "healthcheck_interval", "healthcheck_delay"):
            value = changes.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"deployer.toml: served.{str(raw)!r}: {name} must be a number")
        hooks[path] = replace(hooks[path], **changes)
    return hooks


def hook_arguments(
    hooks: HookSettings, allow_request_hooks: bool, allow_env: Sequence[str] = ()
) -> list[str]:
    """The receiver's hook flags (and the variables it lets requests pass) as command-line words
    (for the unit's ExecStart)."""
    words = [word for command in hooks.before for word in ("--before", command)]
    words += [word for command in hooks.after for word in ("--after", command)]
    if hooks.healthcheck:
        words += ["--healthcheck", hooks.healthcheck]
    defaults = HookSettings()
    for flag, value, default in (
        ("--hook-timeout", hooks.timeout, defaults.timeout),
        ("--healthcheck-retries", hooks.healthcheck_retries, defaults.healthcheck_retries),
        ("--healthcheck-interval", hooks.healthcheck_interval, defaults.healthcheck_interval),
        ("--healthcheck-delay", hooks.healthcheck_delay, defaults.healthcheck_delay),
    ):
        if value != default:
            words += [flag, f"{value:g}"]
    words += [word for name in allow_env for word in ("--allow-env", name)]
    return [*words, *(["--allow-request-hooks"] if allow_request_hooks else [])]


def receiver_unit(
    *,
    served: Sequence[str],
    host: str,
    port: int,
    secret_file: Path,
    gitlab_url: str,
    max_artifact_size: int,
    max_body: int,
    window: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    ca_bundle: Path | None,
    gitlab_token_file: Path | None,
    name: str,
    user: str,
    deployer: Sequence[str],
    hooks: Sequence[str] = (),
) -> str:
    """The unit file text for a receiver (deployer: how the service starts deployer, hooks: its
    hook flags, from hook_arguments)."""
    argv = [*deployer, "serve", "--listen", f"{host}:{port}"]
    for path in served:
        argv += ["--path", path]
    state = name.replace("@", "-")  # StateDirectory=: the replay record survives restarts there
    argv += [
        "--secret-file", Specifier(f"%d/{SECRET_CREDENTIAL}"), "--gitlab-url", gitlab_url,
        "--replay-file", Specifier(f"%S/{state}/{REPLAY_FILE}"),
        "--max-artifact-size", str(max_artifact_size), "--max-body", str(max_body), "--window", f"{window:g}",
        *hooks,
    ]  # fmt: skip
    # releases stay readable by the web server; a running deploy ends before the service stops
    # (SIGTERM makes deployer exit 130 once it has)
    extra = [
        f"ReadWritePaths={' '.join(served)}", "UMask=0022", "TimeoutStopSec=infinity", "SuccessExitStatus=130",
        f"StateDirectory={state}", "StateDirectoryMode=0700",
    ]  # fmt: skip
    if tls_cert is not None:
        argv += ["--tls-cert", str(tls_cert.absolute())]
    if tls_key is not None:
        argv += ["--tls-key", Specifier(f"%d/{TLS_KEY_CREDENTIAL}")]
        extra.append(f"LoadCredential={TLS_KEY_CREDENTIAL}:{tls_key.absolute()}")
    if ca_bundle is not None:
        argv += ["--ca-bundle", str(ca_bundle.absolute())]
    if gitlab_token_file is not None:
        argv += ["--gitlab-token-file", Specifier(f"%d/{TOKEN_CREDENTIAL}")]
        extra.append(f"LoadCredential={TOKEN_CREDENTIAL}:{gitlab_token_file.absolute()}")
    return render_unit(
        UnitSpec(
            name=name,
            description=f"deployer serve: webhook deploys to {', '.join(served)}",
            argv=argv,
            user=user,
            key_file=str(secret_file.absolute()),
            runtime_directory=name.replace("@", "-"),
            credential=SECRET_CREDENTIAL,
            written_by="`deployer serve install-service`; see docs/webhook.md",
            extra=extra,
        )
    )


def next_steps(name: str, user: str, served: Sequence[str], secret_file: Path) -> list[str]:
    """What to run as root once the unit is written."""
    return [
        "next steps (as root):",
        f"  id {user} >/dev/null 2>&1 || useradd --system --create-home --shell /bin/sh {user}",
        f"  install -d -o {user} {' '.join(served)}     # the deploy directories",
        f"  (umask 077; openssl rand -hex 32 > {secret_file})   # CI's DEPLOYER_WEBHOOK_SECRET: the same value",
        f"  systemctl daemon-reload && systemctl enable --now {name}.service",
        f"  journalctl -u {name} -f",
    ]
