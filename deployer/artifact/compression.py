"""How to compress the upload stream, judged from a sample of the content."""

from __future__ import annotations

import zlib

from deployer.artifact.contents import read_in_order
from deployer.artifact.model import Artifact

SAMPLE_BYTES = 4 << 20


INCOMPRESSIBLE = 0.92  # compressed/original above this: gzip costs CPU and saves nothing


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
