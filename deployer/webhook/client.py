"""The pipeline side of the webhook: sign a deploy request, send it, follow the deploy to its end.

``deployer push --mode webhook`` (or ``--mode auto`` when the SSH route cannot be established)
hashes the artifact, tells the receiver where to fetch it (a GitLab job's artifacts or an HTTPS
URL), then follows the deploy's log until its final state: the job shows the hook output and
fails with the deploy's own exit code. Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

from deployer import __version__
from deployer.deploy.outcome import Status
from deployer.errors import ConfigError, ConnectError, DeployerError, ExitCode, WebhookError
from deployer.webhook.options import WebhookOptions

READ_TIMEOUT = 60.0  # the receiver sends a heartbeat line every 15 s while a deploy is quiet
FOLLOW_RETRIES = 5  # reconnects in a row without progress before giving up on the status


def is_loopback(host: str) -> bool:
    """localhost or a loopback address literal (a name is not resolved to find out)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookClient:
    """Signed requests to one receiver, whose signed answers alone are believed."""

    def __init__(
        self, url: str, secret: bytes, ca_bundle: Path | None = None, allow_http: bool = False
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--webhook-url {url!r} must be an http:// or https:// URL")
        # plain http:// to another machine: the request (with any --env values) is readable on the way
        self.cleartext = parts.scheme == "http" and not is_loopback(parts.hostname or "")
        if self.cleartext and not allow_http:
            raise ConfigError(
                f"--webhook-url {url!r}: plain http:// only goes to this machine (localhost or"
                " 127.0.0.1) — use https:// (deployer serve --tls-cert), or pass"
                " --webhook-allow-http if the network in between is trusted"
            )
        # a path in the URL is a proxy's prefix: the receiver sees (and verifies) what follows it
        self.base = url.rstrip("/")
        self.host = parts.netloc
        self.secret = secret
        context = None
        if parts.scheme == "https":
            try:
                context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot read --webhook-ca-bundle {ca_bundle}: {exc}") from exc
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

    def _open(
        self, method: str, path: str, body: bytes | None, timeout: float
    ) -> tuple[IO[bytes], str]:
        """The receiver's answer to a freshly signed request, and that request's id."""
        from deployer.webhook.signing import (
            ID_HEADER,
            RESPONSE_SIGNATURE_HEADER,
            answer_is_signed,
            sign_headers,
        )

        signed = sign_headers(self.secret, method, path, body or b"", time.time())
        headers = {"User-Agent": f"deployer/{__version__}", **signed}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.base + path, data=body, headers=headers, method=method
        )
        try:
            response: IO[bytes] = self.opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read()
            except OSError:
                raw = b""
            try:
                message = json.loads(raw).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = exc.reason
            given = exc.headers.get(RESPONSE_SIGNATURE_HEADER)
            if not answer_is_signed(self.secret, exc.code, signed[ID_HEADER], raw, given):
                message = f"{message} (an unsigned answer: maybe not from the receiver)"
            raise WebhookError(
                f"the webhook receiver at {self.host} refused {method} {path} (HTTP {exc.code}): {message}"
            ) from exc
        except urllib.error.URLError as exc:
            hint = (
                " — trust its CA with --webhook-ca-bundle"
                if isinstance(exc.reason, ssl.SSLCertVerificationError)
                else " — is `deployer serve` running and reachable from CI?"
            )
            raise ConnectError(
                f"cannot reach the webhook receiver at {self.base}: {exc.reason}{hint}"
            ) from exc
        except (TimeoutError, OSError) as exc:
            raise ConnectError(f"cannot reach the webhook receiver at {self.base}: {exc}") from exc
        return response, signed[ID_HEADER]

    def _forged(self, what: str) -> WebhookError:
        return WebhookError(
            f"{what} from {self.host} is not signed with DEPLOYER_WEBHOOK_SECRET for this request"
            " — an older deployer serve, another secret, or something between CI and the receiver"
            " changed it; the deploy's outcome is unknown: see the receiver's log"
        )

    def submit(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """POST a deploy request; return the receiver's signed answer (id, status_url)."""
        from deployer.webhook.signing import RESPONSE_SIGNATURE_HEADER, answer_is_signed

        body = json.dumps(document, sort_keys=True).encode()
        response, request_id = self._open("POST", "/deploys", body, READ_TIMEOUT)
        with response:
            raw = response.read()
            status = int(response.status)  # type: ignore[attr-defined]
            given = response.headers.get(RESPONSE_SIGNATURE_HEADER)  # type: ignore[attr-defined]
        if not answer_is_signed(self.secret, status, request_id, raw, given):
            raise self._forged("the answer to POST /deploys")
        try:
            answer: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise self._forged("the answer to POST /deploys") from None
        return answer

    def follow(
        self, deploy_id: str, on_line: Callable[[str], None], deadline: float
    ) -> dict[str, Any]:
        """Stream the deploy's log to on_line until its final state (reconnecting if cut off).

        Every line must carry the receiver's signature for this request, in order: a line
        that does not ends the job (exit 12), it is never shown or believed."""
        from deployer.webhook.signing import StreamVerifier

        seen, failures = 0, 0
        while True:
            try:
                response, request_id = self._open(
                    "GET", f"/deploys/{deploy_id}?follow=1&from={seen}", None, READ_TIMEOUT
                )
                verifier = StreamVerifier(self.secret, request_id)
                with response:
                    for raw in response:
                        item: dict[str, Any] = json.loads(raw)
                        if not isinstance(item, dict) or not verifier.check(item):
                            raise self._forged(f"a status line of deploy {deploy_id}")
                        if "line" in item:
                            on_line(str(item["line"]))
                            seen, failures = seen + 1, 0
                        elif "state" in item:
                            return item
            except (ConnectError, OSError, ValueError, http.client.HTTPException) as exc:
                failures += 1
                if failures > FOLLOW_RETRIES or time.monotonic() > deadline:
                    raise WebhookError(
                        f"lost the status of deploy {deploy_id} on {self.host} ({exc}) — the deploy"
                        " may still finish; see the receiver's log (journalctl) for its outcome"
                    ) from exc
                time.sleep(min(2**failures, 10))
                continue
            if time.monotonic() > deadline:
                raise WebhookError(
                    f"deploy {deploy_id} on {self.host} did not finish in time — see the receiver's log"
                )


def error_for(code: int, message: str) -> DeployerError:
    """The error class that carries a given exit code (the receiver reports codes, not classes)."""
    pending = [DeployerError]
    while pending:
        cls = pending.pop()
        if cls.exit_code == code:
            return cls(message)
        pending.extend(cls.__subclasses__())
    return DeployerError(message)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WebhookPush:
    """A push through the receiver: configured (and checked) up front, run when needed."""

    def __init__(
        self, options: WebhookOptions, artifact: Path, path: str, env: Mapping[str, str]
    ) -> None:
        from deployer.webhook.signing import load_secret
        from deployer.webhook.sources import GitlabSource, HttpsSource, Source, artifact_suffix

        if not options.webhook_url:
            raise ConfigError(
                f"--mode {options.mode} needs --webhook-url (or DEPLOYER_WEBHOOK_URL)"
            )
        if artifact.is_dir():
            raise ConfigError(
                f"--mode {options.mode}: the receiver fetches a file — package {artifact} as a"
                " .tar.gz or .zip in the build job and deploy that"
            )
        self.client = WebhookClient(
            options.webhook_url,
            load_secret(env.get("DEPLOYER_WEBHOOK_SECRET")),
            options.webhook_ca_bundle,
            options.webhook_allow_http,
        )
        source: Source
        if options.artifact_url:
            source = HttpsSource(options.artifact_url)
            if urllib.parse.urlsplit(options.artifact_url).scheme != "https":
                raise ConfigError(f"--artifact-url {source.describe()} must be an https:// URL")
        elif options.gitlab_job or (options.gitlab_ref and options.gitlab_job_name):
            project = options.gitlab_project or env.get("CI_PROJECT_ID", "")
            if not project:
                raise ConfigError(
                    "--gitlab-job needs --gitlab-project (CI_PROJECT_ID in GitLab CI)"
                )
            source = GitlabSource(
                project, _path_in_job(artifact, env), options.gitlab_job,
                options.gitlab_ref or "", options.gitlab_job_name or "",
            )  # fmt: skip
        else:
            raise ConfigError(
                f"--mode {options.mode} must tell the receiver where to fetch {artifact}: pass"
                " --gitlab-job ID (the build job), --gitlab-ref with --gitlab-job-name, or --artifact-url"
            )
        try:
            artifact_suffix(source.file_name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.source = source
        self.artifact = artifact
        self.path = path
        self.timeout = options.webhook_timeout
        self.label = f"webhook {self.client.host}"

    def run(
        self, settings: Any, provenance: Any, reporter: Any
    ) -> tuple[list[Any], DeployerError | None]:
        """Send the request and follow the deploy; (one outcome, the error if it failed)."""
        from deployer.artifact.scan import open_artifact
        from deployer.deploy.outcome import Outcome
        from deployer.webhook.request import DeployRequest

        try:
            # refuse an unsafe archive before asking anyone
            opened = open_artifact(self.artifact, exclude=settings.exclude)
            digest = sha256_file(self.artifact)
            request = DeployRequest(self.path, self.source, digest, settings, provenance)
            reporter.line(
                f"deploying {self.artifact} ({opened.file_count} files, sha256 {digest[:16]}…) through"
                f" the webhook at {self.client.base}; the receiver fetches {self.source.describe()}"
            )
            if settings.hooks.env and self.client.cleartext:
                reporter.line(
                    f"warning: --env values go to {self.client.base} in plain http (--webhook-allow-http):"
                    " anyone on the network in between can read them — use https://"
                )
            answer = self.client.submit(request.to_document())
            deploy_id = str(answer["id"])
            reporter.line(f"[{self.label}] accepted as deploy {deploy_id}; following its log")
            final = self.client.follow(deploy_id, reporter.line, time.monotonic() + self.timeout)
        except DeployerError as exc:
            return [
                Outcome(self.label, Status.FAILED, error=str(exc), exit_code=int(exc.exit_code))
            ], exc
        if final.get("state") == Status.DEPLOYED:
            known = {f.name for f in dataclasses.fields(Outcome)}
            outcome = Outcome(
                **{k: v for k, v in (final.get("outcome") or {}).items() if k in known}
            )
            return [dataclasses.replace(outcome, target=self.label)], None
        code = int(final.get("exit_code") or ExitCode.ERROR)
        error = error_for(code, str(final.get("error") or "the deploy failed on the receiver"))
        return [Outcome(self.label, Status.FAILED, error=str(error), exit_code=code)], error


def _path_in_job(artifact: Path, env: Mapping[str, str]) -> str:
    """ARTIFACT as a path inside the job's artifacts (relative to the project directory)."""
    if artifact.is_absolute():
        project_dir = env.get("CI_PROJECT_DIR", "")
        with contextlib.suppress(ValueError):  # outside the project: refused below
            artifact = artifact.relative_to(project_dir) if project_dir else artifact
    posix = PurePosixPath(artifact.as_posix())
    if posix.is_absolute() or ".." in posix.parts:
        raise ConfigError(
            f"{artifact}: with --gitlab-job give ARTIFACT as it is stored in the job's artifacts,"
            " relative to the project directory (like dist/app.tar.gz)"
        )
    return str(posix)
