"""An artifact with its digests, computed once for every target, and its shared upload streams."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Container

from deployer.artifact.adapt import AdaptLog
from deployer.artifact.compression import (
    Compression,
    CompressMode,
    choose_compression,
    compressibility,
)
from deployer.artifact.manifest import (
    FileDigest,
    digest_files,
    manifest_text,
)
from deployer.artifact.model import Artifact, Sink
from deployer.artifact.tar import write_tar
from deployer.deploy.spool import Spool

CLOSE_WAIT = 5.0  # seconds close() waits for the hashing thread (one 1 MiB read)

# The zstd level of a stream shared by a fleet, where --compress-level leaves it open. Its CPU is
# spent once and its bytes cross the wire once per target; and the spool runs ahead of the
# targets, so no wait tells an adaptive level where the bottleneck is. 32 MB of source, 2
# threads: level 3 6.63 MB in 0.14 s of CPU, 6 5.83 MB in 0.34 s, 9 5.60 MB in 0.54 s.
FLEET_LEVEL = 6
LARGE_FLEET = 10  # targets from which ...
LARGE_FLEET_LEVEL = 9  # ... the stream is compressed harder still


class Payload:
    """An artifact with its file digests, computed once for every target.

    Hashing starts at once in a background thread, so that reading the artifact overlaps
    connecting and probing the targets; `digests` waits for it (and raises what it raised).
    With `sample` (--compress auto), that thread first samples the whole artifact for
    compression, which a first deploy (every file sent) then needs no time for.
    With several targets, the content is sampled for compression once (`compression`) and a
    compressed stream is encoded once, shared by every target that needs the same files
    (`shared_stream`); `close` drops those spools.
    """

    def __init__(self, artifact: Artifact, targets: int = 1, sample: bool = False) -> None:
        self.artifact = artifact
        self._targets = targets
        self._sample = sample
        self._ratios: dict[frozenset[str], float] = {}
        self._spools: dict[tuple[frozenset[str], Compression], Spool] = {}
        self._lock = threading.Lock()  # guards _ratios and _spools
        self._digests: dict[str, FileDigest] | BaseException | None = None
        self._stop = threading.Event()
        self._hashing = threading.Thread(target=self._hash, name="deployer-hash", daemon=True)
        self._hashing.start()

    def _hash(self) -> None:
        try:
            if self._sample:
                every = frozenset(e.path for e in self.artifact.entries if e.kind == "file")
                ratio = compressibility(self.artifact, every)
                with self._lock:
                    self._ratios[every] = ratio
            self._digests = digest_files(self.artifact, stop=self._stop)
        except BaseException as exc:  # re-raised by the caller of `digests`
            self._digests = exc

    @property
    def digests(self) -> dict[str, FileDigest]:
        """sha256, size and mode of every regular file."""
        self._hashing.join()
        if isinstance(self._digests, BaseException):
            raise self._digests
        assert self._digests is not None
        return self._digests

    @functools.cached_property
    def manifest(self) -> str:
        """The manifest stored with each release."""
        return manifest_text(self.digests)

    def compression(
        self, send: frozenset[str], mode: CompressMode, level: int | None, zstd_ok: bool
    ) -> Compression:
        """The encoding of a stream of `send`, its content sampled once per set of files (auto
        only: an explicit codec needs no sample). `zstd_ok`: both ends can use zstd. A fleet's
        zstd without a level gets a fixed one (FLEET_LEVEL): its stream is shared."""
        ratio = 0.0
        if mode == "auto":
            with self._lock:
                ratio = self._ratios.get(send, -1.0)
                if ratio < 0:
                    ratio = self._ratios[send] = compressibility(self.artifact, send)
        chosen = choose_compression(ratio, mode, level, zstd_ok)
        if chosen.adaptive and self._targets > 1:
            large = self._targets >= LARGE_FLEET
            return Compression("zstd", LARGE_FLEET_LEVEL if large else FLEET_LEVEL)
        return chosen

    def shared_stream(self, send: frozenset[str], compression: Compression) -> Spool | None:
        """The compressed tar stream of `send`, encoded once for all targets (None: encode your
        own).

        Only compressed streams of a push to several targets are shared: a plain tar costs
        no more to build per target than to read back from a spool.
        """
        if self._targets < 2 or compression.codec == "none":
            return None
        with self._lock:
            spool = self._spools.get((send, compression))
            if spool is None:
                encode = functools.partial(self.encode, send, compression)
                spool = self._spools[send, compression] = Spool(encode)
            return spool

    def encode(
        self,
        send: Container[str],
        compression: Compression,
        out: Sink,
        on_progress: Callable[[int], None] | None = None,
    ) -> AdaptLog | None:
        """Write the tar stream of `send`, encoded as `compression` says, into `out`; return
        what zstd's level did (None: not zstd)."""
        return write_tar(
            self.artifact, out, compression=compression, on_progress=on_progress, only=send
        )

    def close(self) -> None:
        """Stop hashing and drop the shared streams (call when the deploy is over, however it
        ended: a failed deploy must not keep reading the artifact)."""
        self._stop.set()
        with self._lock:
            spools, self._spools = list(self._spools.values()), {}
        for spool in spools:
            spool.close()
        self._hashing.join(timeout=CLOSE_WAIT)  # it stops within one chunk: the file is closed


def prepare_payload(artifact: Artifact, targets: int = 1, sample: bool = False) -> Payload:
    """Start hashing every file of the artifact (streamed, in the background), after sampling
    it for compression when `sample` says the codec will be chosen by content."""
    return Payload(artifact, targets, sample)
