"""``deployer serve`` as a service: the deploy directories it serves, its secrets, its systemd unit.

Secrets (the webhook secret, the GitLab token, the TLS key) come from the environment or from
files systemd hands over with ``LoadCredential=``; they are never part of a request, a log line
or the unit file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from deployer.errors import ConfigError
from deployer.systemd import Specifier, UnitSpec, render_unit

SECRET_CREDENTIAL = "webhook-secret"
TOKEN_CREDENTIAL = "gitlab-token"
TLS_KEY_CREDENTIAL = "tls-key"


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
) -> str:
    """The unit file text for a receiver (deployer: how the service starts deployer)."""
    argv = [*deployer, "serve", "--listen", f"{host}:{port}"]
    for path in served:
        argv += ["--path", path]
    argv += [
        "--secret-file", Specifier(f"%d/{SECRET_CREDENTIAL}"), "--gitlab-url", gitlab_url,
        "--max-artifact-size", str(max_artifact_size), "--max-body", str(max_body), "--window", f"{window:g}",
    ]  # fmt: skip
    # releases stay readable by the web server; a running deploy ends before the service stops
    # (SIGTERM makes deployer exit 130 once it has)
    extra = [
        f"ReadWritePaths={' '.join(served)}", "UMask=0022", "TimeoutStopSec=infinity", "SuccessExitStatus=130",
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
