"""The codec and level choice, and zstd whose level follows the link (real zstandard, real zstd -dc)."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pytest
import zstandard

from deployer.artifact.adapt import (
    BUSY,
    IDLE,
    STRONG,
    AdaptiveZstd,
    LevelPolicy,
    judge,
)
from deployer.artifact.compression import Compression, check_compression
from deployer.artifact.scan import open_artifact
from deployer.artifact.tar import write_tar
from deployer.errors import ConfigError, ExitCode
from deployer.remote.tools import EMPTY_TAR_ZST


@pytest.mark.parametrize(
    ("mode", "level", "message"),
    [
        ("none", 3, "--compress-level 3 with --compress none: plain tar has no level — drop one"),
        ("gzip", 10, "--compress-level 10: gzip levels are 1-9 — choose one in that range"),
        ("zstd", 20, "--compress-level 20: zstd levels are 1-19 — choose one in that range"),
        ("zstd", -1, "--compress-level -1: zstd levels are 1-19"),
        ("auto", 12, "--compress-level 12 with --compress auto: auto may choose gzip, whose levels"
                     " are 1-9 — use a level in 1-9, or --compress zstd for zstd's 1-19"),
        ("auto", 0, "--compress-level 0: to send plain tar, use --compress none instead"),
        ("lz4", None, "--compress lz4: choose one of auto, zstd, gzip, none"),
    ],
)  # fmt: skip
def test_a_level_outside_its_codecs_range_is_a_usage_error(
    mode: str, level: int | None, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        check_compression(mode, level)
    assert str(refused.value).startswith(message) and refused.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("mode", "level"), [("auto", None), ("auto", 9), ("zstd", 19), ("gzip", 9), ("none", None)]
)
def test_levels_inside_their_range_pass(mode: str, level: int | None) -> None:
    check_compression(mode, level)


def test_the_probes_zstd_frame_is_an_empty_tar() -> None:
    assert zstandard.ZstdDecompressor().decompressobj().decompress(EMPTY_TAR_ZST) == bytes(1024)


# ------------------------------------------------------------------------------ the policy


def test_a_full_queue_raises_the_level_and_an_empty_one_lowers_it() -> None:
    assert judge(full=BUSY, empty=0.0) == 1
    assert judge(full=STRONG, empty=0.0) == 2  # the compressor waited most of the window
    assert judge(full=0.0, empty=BUSY) == -1
    assert judge(full=0.0, empty=0.9) == -2
    assert judge(full=IDLE * 2, empty=BUSY) == 0  # both sides waited a little: balanced
    assert judge(full=0.0, empty=0.0) == 0


def test_the_level_moves_after_two_windows_agree_then_rests_one() -> None:
    policy = LevelPolicy()
    assert [policy.observe(0.3, 0.0) for _ in range(7)] == [3, 4, 4, 4, 5, 5, 5]
    assert [policy.observe(0.0, 0.3) for _ in range(4)] == [5, 4, 4, 4]
    strong = LevelPolicy()
    assert [strong.observe(0.9, 0.0) for _ in range(5)] == [3, 5, 5, 5, 7]
    # a strong window after a mild one moves by the smaller step
    assert [LevelPolicy().observe(*w) for w in [(0.3, 0.0)]] == [3]
    mixed = LevelPolicy()
    assert [mixed.observe(*w) for w in [(0.3, 0.0), (0.9, 0.0)]] == [3, 4]


def test_the_level_stays_in_its_range() -> None:
    policy = LevelPolicy(level=2, low=1, high=3)
    for _ in range(20):
        policy.observe(0.0, 0.9)
    assert policy.level == 1
    for _ in range(20):
        policy.observe(0.9, 0.0)
    assert policy.level == 3
    fixed = LevelPolicy(level=5, low=5, high=5)
    assert {fixed.observe(0.9, 0.0) for _ in range(10)} == {5}


def test_alternating_windows_do_not_move_the_level() -> None:
    """A level on the edge between two (one window says up, the next down) stays put."""
    policy = LevelPolicy()
    levels = {policy.observe(*((0.9, 0.0) if i % 2 else (0.0, 0.9))) for i in range(40)}
    assert levels == {3}


# ------------------------------------------------------------------------------ the stream


class SlowWire:
    """A sink that takes `rate` bytes per second (sleeping as a full channel would block)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        time.sleep(len(data) / self.rate)
        self.data += data
        return len(data)


def text(size: int) -> bytes:
    """Compressible, but not trivially (zstd -3: about a third): source lines and random hex."""
    line = b"    return compute(x, y) + offset  # "
    noise = os.urandom(size // 6).hex().encode()
    parts = (line + noise[i : i + 24] + b"\n" for i in range(0, len(noise), 24))
    return b"".join(parts)[:size]


def unzstd(data: bytes) -> bytes:
    """What the target's `zstd -dc` makes of a stream (every frame of it)."""
    unpacked = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True)
    assert unpacked.returncode == 0, unpacked.stderr
    return unpacked.stdout


def test_a_slow_wire_raises_the_level_and_the_frames_decode_as_one_stream() -> None:
    data = text(24 << 20)
    wire = SlowWire(rate=2e6)  # far below what level 3 produces: the compressor waits
    stream = AdaptiveZstd(wire)
    for i in range(0, len(data), 1 << 20):
        stream.write(data[i : i + (1 << 20)])
    stream.finish()
    assert stream.log.levels[0] == 3 and max(stream.log.levels) > 3, stream.log
    assert stream.log.full_seconds > stream.log.empty_seconds
    # several frames, one stream: the target's zstd -dc reads it whole
    assert unzstd(bytes(wire.data)) == data


def test_a_wire_that_waits_for_the_compressor_lowers_the_level() -> None:
    data = text(24 << 20)
    wire = SlowWire(rate=1e12)
    stream = AdaptiveZstd(wire, LevelPolicy(level=6))

    def slow_source() -> None:
        for i in range(0, len(data), 256 << 10):
            time.sleep(0.02)  # reading and tar: slower than the wire, which then waits
            stream.write(data[i : i + (256 << 10)])

    slow_source()
    stream.finish()
    assert stream.log.levels[0] == 6 and stream.log.levels[-1] < 6, stream.log
    assert unzstd(bytes(wire.data)) == data


def test_a_wire_error_stops_the_stream_and_reaches_the_compressing_side() -> None:
    class Broken:
        calls = 0

        def write(self, data: bytes) -> int:
            self.calls += 1
            raise BrokenPipeError("the channel closed")

    wire = Broken()
    stream = AdaptiveZstd(wire, LevelPolicy(level=1, low=1, high=1))
    chunk = text(1 << 20)
    with pytest.raises(BrokenPipeError):
        for _ in range(64):  # the first job's output meets the error; the next write raises it
            stream.write(chunk)
        stream.finish()
    stream.close(discard=True)
    assert wire.calls == 1  # nothing more was written after the error


def test_write_tar_with_zstd_unpacks_with_the_real_zstd_and_tar(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    for i in range(30):
        (app / "src" / f"m{i}.py").write_bytes(text(100_000 + i))
    out = io.BytesIO()
    log = write_tar(open_artifact(app), out, compression=Compression("zstd", 5))
    assert log is not None and log.levels == (5,)
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack = subprocess.run(["sh", "-c", f"zstd -dcq | tar -xf - -C {dest}"], input=out.getvalue())
    assert unpack.returncode == 0
    for i in range(30):
        assert (dest / "src" / f"m{i}.py").read_bytes() == (app / "src" / f"m{i}.py").read_bytes()
