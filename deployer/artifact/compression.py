"""How to compress the upload stream: the codec asked for, what both ends have, and a sample.

`--compress auto` (the default) sends zstd when the target has `zstd` and the `zstandard` package
is importable here, gzip otherwise, and plain tar when a sample says compressing would not pay.
Without `--compress-level` zstd adapts its level to the link while it sends (`artifact.adapt`).
"""

from __future__ import annotations

import importlib.util
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from deployer.errors import ConfigError

if TYPE_CHECKING:
    from deployer.artifact.model import Artifact

SAMPLE_BYTES = 4 << 20


# The stream's compressed/original size (estimated from a sample) above which auto sends plain
# tar. gzip -1 moves about 45 MB/s of content that does not compress: it must save much to pay.
# zstd passes such content at about 1 GB/s a core (level 1; 0.5 GB/s at 3, this machine), so
# 2 % less on the wire is worth it: an artifact of many small incompressible files still
# compresses by its tar headers and padding (3.5 % of 3000 files of 22 kB).
INCOMPRESSIBLE = 0.92
ZSTD_INCOMPRESSIBLE = 0.98

TAR_BLOCK = 512
TAR_FRAMING_RATIO = 0.05  # tar headers and padding (mostly zeros) compress to a few percent


Codec = Literal["zstd", "gzip", "none"]
CompressMode = Literal["auto", "zstd", "gzip", "none"]
COMPRESS_MODES: tuple[CompressMode, ...] = get_args(CompressMode)

# Each codec's levels as its command line takes them. zstd stops at 19: 20-22 need --ultra and
# windows of up to 128 MiB on the target.
LEVELS: dict[Codec, tuple[int, int]] = {"zstd": (1, 19), "gzip": (1, 9)}

GZIP_DEFAULT = 1  # the gzip level that keeps up with fast links


@dataclass(frozen=True)
class Compression:
    """How one upload stream is encoded: the codec, and its level (zstd: None adapts it)."""

    codec: Codec
    level: int | None = None

    def __post_init__(self) -> None:
        if self.codec == "none" and self.level is not None:
            raise ValueError("plain tar has no level")
        if self.codec == "gzip" and self.level is None:
            raise ValueError("gzip needs a level")
        if self.level is not None and self.codec != "none":
            low, high = LEVELS[self.codec]
            if not low <= self.level <= high:
                raise ValueError(f"{self.codec} level must be {low}-{high}, not {self.level}")

    @property
    def adaptive(self) -> bool:
        """zstd whose level follows the link while it sends."""
        return self.codec == "zstd" and self.level is None

    @property
    def label(self) -> str:
        """How the log names it: 'zstd (adaptive)', 'zstd -5', 'gzip -1' or 'none'."""
        if self.codec == "none":
            return "none"
        return f"{self.codec} (adaptive)" if self.level is None else f"{self.codec} -{self.level}"


PLAIN = Compression("none")


def check_compression(mode: str, level: int | None) -> None:
    """Raise the usage error for a codec or level that cannot be used (named as the flags are)."""
    if mode not in COMPRESS_MODES:
        raise ConfigError(f"--compress {mode}: choose one of {', '.join(COMPRESS_MODES)}")
    if level is None:
        return
    if mode == "none":
        raise ConfigError(
            f"--compress-level {level} with --compress none: plain tar has no level — drop one of them"
        )
    if level == 0:
        raise ConfigError("--compress-level 0: to send plain tar, use --compress none instead")
    if mode == "auto":
        low, high = LEVELS["gzip"]  # auto may fall back to gzip: the level must suit both
        if not low <= level <= high:
            raise ConfigError(
                f"--compress-level {level} with --compress auto: auto may choose gzip, whose levels"
                f" are {low}-{high} — use a level in {low}-{high}, or --compress zstd for zstd's"
                f" {LEVELS['zstd'][0]}-{LEVELS['zstd'][1]}"
            )
        return
    low, high = LEVELS[mode]
    if not low <= level <= high:
        raise ConfigError(
            f"--compress-level {level}: {mode} levels are {low}-{high} — choose one in that range"
        )


def zstd_available() -> bool:
    """The zstandard package can be imported here (without importing it: --help stays fast)."""
    return importlib.util.find_spec("zstandard") is not None


def compressibility(artifact: Artifact, paths: frozenset[str] | None = None) -> float:
    """Compressed/original size of the tar stream of the files to send (1.0: incompressible),
    estimated from a sample of their content spread over them, and their tar framing."""
    from deployer.artifact.contents import read_in_order  # the command line imports this module

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
    content = sum(entry.size for entry in files)
    framing = sum(TAR_BLOCK + -entry.size % TAR_BLOCK for entry in files)  # header, padding
    estimate = content * compressed / original + framing * TAR_FRAMING_RATIO
    return estimate / (content + framing)


def choose_compression(
    ratio: float, mode: CompressMode, level: int | None, zstd_ok: bool
) -> Compression:
    """The encoding of a stream whose sample compressed to `ratio`.

    `zstd_ok`: the target has zstd and zstandard is importable here. An explicit codec is used
    as asked (the caller checks that zstd is possible); auto picks zstd over gzip when it can,
    and sends plain tar when the codec would cost more CPU than it saves on the wire.
    """
    if mode == "none":
        return PLAIN
    if mode == "gzip":
        return Compression("gzip", level or GZIP_DEFAULT)
    if mode == "zstd":
        return Compression("zstd", level)
    if zstd_ok:
        if ratio > ZSTD_INCOMPRESSIBLE:
            return PLAIN
        # content that hardly compresses (what zstd saves is the tar framing) gets level 1: higher
        # levels find nothing more in it and cost CPU and memory (level 9: 40 MB more)
        return Compression("zstd", level or (1 if ratio > INCOMPRESSIBLE else None))
    return Compression("gzip", level or GZIP_DEFAULT) if ratio <= INCOMPRESSIBLE else PLAIN
