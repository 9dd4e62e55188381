"""Release manifests and delta plans: what a target already has, and what must cross the wire.

Each release is recorded as ``DIR/.deployer/manifests/<id>.tsv``: one line per regular file,
``sha256<TAB>size<TAB>mode<TAB>path``. The next push sends only files whose digest, size or mode
changed; the rest are copied on the target from the live release. The target then checks the
whole tree against the manifest (remote.stage) before anything is switched.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deployer.artifact.contents import read_in_order
from deployer.artifact.model import Artifact
from deployer.errors import ArtifactError

READ = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    """What a regular file in a release is."""

    sha256: str
    size: int
    mode: int


Manifest = Mapping[str, FileDigest]


def digest_files(
    artifact: Artifact,
    on_progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, FileDigest]:
    """sha256, size and mode of every regular file, read in chunks (memory stays flat).

    Once stop is set, reading ends at the next chunk (ArtifactError): nobody needs the digests.
    """
    digests: dict[str, FileDigest] = {}
    with read_in_order(artifact) as items:
        for entry, handle in items:
            if handle is None:
                continue
            digest = hashlib.sha256()
            while chunk := handle.read(READ):
                if stop is not None and stop.is_set():
                    raise ArtifactError(f"reading {artifact.source} was stopped: the deploy ended")
                digest.update(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
            digests[entry.path] = FileDigest(digest.hexdigest(), entry.size, entry.mode)
    return digests


def manifest_text(digests: Manifest) -> str:
    """The TSV form stored on the target."""
    return "".join(
        f"{d.sha256}\t{d.size}\t{d.mode:o}\t{path}\n" for path, d in sorted(digests.items())
    )


def parse_manifest(lines: list[str]) -> dict[str, FileDigest]:
    """Read manifest lines; malformed ones are ignored (the file is then simply sent again)."""
    digests: dict[str, FileDigest] = {}
    for line in lines:
        parts = line.split("\t", 3)
        if len(parts) != 4 or len(parts[0]) != 64:
            continue
        try:
            digests[parts[3]] = FileDigest(parts[0], int(parts[1]), int(parts[2], 8))
        except ValueError:
            continue
    return digests


@dataclass(frozen=True)
class DeltaPlan:
    """Files copied from the previous release on the target, and files sent."""

    reuse: tuple[str, ...]
    send: frozenset[str]
    send_bytes: int


def plan_delta(local: Manifest, previous: Manifest) -> DeltaPlan:
    """Reuse every file whose path, digest, size and mode are unchanged; send the rest."""
    reuse = tuple(sorted(path for path, digest in local.items() if previous.get(path) == digest))
    reused = set(reuse)
    send = frozenset(path for path in local if path not in reused)
    return DeltaPlan(reuse, send, sum(local[p].size for p in send))
