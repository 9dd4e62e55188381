"""Where a receiver gets an artifact from: a GitLab job's artifacts, or an HTTPS URL.

A fetch streams into a private file with a size cap and hashes on the way; a digest that differs
from the one in the signed request is refused before the archive is even opened. The GitLab
token is the receiver's own setting: requests name the project and job, never a credential.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deployer import __version__
from deployer.artifact.model import SUPPORTED, TAR_SUFFIXES
from deployer.ci.gitlab_api import DEFAULT_GITLAB_URL, gitlab_client
from deployer.errors import ArtifactError, ConfigError
from deployer.output import human_size

DEFAULT_MAX_BYTES = 4 << 30
CHUNK = 1 << 16


@dataclass(frozen=True)
class HttpsSource:
    """An artifact published at an HTTPS URL."""

    url: str

    def describe(self) -> str:
        """For log lines (no query string: it may hold a signed token)."""
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def document(self) -> dict[str, object]:
        """The JSON form sent in a deploy request."""
        return {"type": "https", "url": self.url}

    @property
    def file_name(self) -> str:
        """The artifact's file name (its suffix says how to read it)."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class GitlabSource:
    """A file inside a GitLab job's artifacts: by job id, or the latest job of that name on a ref."""

    project: str
    path: str
    job: int | None = None
    ref: str = ""
    job_name: str = ""

    def describe(self) -> str:
        """For log lines."""
        which = (
            f"job {self.job}" if self.job is not None else f"job {self.job_name!r} on {self.ref}"
        )
        return f"GitLab project {self.project} {which}: {self.path}"

    def document(self) -> dict[str, object]:
        """The JSON form sent in a deploy request."""
        found: dict[str, object] = {"type": "gitlab", "project": self.project, "path": self.path}
        if self.job is not None:
            found["job"] = self.job
        else:
            found.update(ref=self.ref, job_name=self.job_name)
        return found

    @property
    def file_name(self) -> str:
        """The artifact's file name (its suffix says how to read it)."""
        return self.path.rsplit("/", 1)[-1]


Source = HttpsSource | GitlabSource


def parse_source(data: object) -> Source:
    """A source from its JSON form; ValueError names what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError("'source' must be an object with a 'type' of 'gitlab' or 'https'")
    kind = data.get("type")
    if kind == "https":
        url = data.get("url")
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme != "https":
            raise ValueError("source.url must be an https:// URL")
        source: Source = HttpsSource(url)
    elif kind == "gitlab":
        project, path, job = data.get("project"), data.get("path"), data.get("job")
        ref, job_name = data.get("ref", ""), data.get("job_name", "")
        if not isinstance(project, (str, int)) or not str(project):
            raise ValueError("source.project must name the GitLab project (id or group/name)")
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
            raise ValueError("source.path must be a relative path inside the job's artifacts")
        if job is not None and (not isinstance(job, int) or isinstance(job, bool) or job <= 0):
            raise ValueError("source.job must be a job id (a positive integer)")
        if not isinstance(ref, str) or not isinstance(job_name, str):
            raise ValueError("source.ref and source.job_name must be strings")
        if job is None and not (ref and job_name):
            raise ValueError("source needs 'job' (an id), or 'ref' and 'job_name'")
        source = GitlabSource(
            str(project), path, job, ref if job is None else "", job_name if job is None else ""
        )
    else:
        raise ValueError("source.type must be 'gitlab' or 'https'")
    artifact_suffix(source.file_name)
    return source


def artifact_suffix(name: str) -> str:
    """The archive suffix of a file name, or ValueError (the receiver only takes archive files)."""
    lowered = name.lower()
    for suffix in (*TAR_SUFFIXES, ".zip"):
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return suffix
    raise ValueError(f"artifact {name!r} is not {SUPPORTED.removeprefix('a directory or ')}")


@dataclass(frozen=True)
class FetchSettings:
    """How the receiver downloads: trusted CAs, GitLab server and token, size cap, timeout."""

    ca_bundle: Path | None = None
    gitlab_url: str = DEFAULT_GITLAB_URL
    gitlab_token: str = field(default="", repr=False)
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = 60.0

    def ssl_context(self) -> ssl.SSLContext:
        """System CAs, or only the given bundle."""
        try:
            return ssl.create_default_context(
                cafile=str(self.ca_bundle) if self.ca_bundle else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read the CA bundle {self.ca_bundle}: {exc}") from exc


class _Download:
    """A file being written: hashed and size-capped as it arrives."""

    def __init__(self, out: IO[bytes], limit: int, what: str) -> None:
        self.out = out
        self.limit = limit
        self.what = what
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ArtifactError(
                f"{self.what} is larger than {human_size(self.limit)}"
                " — raise the receiver's --max-artifact-size if that is expected"
            )
        self.hash.update(chunk)
        self.out.write(chunk)


def fetch(source: Source, settings: FetchSettings, folder: Path, sha256: str | None) -> Path:
    """Download the artifact into folder and check its digest; return the file."""
    destination = folder / ("artifact" + artifact_suffix(source.file_name))
    with open(destination, "xb") as out:
        download = _Download(out, settings.max_bytes, source.describe())
        if isinstance(source, HttpsSource):
            _fetch_https(source, settings, download)
        else:
            _fetch_gitlab(source, settings, download)
    got = download.hash.hexdigest()
    if sha256 is not None and not hmac.compare_digest(got, sha256.lower()):
        raise ArtifactError(
            f"the artifact from {source.describe()} has sha256 {got}, but the signed request says"
            f" {sha256} — it changed after CI hashed it; nothing was deployed"
        )
    return destination


class _HttpsOnly(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from https to anything else."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        if urllib.parse.urlsplit(newurl).scheme != "https":
            raise ArtifactError(
                f"the artifact URL redirects to {newurl.split('?')[0]}, which is not https"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_https(source: HttpsSource, settings: FetchSettings, download: _Download) -> None:
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=settings.ssl_context()), _HttpsOnly()
    )
    request = urllib.request.Request(source.url, headers={"User-Agent": f"deployer/{__version__}"})
    what = source.describe()
    try:
        with opener.open(request, timeout=settings.timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                download.write(chunk)
    except urllib.error.HTTPError as exc:
        raise ArtifactError(f"downloading {what} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        hint = (
            " — give the receiver the CA that signed it (--ca-bundle)"
            if isinstance(reason, ssl.SSLCertVerificationError)
            else ""
        )
        raise ArtifactError(f"cannot download {what}: {reason}{hint}") from exc
    except (TimeoutError, OSError) as exc:
        raise ArtifactError(f"downloading {what} failed: {exc}") from exc


def settings_client(settings: FetchSettings) -> Any:
    """A python-gitlab client with the receiver's token and CA bundle."""
    return gitlab_client(
        settings.gitlab_url,
        settings.gitlab_token,
        timeout=settings.timeout,
        ca_bundle=settings.ca_bundle,
    )


def _fetch_gitlab(source: GitlabSource, settings: FetchSettings, download: _Download) -> None:
    import gitlab
    import requests

    what = source.describe()
    if not settings.gitlab_token:
        raise ArtifactError(
            f"cannot fetch {what}: the receiver has no GitLab token — set DEPLOYER_GITLAB_TOKEN"
            " (a read_api token) where `deployer serve` runs"
        )
    project = settings_client(settings).projects.get(source.project, lazy=True)
    try:
        if source.job is not None:
            job = project.jobs.get(source.job, lazy=True)
            job.artifact(source.path, streamed=True, action=download.write, chunk_size=CHUNK)
        else:
            project.artifacts.raw(
                source.ref, source.path, source.job_name,
                streamed=True, action=download.write, chunk_size=CHUNK,
            )  # fmt: skip
    except gitlab.exceptions.GitlabError as exc:
        code = exc.response_code
        hint = {
            401: " — the receiver's GitLab token is invalid or expired",
            403: " — the receiver's GitLab token may not read this project (needs read_api)",
            404: " — check the project, the job and the path inside its artifacts",
        }.get(code or 0, "")
        raise ArtifactError(f"GitLab refused {what}: HTTP {code}{hint}") from exc
    except requests.RequestException as exc:
        raise ArtifactError(f"cannot reach GitLab at {settings.gitlab_url}: {exc}") from exc
