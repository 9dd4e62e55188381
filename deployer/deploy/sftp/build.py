"""Building a release over SFTP: the tree into releases/.<id>.partial, then one rename to publish.

What the shell's stage script does in one command, done with pipelined SFTP requests: every
directory in one batch; then, in a second batch, the symlinks, the unchanged files (copied on the
server with ``copy-data``, or hard-linked with ``--link-unchanged``, when the server offers it;
else sent again) and the changed files, streamed from the artifact with many files in flight.
Each file sent is hashed as it is read and must match the manifest (the artifact cannot change
under the upload). An unchanged file is reused only while its size and mtime in the live release
are those of its stat snapshot; one the application changed in place is sent instead. Shared
entries become symlinks into DIR/shared, as on the shell path.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from deployer.artifact.contents import open_contents, read_in_order
from deployer.artifact.manifest import FileDigest, parse_manifest, plan_delta
from deployer.artifact.model import CHUNK, Artifact, Entry
from deployer.artifact.source import changed_error, label_of
from deployer.deploy.payload import Payload
from deployer.deploy.sftp.state import keep
from deployer.deploy.sftp.tree import parse_snapshot, remove_trees, snapshot_text
from deployer.deploy.upload import TransferReport, TransferSettings
from deployer.errors import RemoteError
from deployer.output import Reporter, human_size
from deployer.remote.files import COPY_DATA, HARDLINK, FileBatch, FileSession, FileStat, parents
from deployer.remote.layout import Layout, manifest_path, snapshot_path


@dataclass(frozen=True)
class Shared:
    """The --shared entries, as paths relative to the release."""

    items: tuple[str, ...]

    def covers(self, path: str) -> bool:
        """Whether path is a shared entry or lies under one (it is never uploaded)."""
        return any(
            path == i.rstrip("/") or path.startswith(i.rstrip("/") + "/") for i in self.items
        )


class SftpBuild:
    """Uploads one release to one SFTP target."""

    def __init__(
        self,
        files: FileSession,
        payload: Payload,
        layout: Layout,
        previous: str,
        previous_manifest: tuple[str, ...],
        settings: TransferSettings,
        reporter: Reporter,
        marker: int,
    ) -> None:
        self.files = files
        self.payload = payload
        self.artifact: Artifact = payload.artifact
        self.layout = layout
        self.previous = previous
        self.previous_manifest = (
            parse_manifest(list(previous_manifest)) if previous and settings.delta else {}
        )
        self.settings = settings
        self.reporter = reporter
        self.marker = marker  # the target's clock when the lock was taken (for the snapshot)
        self.report = TransferReport()
        self.recorded: dict[str, tuple[int, int]] = {}  # the new snapshot: path -> (size, mtime)

    def _say(self, text: str) -> None:
        self.reporter.target(self.files.label, text)

    def run(self, shared: tuple[str, ...]) -> TransferReport:
        """Build releases/.<id>.partial, publish it as releases/<id>, write its manifest."""
        started = time.monotonic()
        covered = Shared(shared)
        digests = {p: d for p, d in self.payload.digests.items() if not covered.covers(p)}
        plan = plan_delta(digests, self.previous_manifest)
        reuse = self._reusable(plan.reuse)
        how = self._reuse_method() if reuse else None
        if how is None:
            reuse = {}
        send = set(digests) - set(reuse)
        entries = [e for e in self.artifact.entries if not covered.covers(e.path)]
        self.report.files_sent, self.report.files_reused = len(send), len(reuse)
        self.report.files_trusted = len(reuse)
        self.report.bytes_sent = sum(digests[p].size for p in send)
        partial = self.layout.partial_dir
        if not self.files.mkdir(partial, 0o700):
            raise RemoteError(
                f"{partial} on {self.files.label} exists already — run the push again"
            )
        batch = self.files.batch()
        tops = [e.path for e in entries] + [s.rstrip("/") for s in shared]
        dirs = sorted(
            {*parents(tops), *(e.path for e in entries if e.kind == "dir")},
            key=lambda d: (d.count("/"), d),
        )
        for directory in dirs:
            batch.mkdir(f"{partial}/{directory}", 0o700)  # writable until its files are in
        batch.wait()
        batch = self.files.batch()
        for entry in entries:
            if entry.kind == "symlink":
                batch.symlink(entry.linkname, f"{partial}/{entry.path}")
        live = f"{self.layout.path}/releases/{self.previous}"
        for path, mtime in reuse.items():
            digest = digests[path]
            if how == HARDLINK:
                batch.link(f"{live}/{path}", f"{partial}/{path}")
            else:
                batch.copy(f"{live}/{path}", f"{partial}/{path}", digest.mode, mtime)
            self.recorded[path] = (digest.size, mtime)
        self._send(batch, send, digests)
        batch.wait()
        self._link_shared(shared)
        batch = self.files.batch()
        by_depth = sorted((e for e in entries if e.kind == "dir"), key=lambda e: -e.path.count("/"))
        for entry in by_depth:
            batch.chmod(f"{partial}/{entry.path}", entry.mode)
        batch.chmod(partial, 0o755)
        path, rid = self.layout.path, self.layout.release_id
        for name, text in (
            (manifest_path(path, rid) + ".tmp", self.payload.manifest),
            (snapshot_path(path, rid), snapshot_text(self.marker, self.recorded)),
        ):
            writer = batch.create(name, 0o644, int(time.time()))
            writer.write(text.encode())
            writer.close()
        batch.wait()
        self._publish()
        self._say(
            f"uploaded {self.report.files_sent} of {len(self.payload.digests)} files over SFTP"
            f" ({human_size(self.report.bytes_sent)}; {self.report.files_reused} unchanged"
            f" {'linked' if how == HARDLINK else 'copied'} on the target)"
            f" in {time.monotonic() - started:.1f} s"
        )
        return self.report

    def _reuse_method(self) -> str | None:
        """How unchanged files are reused: a hard link if asked (and offered), else copy-data."""
        if self.settings.hardlink and self.files.offers(HARDLINK):
            return HARDLINK
        if self.files.offers(COPY_DATA):
            return COPY_DATA
        self._say(
            f"the server offers no copy-data{' nor hardlink@openssh.com' if self.settings.hardlink else ''}"
            " (OpenSSH 9.0 has it): sending unchanged files again"
        )
        return None

    def _reusable(self, candidates: tuple[str, ...]) -> dict[str, int]:
        """Unchanged files whose live copy still has its snapshot's size and mtime: path -> mtime."""
        if not candidates:
            return {}
        snapshot = self.files.read(snapshot_path(self.layout.path, self.previous), 256 << 20)
        vouched = parse_snapshot(snapshot.decode(errors="replace")) if snapshot else {}
        seen: dict[str, FileStat | None] = {}
        batch = self.files.batch()
        live = f"{self.layout.path}/releases/{self.previous}"
        for path in candidates:
            if path in vouched:
                batch.lstat(f"{live}/{path}", keep(seen, path))
        batch.wait()
        reuse = {}
        for path in candidates:
            stat, record = seen.get(path), vouched.get(path)
            if (
                stat is not None
                and record is not None
                and stat.kind == "file"
                and (stat.size, stat.mtime) == record
            ):
                reuse[path] = stat.mtime
        changed = len(candidates) - len(reuse)
        if changed:
            self._say(
                f"{changed} unchanged file(s) cannot be vouched for in release {self.previous}"
                " (changed in place, or no snapshot); sending them instead of reusing"
            )
        return reuse

    def _send(self, batch: FileBatch, send: set[str], digests: dict[str, FileDigest]) -> None:
        """Stream the files to send, hashing each against the manifest as it is read."""
        label = label_of(self.artifact.source)
        advance = self.reporter.progress(self.files.label, "upload", self.report.bytes_sent)
        with read_in_order(self.artifact, send) as items:
            for entry, handle in items:
                if handle is None or entry.path not in send:
                    continue
                self._put(batch, entry, handle.read, digests[entry.path], label, advance)
        self.report.wire_bytes = self.report.bytes_sent

    def _put(
        self,
        batch: FileBatch,
        entry: Entry,
        read: Callable[[int], bytes],
        digest: FileDigest,
        label: str,
        advance: Callable[[int], None],
    ) -> None:
        writer = batch.create(
            f"{self.layout.partial_dir}/{entry.path}", entry.mode, int(entry.mtime)
        )
        sha, left = hashlib.sha256(), entry.size
        while left > 0:
            chunk = read(min(CHUNK, left))
            if not chunk:
                raise changed_error(label, entry.path, "it is shorter now")
            sha.update(chunk)
            writer.write(chunk)
            advance(len(chunk))
            left -= len(chunk)
        writer.close()
        if sha.hexdigest() != digest.sha256:
            raise changed_error(label, entry.path, "its content differs from the manifest")
        self.recorded[entry.path] = (entry.size, int(entry.mtime))

    def _link_shared(self, shared: tuple[str, ...]) -> None:
        """Link each shared entry into the release; create a shared dir, seed a shared file."""
        path, partial = self.layout.path, self.layout.partial_dir
        for item in shared:
            rel = item.rstrip("/")
            target = f"{path}/shared/{rel}"
            if self.files.lstat(target) is None:
                batch = self.files.batch()
                for directory in parents([rel]) + ([rel] if item.endswith("/") else []):
                    batch.mkdir(f"{path}/shared/{directory}", 0o755)
                batch.wait()
                if not item.endswith("/"):
                    self._seed(rel, target)
            self.files.symlink("../" * (rel.count("/") + 2) + "shared/" + rel, f"{partial}/{rel}")

    def _seed(self, rel: str, target: str) -> None:
        """A shared file that does not exist yet is seeded from the release, as on the shell path."""
        entry = next((e for e in self.artifact.entries if e.path == rel and e.kind == "file"), None)
        if entry is None:
            raise RemoteError(
                f"shared file {rel} is missing: create it in {self.layout.path}/shared/ on the target"
            )
        batch = self.files.batch()
        with open_contents(self.artifact) as opener, opener(entry) as handle:
            writer = batch.create(target, entry.mode, int(entry.mtime))
            while chunk := handle.read(CHUNK):
                writer.write(chunk)
            writer.close()
        batch.wait()

    def _publish(self) -> None:
        """Rename the tree into place, then its manifest (a missing manifest only costs a full
        upload next time)."""
        manifest = manifest_path(self.layout.path, self.layout.release_id)
        self.files.rename(self.layout.partial_dir, self.layout.release_dir)
        self.files.rename(manifest + ".tmp", manifest)


def cleanup_partial(files: FileSession, layout: Layout) -> None:
    """Remove an upload that did not complete (best effort: the next lock clears it anyway)."""
    remove_trees(files, [layout.partial_dir])
