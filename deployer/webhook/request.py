"""A deploy request: what a signed POST asks for, validated against the paths a receiver serves."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace
from http import HTTPStatus
from typing import Any

from deployer.artifact.ignore import check_patterns
from deployer.deploy.hooks import HookSettings
from deployer.deploy.outcome import Provenance
from deployer.deploy.settings import PushSettings
from deployer.deploy.upload import TransferSettings
from deployer.errors import ConfigError
from deployer.remote.layout import validate_shared
from deployer.webhook.signing import Rejected
from deployer.webhook.sources import Source, parse_source

MAX_BODY = 64 << 10  # a deploy request is a few hundred bytes of JSON
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DeployRequest:
    """What a signed request asks for: the same settings as a push, plus where the artifact is."""

    path: str
    source: Source
    sha256: str
    settings: PushSettings
    provenance: Provenance

    def to_document(self) -> dict[str, Any]:
        """The JSON body the pipeline side signs and sends."""
        hooks = self.settings.hooks
        return {
            "path": self.path,
            "sha256": self.sha256,
            "source": self.source.document(),
            "keep": self.settings.keep,
            "shared": list(self.settings.shared),
            "exclude": list(self.settings.exclude),
            "hooks": {
                "before": list(hooks.before),
                "after": list(hooks.after),
                "healthcheck": hooks.healthcheck,
                "timeout": hooks.timeout,
                "healthcheck_retries": hooks.healthcheck_retries,
                "healthcheck_interval": hooks.healthcheck_interval,
                "healthcheck_delay": hooks.healthcheck_delay,
            },
            # secrets: the body is signed and goes over TLS (plain http only to this machine
            # unless --webhook-allow-http); the receiver masks them in the log it keeps
            "env": dict(hooks.env),
            "transfer": {
                "delta": self.settings.transfer.delta,
                "hardlink": self.settings.transfer.hardlink,
            },
            "provenance": asdict(self.provenance),
        }


def _bad(message: str) -> Rejected:
    return Rejected(HTTPStatus.BAD_REQUEST, message)


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"'{name}' must be a list of strings")
    return tuple(value)


def _variables(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _bad("'env' must be an object of names and string values")
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{name}' must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer with hundreds of digits
        number = math.inf
    # JSON as Python reads it has NaN, Infinity and 1e999: none of them is a time limit
    if not math.isfinite(number):
        raise _bad(f"'{name}' must be a finite number, not {number}")
    return number


def parse_request(body: bytes, paths: tuple[str, ...]) -> DeployRequest:
    """Validate a request body against the paths this receiver serves; raise Rejected."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object")
    path = data.get("path") or (paths[0] if len(paths) == 1 else "")
    if not isinstance(path, str) or not path:
        raise _bad("'path' is missing and this receiver serves several paths")
    path = path.rstrip("/") or "/"
    if path not in paths:
        raise Rejected(
            HTTPStatus.FORBIDDEN,
            f"this receiver does not deploy to {path} — it serves {', '.join(paths)}"
            " (add --path to `deployer serve`, or fix --path in CI)",
        )
    sha256 = data.get("sha256")
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        raise _bad("'sha256' must be the artifact's sha256 as 64 lowercase hex digits")
    try:
        source = parse_source(data.get("source"))
    except ValueError as exc:
        raise _bad(str(exc)) from None
    hooks = data.get("hooks", {})
    transfer = data.get("transfer", {})
    origin = data.get("provenance", {})
    if not all(isinstance(v, dict) for v in (hooks, transfer, origin)):
        raise _bad("'hooks', 'transfer' and 'provenance' must be objects")
    keep = data.get("keep", 5)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise _bad("'keep' must be a positive integer")
    healthcheck = hooks.get("healthcheck")
    if healthcheck is not None and not isinstance(healthcheck, str):
        raise _bad("'hooks.healthcheck' must be a string or null")
    retries = hooks.get("healthcheck_retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise _bad("'hooks.healthcheck_retries' must be an integer")
    if not all(isinstance(origin.get(k, ""), str) for k in ("by", "commit", "ref", "pipeline")):
        raise _bad("'provenance' values must be strings")
    try:
        settings = PushSettings(
            path=path,
            keep=keep,
            shared=validate_shared(_strings(data.get("shared", []), "shared")),
            # excludes only leave files out: no widening, a request may choose them
            exclude=check_patterns(_strings(data.get("exclude", []), "exclude")),
            hooks=HookSettings(
                before=_strings(hooks.get("before", []), "hooks.before"),
                after=_strings(hooks.get("after", []), "hooks.after"),
                healthcheck=healthcheck or None,
                timeout=_number(hooks.get("timeout", 300), "hooks.timeout"),
                healthcheck_retries=retries,
                healthcheck_interval=_number(
                    hooks.get("healthcheck_interval", 3), "hooks.healthcheck_interval"
                ),
                healthcheck_delay=_number(
                    hooks.get("healthcheck_delay", 0), "hooks.healthcheck_delay"
                ),
                env=_variables(data.get("env", {})),
            ),
            transfer=TransferSettings(
                delta=bool(transfer.get("delta", True)), hardlink=bool(transfer.get("hardlink"))
            ),
        )
    except ConfigError as exc:
        raise _bad(str(exc)) from None
    provenance = Provenance(
        by=origin.get("by", "") or "webhook",
        commit=origin.get("commit", ""),
        ref=origin.get("ref", ""),
        pipeline=origin.get("pipeline", ""),
    )
    return DeployRequest(path, source, sha256, settings, provenance)


def with_receiver_hooks(
    request: DeployRequest,
    configured: HookSettings,
    allow: bool,
    allowed_env: Collection[str] = (),
) -> DeployRequest:
    """The request with the hooks the receiver runs for its path: those configured there.

    Hooks are commands run on the server, so the webhook secret must not choose them: a request
    naming hook commands other than the configured ones is refused (403), unless the receiver
    was started with --allow-request-hooks; the same ones (a push configured like its receiver)
    are no widening and pass. Variables (--env) reach the hooks only under the names the
    receiver allows (--allow-env): a request with any other name is refused (403).
    """
    asked = request.settings.hooks
    refused = sorted(set(asked.env) - set(allowed_env))
    if refused:
        raise Rejected(
            HTTPStatus.FORBIDDEN,
            f"this receiver does not pass {', '.join(refused)} to its hooks — allow each name on the"
            " receiver (deployer serve --allow-env NAME, or allow_env in its deployer.toml), or drop"
            " it from the push's --env",
        )
    named = (asked.before, asked.after, asked.healthcheck)
    if allow and any(named):
        return request
    if any(named) and named != (configured.before, configured.after, configured.healthcheck):
        raise Rejected(
            HTTPStatus.FORBIDDEN,
            f"this receiver runs the hooks configured for {request.path} and refuses hooks named in"
            " a request — drop --before/--after/--healthcheck from the push (or give it exactly the"
            " receiver's), configure them on the receiver (deployer serve --before/--after/"
            "--healthcheck, or its deployer.toml), or start it with --allow-request-hooks",
        )
    hooks = replace(configured, env=asked.env)  # the receiver's hooks, with the allowed variables
    return replace(request, settings=replace(request.settings, hooks=hooks))
