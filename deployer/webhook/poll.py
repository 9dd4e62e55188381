"""Pull mode (``deployer serve --poll``): deploy the newest successful pipeline of a GitLab ref.

For servers that accept no inbound connection at all. Each cycle asks GitLab for the newest
successful pipeline on the ref; if it is not the one deployed last (the deploy history records
pipeline URLs, so a restart does not redeploy), the named job's artifact file is fetched and
deployed through the same path as a webhook request. A pipeline is tried once: a failed deploy
waits for the next pipeline rather than retrying in a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deployer.deploy.manage import list_target
from deployer.deploy.outcome import Outcome, Provenance
from deployer.deploy.settings import PushSettings
from deployer.errors import DeployerError
from deployer.output import Reporter
from deployer.remote.local import LocalExecutor
from deployer.webhook.deployments import deploy_from_source
from deployer.webhook.sources import FetchSettings, GitlabSource, settings_client

DEFAULT_INTERVAL = 60.0
POLLED_BY = "deployer serve --poll"


@dataclass(frozen=True)
class PollSettings:
    """Which pipelines to watch and which file of which job to deploy."""

    project: str
    ref: str
    job_name: str
    artifact_path: str
    interval: float = DEFAULT_INTERVAL


@dataclass(frozen=True)
class Pipeline:
    """The parts of a GitLab pipeline a deploy needs."""

    id: int
    sha: str
    web_url: str


class Poller:
    """Watches one project/ref and deploys new successful pipelines to one path."""

    def __init__(
        self,
        poll: PollSettings,
        push: PushSettings,
        fetching: FetchSettings,
        reporter: Reporter,
        label: str,
    ) -> None:
        self.poll = poll
        self.push = push
        self.fetching = fetching
        self.reporter = reporter
        self.label = label
        self.project: Any = settings_client(fetching).projects.get(poll.project, lazy=True)
        self.handled = self._last_deployed()

    def _last_deployed(self) -> str:
        """The pipeline URL of the newest deploy recorded in the history ('' when none)."""
        listing = list_target(LocalExecutor(self.label), self.push.path, history_lines=200)
        history: Any = listing.details["history"]
        deploys = [h for h in history if h.get("action") == "deploy" and h.get("pipeline")]
        return str(deploys[-1]["pipeline"]) if deploys else ""

    def newest(self) -> Pipeline | None:
        """The newest successful pipeline on the ref."""
        found = self.project.pipelines.list(
            ref=self.poll.ref,
            status="success",
            order_by="id",
            sort="desc",
            per_page=1,
            get_all=False,
        )
        if not found:
            return None
        return Pipeline(int(found[0].id), str(found[0].sha), str(found[0].web_url))

    def job_id(self, pipeline: Pipeline) -> int | None:
        """The id of the pipeline's successful job with the configured name."""
        jobs = self.project.pipelines.get(pipeline.id, lazy=True).jobs.list(
            scope="success", get_all=True
        )
        matching = [int(job.id) for job in jobs if job.name == self.poll.job_name]
        return max(matching) if matching else None  # a retried job: its latest run

    def cycle(self) -> Outcome | None:
        """One look at GitLab; deploy when there is a new pipeline. Returns the deploy's outcome."""
        import gitlab
        import requests

        try:
            pipeline = self.newest()
            if pipeline is None or pipeline.web_url == self.handled:
                return None
            job = self.job_id(pipeline)
        except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
            self.reporter.line(
                f"asking GitLab for pipelines failed: {exc}; trying again next cycle"
            )
            return None
        self.handled = pipeline.web_url
        if job is None:
            self.reporter.line(
                f"pipeline {pipeline.id} has no successful job {self.poll.job_name!r}; skipping it"
            )
            return None
        self.reporter.line(
            f"new pipeline {pipeline.id} on {self.poll.ref} ({pipeline.sha[:12]}): deploying"
        )
        source = GitlabSource(self.poll.project, self.poll.artifact_path, job=job)
        provenance = Provenance(POLLED_BY, pipeline.sha, self.poll.ref, pipeline.web_url)
        try:
            return deploy_from_source(
                source, None, self.push, provenance, self.fetching, self.reporter, self.label
            )
        except DeployerError as exc:
            self.reporter.line(
                f"deploy of pipeline {pipeline.id} failed: {exc} — waiting for the next pipeline"
            )
            return None

    def run(self, cycles: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        """Poll every interval (forever, or `cycles` times)."""
        self.reporter.line(
            f"watching {self.poll.project} {self.poll.ref} for successful pipelines every"
            f" {self.poll.interval:g} s; deploying job {self.poll.job_name!r} file"
            f" {self.poll.artifact_path} to {self.push.path}"
            + (f" (last deployed: {self.handled})" if self.handled else "")
        )
        done = 0
        while cycles is None or done < cycles:
            if done:
                sleep(self.poll.interval)
            self.cycle()
            done += 1
