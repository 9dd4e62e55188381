"""An artifact with its digests, computed once for every target, and its shared upload streams."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Container

from deployer.artifact.compression import choose_compression, compressibility
from deployer.artifact.manifest import (
    FileDigest,
    digest_files,
    manifest_text,
)
from deployer.artifact.model import Artifact, Sink
from deployer.artifact.tar import write_tar
from deployer.deploy.spool import Spool

CLOSE_WAIT = 5.0  # seconds close() waits for the hashing thread (one 1 MiB read)


class Payload:
    """An artifact with its file digests, computed once for every target.

    Hashing starts at once in a background thread, so that reading the artifact overlaps
    connecting and probing the targets; `digests` waits for it (and raises what it raised).
    With several targets, the content is sampled for compression once (`compression`) and a
    compressed stream is encoded once, shared by every target that needs the same files
    (`shared_stream`); `close` drops those spools.
    """

    def __init__(self, artifact: Artifact, targets: int = 1) -> None:
        self.artifact = artifact
        self._targets = targets
        self._ratios: dict[frozenset[str], float] = {}
        self._spools: dict[tuple[frozenset[str], int], Spool] = {}
        self._lock = threading.Lock()  # guards _ratios and _spools
        self._digests: dict[str, FileDigest] | BaseException | None = None
        self._stop = threading.Event()
        self._hashing = threading.Thread(target=self._hash, name="deployer-hash", daemon=True)
        self._hashing.start()

    def _hash(self) -> None:
        try:
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

    def compression(self, send: frozenset[str], requested: int | None) -> int | None:
        """The gzip level for a stream of `send` (None: plain tar), sampled once per set of files."""
        with self._lock:
            ratio = self._ratios.get(send)
            if ratio is None:
                ratio = self._ratios[send] = compressibility(self.artifact, send)
        return choose_compression(ratio, requested)

    def shared_stream(self, send: frozenset[str], level: int | None) -> Spool | None:
        """The gzip tar stream of `send`, encoded once for all targets (None: encode your own).

        Only compressed streams of a push to several targets are shared: a plain tar costs
        no more to build per target than to read back from a spool.
        """
        if self._targets < 2 or level is None:
            return None
        with self._lock:
            spool = self._spools.get((send, level))
            if spool is None:
                encode = functools.partial(self.encode, send, level)
                spool = self._spools[send, level] = Spool(encode)
            return spool

    def encode(
        self,
        send: Container[str],
        level: int | None,
        out: Sink,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Write the tar stream of `send` (gzip at `level`, None: plain) into `out`."""
        write_tar(self.artifact, out, compresslevel=level, on_progress=on_progress, only=send)

    def close(self) -> None:
        """Stop hashing and drop the shared streams (call when the deploy is over, however it
        ended: a failed deploy must not keep reading the artifact)."""
        self._stop.set()
        with self._lock:
            spools, self._spools = list(self._spools.values()), {}
        for spool in spools:
            spool.close()
        self._hashing.join(timeout=CLOSE_WAIT)  # it stops within one chunk: the file is closed


def prepare_payload(artifact: Artifact, targets: int = 1) -> Payload:
    """Start hashing every file of the artifact (streamed, in the background)."""
    return Payload(artifact, targets)
