"""The payload's background hashing stops when the deploy is over, however it ended."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from deployer.artifact.scan import open_artifact
from deployer.deploy.payload import prepare_payload
from deployer.errors import ArtifactError


def open_descriptors_of(path: Path) -> int:
    """How many of this process's file descriptors point at path (read from /proc)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            continue
    return count


def test_closing_stops_reading_the_artifact(tmp_path: Path) -> None:
    """A deploy that failed early must not go on reading a large artifact for seconds."""
    app = tmp_path / "app"
    app.mkdir()
    big = app / "big.bin"
    with big.open("wb") as stream:
        stream.truncate(8 << 30)  # 8 GiB, sparse: several seconds of sha256 at ~1 GB/s
    payload = prepare_payload(open_artifact(app))
    deadline = time.monotonic() + 10
    while not open_descriptors_of(big):  # hashing has begun
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    payload.close()
    assert time.monotonic() - started < 2
    assert open_descriptors_of(big) == 0  # the file is no longer read
    with pytest.raises(ArtifactError, match="was stopped: the deploy ended"):
        payload.digests  # noqa: B018 - nobody may use digests of a stopped hash


def test_closing_after_hashing_keeps_the_digests(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "a.txt").write_text("a\n")
    payload = prepare_payload(open_artifact(app))
    digests = payload.digests
    payload.close()
    assert payload.digests == digests and set(digests) == {"a.txt"}


def test_the_whole_artifact_is_sampled_for_compression_while_it_is_hashed(tmp_path: Path) -> None:
    """With `sample`, a first deploy's codec comes from the sample the background thread took
    (the content it saw then compressed well), not from reading the artifact again."""
    app = tmp_path / "app"
    app.mkdir()
    for index in range(8):
        (app / f"f{index}.txt").write_bytes(b"the same line again\n" * 20_000)
    every = frozenset(f"f{index}.txt" for index in range(8))
    sampled = prepare_payload(open_artifact(app), sample=True)
    unsampled = prepare_payload(open_artifact(app))
    assert set(sampled.digests) == set(unsampled.digests) == every
    for index in range(8):  # now incompressible: only a new sample would see it
        (app / f"f{index}.txt").write_bytes(os.urandom(400_000))
    assert sampled.compression(every, "auto", None, zstd_ok=False).codec == "gzip"
    assert unsampled.compression(every, "auto", None, zstd_ok=False).codec == "none"


@pytest.mark.parametrize(
    ("targets", "label"), [(1, "zstd (adaptive)"), (3, "zstd -6"), (20, "zstd -9")]
)
def test_a_fleets_shared_stream_is_compressed_harder_the_more_targets_read_it(
    tmp_path: Path, targets: int, label: str
) -> None:
    """One target adapts zstd's level to its link; a fleet's stream is encoded once and sent to
    every target, so its level is fixed, and higher for a large fleet. A level asked for stays."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "a.txt").write_bytes(b"the same line again\n" * 20_000)
    payload = prepare_payload(open_artifact(app), targets=targets)
    every = frozenset({"a.txt"})
    assert payload.compression(every, "auto", None, zstd_ok=True).label == label
    assert payload.compression(every, "zstd", 4, zstd_ok=True).label == "zstd -4"
    assert payload.compression(every, "auto", None, zstd_ok=False).label == "gzip -1"
