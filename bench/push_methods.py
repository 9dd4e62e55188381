"""The methods the push benchmark compares, and how one run of each is timed, verified and recorded.

Bench runs `deployer push` and the plain OpenSSH methods (tar | ssh, tar | gzip -1 | ssh,
rsync -az, scp -r) through the Topology, one command per sample: a full deploy, a redeploy with
1 % of the files changed, a deploy to N targets at once. Every run goes into a fresh directory
and is verified afterwards (file list, sizes, sha256); the samples of one cell are collected in
its Result, whose summary (median or min) is what the report shows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import corpora
from bench.corpora import Corpus
from bench.processes import Run, json_object, timed
from bench.push_config import (
    CACHE,
    DEPLOYER,
    REBUILD,
    REDEPLOY,
    REPO,
    RSYNC,
    SCP,
    TAR,
    TARGZ,
    TARZSTD,
    Profile,
    deployer_flags,
)
from bench.push_topology import Topology


@dataclass
class Result:
    """One cell: every sample of one method on one corpus, profile and scenario (verified runs only)."""

    profile: str
    corpus: str
    method: str
    scenario: str = "full"  # full | redeploy | parallel | memory
    targets: int = 1
    seconds: float | None = None
    ok: bool = False
    error: str = ""
    maxrss_kb: int | None = None
    samples: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Runs every method through the topology, verifies, and records results."""

    def __init__(self, topo: Topology, args: argparse.Namespace, logdir: Path) -> None:
        self.topo, self.args, self.logdir = topo, args, logdir
        self.results: list[Result] = []
        self.counter = 0
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.push_help = self._push_help()

    def _push_help(self) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "deployer", "push", "--help"],
            capture_output=True,
            text=True,
            env=self.topo.env(),
            cwd=REPO,
            timeout=60,
        )
        return proc.stdout

    @property
    def has_parallel(self) -> bool:
        """Whether this deployer's `push --help` offers --parallel (without it N > 1 is n/a)."""
        return "--parallel" in self.push_help

    def _name(self, label: str) -> str:
        self.counter += 1
        return f"{self.counter:03d}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}"

    def _timeout(self, profile: Profile, nbytes: int, files: int, targets: int = 1) -> float:
        wire = nbytes * targets / profile.rate_bytes
        return min(3600.0, 120 + 10 * wire + files * profile.rtt_ms / 1000 * 6)

    # one command -----------------------------------------------------------------------

    def deployer_argv(
        self, tree: Path, remote: str, targets: int = 1, extra: tuple[str, ...] = ()
    ) -> list[str]:
        """The `deployer push` command line (client side) for `targets` targets, --json output."""
        argv = [
            sys.executable,
            "-m",
            "deployer",
            "push",
            str(tree),
            *self.topo.route(targets),
            "--path",
            remote,
            "--json",
            *extra,
        ]
        if targets > 1 and self.has_parallel:
            argv += ["--parallel", str(targets)]
        return self.topo.client(argv)

    def plain_argv(self, method: str, tree: Path, remote: str, index: int = 0) -> list[str]:
        """The shell pipeline (client side) of a plain method, deploying tree to target `index`."""
        ssh, src, dst = self.topo.ssh(index), shlex.quote(str(tree)), shlex.quote(remote)
        if method == TAR:
            script = f"tar -C {src} -cf - . | {ssh} 'mkdir -p {dst} && tar -xf - -C {dst}'"
        elif method == TARGZ:
            script = (
                f"tar -C {src} -cf - . | gzip -1 | {ssh} 'mkdir -p {dst} && tar -xzf - -C {dst}'"
            )
        elif method == TARZSTD:
            script = (
                f"tar -C {src} -cf - . | zstd -3 -T0 -q | "
                f"{ssh} 'mkdir -p {dst} && zstd -dcq | tar -xf - -C {dst}'"
            )
        elif method == RSYNC:
            script = f"rsync -az -e {shlex.quote(f'ssh -F {self.topo.ssh_config}')} {src}/ bench-t{index}:{dst}/"
        elif method == SCP:
            script = (
                f"scp -r -q -F {shlex.quote(str(self.topo.ssh_config))} {src} bench-t{index}:{dst}"
            )
        else:
            raise ValueError(method)
        return self.topo.client(["bash", "-c", "set -o pipefail; " + script])

    def execute(
        self, argv: list[str], *, env: dict[str, str], timeout: float, name: str
    ) -> Run | str:
        """Run one command timed; a "skipped: ..." string once the --max-minutes budget is used up."""
        if time.monotonic() > self.deadline:
            return "skipped: --max-minutes time budget used up"
        return timed(argv, env=env, timeout=timeout, logdir=self.logdir, name=name)

    def _result(
        self, profile: Profile, corpus: Corpus, method: str, scenario: str, targets: int = 1
    ) -> Result:
        """The result that collects every sample of one cell (created on first use)."""
        for result in self.results:
            if (result.profile, result.corpus, result.method, result.scenario, result.targets) == (
                profile.key, corpus.name, method, scenario, targets,
            ):  # fmt: skip
                return result
        result = Result(profile.key, corpus.name, method, scenario=scenario, targets=targets)
        self.results.append(result)
        return result

    def record(self, result: Result, run: Run | str, check: str | None = None) -> Result:
        """Add one run to its cell: a sample when it worked and verified, else the cell's error."""
        if isinstance(run, str):
            result.error = run
        elif run.timed_out:
            result.error = f"timed out after {run.seconds:.0f} s"
        elif run.status != 0:
            result.error = run.tail
        elif check:
            result.error = f"verification failed: {check}"
        else:
            result.samples.append(round(run.seconds, 3))
        if not isinstance(run, str) and result.method.startswith("deployer"):
            result.maxrss_kb = max(result.maxrss_kb or 0, run.maxrss_kb)
            result.extra.update(_deployer_details(run.stdout))
            upload = re.findall(r"on the wire \[[^]]*\] in ([\d.]+) s", run.stderr)
            if upload:
                result.extra.setdefault("upload_seconds", []).append(max(float(u) for u in upload))
        result.ok = not result.error and bool(result.samples)
        result.seconds = self.summary(result.samples) if result.ok else None
        self._say(result, run)
        return result

    def summary(self, samples: list[float]) -> float:
        """The cell's figure: median of its samples, or min with --stat min."""
        return min(samples) if self.args.stat == "min" else statistics.median(samples)

    def _say(self, result: Result, run: Run | str) -> None:
        what = f"{result.samples[-1]:.2f} s" if result.samples else "-"
        if result.error:
            what = f"FAILED: {result.error}"
        rss = (
            f", peak RSS {run.maxrss_kb / 1024:.0f} MB"
            if isinstance(run, Run) and result.method.startswith("deployer")
            else ""
        )
        print(
            f"  [{result.profile}] {result.scenario:9s} {result.corpus:6s} x{result.targets:<2d} "
            f"{result.method:32s} {what}{rss}",
            file=sys.stderr,
            flush=True,
        )

    def _clean(self, name: str) -> None:
        for data in dict.fromkeys(self.topo.data):
            shutil.rmtree(data / name, ignore_errors=True)

    def _deployed(self, data: Path, name: str) -> Path:
        current = data / name / "current"
        return current.resolve() if current.is_symlink() else current

    def _verified(
        self, run: Run | str, dests: list[Path], manifest: corpora.Manifest
    ) -> str | None:
        if isinstance(run, str) or run.status:
            return None
        return next(
            (f"target {i}: {c}" for i, d in enumerate(dests) if (c := corpora.verify(d, manifest))),
            "",
        )

    # scenarios: each call adds one sample to its cell -------------------------------------

    def full(
        self,
        profile: Profile,
        corpus: Corpus,
        method: str,
        ssh_setup: float,
        scenario: str = "full",
    ) -> Result:
        """One full deploy of `corpus` into a fresh directory."""
        result = self._result(profile, corpus, method, scenario)
        if result.error:
            return result  # a failed cell is not retried
        source = corpus
        if method == SCP:
            source = corpora.subset(corpus, CACHE / "corpora", self.args.scp_files)
        timeout = self._timeout(profile, source.bytes, source.files * 3)
        name = self._name(f"{method}-{corpus.name}-{profile.key}")
        remote = str(self.topo.mnt / name)
        if method.startswith(DEPLOYER):
            argv = self.deployer_argv(source.tree, remote, extra=deployer_flags(method))
            env, dest = self.topo.deployer_env(), self._deployed
        else:
            argv, env = self.plain_argv(method, source.tree, remote), self.topo.env()
            dest = lambda data, name: data / name  # noqa: E731
        run = self.execute(argv, env=env, timeout=timeout, name=name)
        self.record(
            result, run, self._verified(run, [dest(self.topo.data[0], name)], source.manifest)
        )
        self._clean(name)
        if result.ok and source is not corpus:
            # linear in the file count, after the connection set-up that every run pays once
            measured = result.seconds or 0.0
            result.seconds = ssh_setup + (measured - ssh_setup) * corpus.files / source.files
            result.note = f"est. from {source.files}/{corpus.files} files"
            result.extra.update(
                measured_seconds=round(measured, 3),
                subset_files=source.files,
                ssh_setup_seconds=round(ssh_setup, 3),
            )
        return result

    def redeploy(
        self, profile: Profile, corpus: Corpus, v2: Corpus, method: str, scenario: str = REDEPLOY
    ) -> Result:
        """Deploy v1 (untimed), then time deploying v2 (1 % changed) onto it.

        REDEPLOY deploys v2 as it is (its unchanged files are v1's inodes: mtimes kept); REBUILD
        first copies it (untimed) into a fresh tree, every file and directory new, as a CI job's
        fresh checkout and build would make it.
        """
        result = self._result(profile, corpus, method, scenario)
        if result.error:
            return result
        name = self._name(f"{scenario}-{method}-{corpus.name}-{profile.key}")
        fresh = self.logdir / f"{name}-tree"
        if scenario == REBUILD:
            shutil.rmtree(fresh, ignore_errors=True)
            shutil.copytree(v2.tree, fresh, copy_function=shutil.copy)  # new inodes and mtimes
            v2 = dataclasses.replace(v2, tree=fresh)
        remote = str(self.topo.mnt / name)
        timeout = self._timeout(profile, corpus.bytes, corpus.files)
        if method.startswith("deployer"):
            extra = deployer_flags(method)
            env = self.topo.deployer_env()
            first_argv = self.deployer_argv(corpus.tree, remote, extra=extra)
            argv = self.deployer_argv(v2.tree, remote, extra=extra)
            dest = self._deployed(self.topo.data[0], name)
        else:
            env = self.topo.env()
            first_argv = self.plain_argv(RSYNC, corpus.tree, remote)
            argv = self.plain_argv(RSYNC, v2.tree, remote)
            dest = self.topo.data[0] / name
        first = self.execute(first_argv, env=env, timeout=timeout, name=name + "-v1")
        if isinstance(first, str) or first.status:
            self.record(result, first)
            result.error = "first deploy: " + result.error
        else:
            run = self.execute(argv, env=env, timeout=timeout, name=name)
            if not isinstance(run, str) and not run.status:
                dest = (
                    self._deployed(self.topo.data[0], name)
                    if method.startswith("deployer")
                    else dest
                )
            self.record(result, run, self._verified(run, [dest], v2.manifest))
        self._clean(name)
        shutil.rmtree(fresh, ignore_errors=True)
        return result

    def parallel(self, profile: Profile, corpus: Corpus, count: int, method: str) -> Result:
        """Deploy `corpus` to `count` targets at once (each its own sshd and tunnel)."""
        result = self._result(profile, corpus, method, "parallel", count)
        if result.error:
            return result
        if count > len(self.topo.targets):
            result.error = f"only {len(self.topo.targets)} targets started"
        elif count > 1 and not self.topo.private_mounts:
            result.error = "n/a: needs root (per-target mount namespaces)"
        elif method.startswith(DEPLOYER) and count > 1 and not self.has_parallel:
            result.error = "n/a: deployer push has no --parallel yet"
        if result.error:
            self._say(result, "")
            return result
        timeout = self._timeout(profile, corpus.bytes, corpus.files, count)
        name = self._name(f"parallel{count}-{method}-{corpus.name}-{profile.key}")
        remote = str(self.topo.mnt / name)
        if method.startswith(DEPLOYER):
            run = self.execute(
                self.deployer_argv(
                    corpus.tree, remote, targets=count, extra=deployer_flags(method)
                ),
                env=self.topo.deployer_env(),
                timeout=timeout,
                name=name,
            )
            dests = [self._deployed(self.topo.data[i], name) for i in range(count)]
        else:
            # best plain fan-out: compress once, then one ssh per target, all at once
            archive = self.logdir / f"{name}.tar.zst"
            ssh_all = " ".join(
                f"{self.topo.ssh(i)} 'mkdir -p {remote} && zstd -dcq | tar -xf - -C {remote}'"
                f" < {archive} &"
                for i in range(count)
            )
            script = (
                f"set -o pipefail; tar -C {shlex.quote(str(corpus.tree))} -cf - . | zstd -3 -T0 -q > {archive}; "
                f"{ssh_all} fails=0; for job in $(jobs -p); do wait $job || fails=1; done; exit $fails"
            )
            run = self.execute(
                self.topo.client(["bash", "-c", script]),
                env=self.topo.env(),
                timeout=timeout,
                name=name,
            )
            with contextlib.suppress(OSError):
                archive.unlink()
            dests = [self.topo.data[i] / name for i in range(count)]
        self.record(result, run, self._verified(run, dests, corpus.manifest))
        self._clean(name)
        return result

    def ssh_setup(self) -> float:
        """Seconds for `ssh target true` through the jump (what every plain run pays once)."""
        samples = []
        for i in range(3):
            run = self.execute(
                self.topo.client(["bash", "-c", f"{self.topo.ssh()} true"]),
                env=self.topo.env(),
                timeout=60,
                name=self._name(f"ssh-true-{i}"),
            )
            if isinstance(run, Run) and run.status == 0:
                samples.append(run.seconds)
        return min(samples) if samples else 0.0


def _deployer_details(stdout: str) -> dict[str, Any]:
    """Compression, wire bytes, files sent and the SSH client, from deployer's --json document."""
    try:
        start = stdout.index("{")
        doc = json_object(stdout[start:])
    except ValueError:
        return {}
    details: dict[str, Any] = {}
    for target in doc.get("targets", [])[:1]:
        transfer = (target.get("details") or {}).get("transfer") or {}
        for key in (
            "compression",
            "levels",
            "wire_waited",
            "wire_bytes",
            "files_sent",
            "files_reused",
            "bytes_sent",
        ):
            if key in transfer:
                details[key] = transfer[key]
        client = (target.get("details") or {}).get("ssh_client")
        if client:
            details["ssh_client"] = client
        if target.get("seconds"):
            details["deployer_seconds"] = round(target["seconds"], 3)
    return details
