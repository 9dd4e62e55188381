"""Release manifests and delta plans: what a target already has, and what must cross the wire.

Each release is recorded as ``DIR/.deployer/manifests/<id>.tsv``: one line per regular file,
``sha256<TAB>size<TAB>mode<TAB>path``. The next push sends only files whose digest, size or mode
changed; the rest are copied on the target from the live release. The target then checks the
whole tree with ``sha256sum -c`` before anything is switched.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deployer.artifact.scan import Artifact, read_in_order

READ = 1 << 20
SAMPLE_BYTES = 4 << 20
INCOMPRESSIBLE = 0.92  # compressed/original above this: gzip costs CPU and saves nothing


@dataclass(frozen=True)
class FileDigest:
    """What a regular file in a release is."""

    sha256: str
    size: int
    mode: int


Manifest = Mapping[str, FileDigest]


def digest_files(
    artifact: Artifact, on_progress: Callable[[int], None] | None = None
) -> dict[str, FileDigest]:
    """sha256, size and mode of every regular file, read in chunks (memory stays flat)."""
    digests: dict[str, FileDigest] = {}
    with read_in_order(artifact) as items:
        for entry, handle in items:
            if handle is None:
                continue
            digest = hashlib.sha256()
            while chunk := handle.read(READ):
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


def compressibility(artifact: Artifact, paths: frozenset[str] | None = None) -> float:
    """Compressed/original size of a sample spread over the files to send (1.0: incompressible)."""
    files = [
        e
        for e in artifact.entries
        if e.kind == "file" and e.size and (paths is None or e.path in paths)
    ]
    if not files:
        return 0.5  # only directories and symlinks: tar headers
    per_file = max(4096, SAMPLE_BYTES // len(files))
    # spread the sample over every step-th file, read in the artifact's own order (cheap for tars)
    step = max(1, len(files) * per_file // SAMPLE_BYTES)
    wanted = {entry.path for entry in files[::step]}
    compressor = zlib.compressobj(1)
    original = compressed = 0
    with read_in_order(artifact, wanted) as items:
        for _entry, handle in items:
            if handle is None:
                continue
            data = handle.read(per_file)
            original += len(data)
            compressed += len(compressor.compress(data))
            if original >= SAMPLE_BYTES:
                break
    compressed += len(compressor.flush())
    if original < 65536:
        # too little to judge; the stream is then mostly tar headers, which compress well
        return 0.5
    return compressed / original


def choose_compression(ratio: float, requested: int | None) -> int | None:
    """gzip level for the stream: None (plain tar) for incompressible content, else the requested or 1."""
    if requested == 0 or ratio > INCOMPRESSIBLE:
        return None
    return requested if requested is not None else 1
