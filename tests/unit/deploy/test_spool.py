"""The shared upload stream: every reader gets every byte while the encoder is still writing."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from deployer.artifact.compression import PLAIN, Compression
from deployer.artifact.scan import open_artifact
from deployer.artifact.tar import write_tar
from deployer.deploy.payload import prepare_payload
from deployer.deploy.spool import Spool
from deployer.errors import ExitCode, TransferError


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def slow_encoder(chunks: list[bytes], fail_after: int | None = None):
    def encode(out, on_progress) -> None:
        for i, chunk in enumerate(chunks):
            if fail_after is not None and i == fail_after:
                raise ValueError("the artifact changed while it was read")
            time.sleep(0.002)  # readers catch up and wait for the encoder
            on_progress(len(chunk))
            out.write(chunk)

    return encode


def read_in_threads(spool: Spool, readers: int) -> list[tuple[bytes, int, BaseException | None]]:
    results: list[tuple[bytes, int, BaseException | None]] = [(b"", 0, None)] * readers

    def read(i: int) -> None:
        sink, progress = Collect(), [0]
        try:
            spool.copy_to(sink, on_progress=lambda n: progress.__setitem__(0, progress[0] + n))
        except BaseException as exc:
            results[i] = (bytes(sink.data), progress[0], exc)
        else:
            results[i] = (bytes(sink.data), progress[0], None)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    return results


def test_every_reader_gets_the_whole_stream_and_its_progress() -> None:
    chunks = [os.urandom(1 + i * 997 % 70_000) for i in range(60)]
    spool = Spool(slow_encoder(chunks))
    results = read_in_threads(spool, 4)
    late = Collect()
    spool.copy_to(late)  # a reader that starts after the encoder finished
    spool.close()
    expected = b"".join(chunks)
    assert late.data == expected
    for data, progress, error in results:
        assert error is None
        assert data == expected
        assert progress == len(expected)


def test_an_encoder_failure_reaches_every_reader_after_the_bytes_before_it() -> None:
    chunks = [os.urandom(10_000) for _ in range(10)]
    spool = Spool(slow_encoder(chunks, fail_after=6))
    for data, _, error in read_in_threads(spool, 3):
        assert isinstance(error, ValueError) and "changed while it was read" in str(error)
        assert data == b"".join(chunks[:6])
    spool.close()


def test_close_stops_an_unfinished_encoder() -> None:
    def forever(out, on_progress) -> None:
        for _ in range(100_000):  # bounded; close() ends it long before
            out.write(b"x" * 4096)
            time.sleep(0.001)

    spool = Spool(forever)
    time.sleep(0.05)
    started = time.monotonic()
    spool.close()
    assert time.monotonic() - started < 5


def test_a_full_disk_is_a_transfer_error_naming_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(
        "deployer.deploy.spool.tempfile.TemporaryFile",
        lambda **kwargs: open("/dev/full", "r+b", buffering=0),  # noqa: SIM115  ENOSPC on write
    )
    spool = Spool(slow_encoder([b"y" * 1000]))
    with pytest.raises(
        TransferError, match=r"spooling the upload stream in .* free space there or point TMPDIR"
    ) as caught:
        spool.copy_to(Collect())
    spool.close()
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.TRANSFER
    assert "\n" not in message and "No space left on device" in message


@pytest.fixture
def text_app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    for i in range(40):
        (app / "src" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 400)
    return app


def test_a_fleet_payload_encodes_each_stream_once(text_app: Path) -> None:
    payload = prepare_payload(open_artifact(text_app), targets=3)
    send = frozenset(payload.digests)
    gzip1 = Compression("gzip", 1)
    spool = payload.shared_stream(send, gzip1)
    assert spool is not None and payload.shared_stream(send, Compression("gzip", 1)) is spool
    assert payload.shared_stream(send, Compression("gzip", 6)) is not spool  # another stream
    assert payload.shared_stream(send, Compression("zstd")) is not spool
    assert payload.shared_stream(send, PLAIN) is None  # plain tar: each target builds its own
    direct = Collect()
    write_tar(payload.artifact, direct, compression=gzip1, only=send)
    shared = Collect()
    spool.copy_to(shared)
    assert hashlib.sha256(shared.data).digest() == hashlib.sha256(direct.data).digest()
    payload.close()


def test_a_single_target_streams_directly(text_app: Path) -> None:
    payload = prepare_payload(open_artifact(text_app))
    assert payload.shared_stream(frozenset(payload.digests), Compression("gzip", 1)) is None


def test_the_encoder_waits_for_the_readers_as_a_connection_would_make_it_wait() -> None:
    """An adaptive compressor learns that the wire is the limit from writes that wait: the spool
    lets the encoder run at most _AHEAD bytes ahead of the furthest reader."""
    chunk = os.urandom(1 << 20)
    written: list[int] = []

    def encode(out, on_progress) -> None:
        for _ in range(24):
            out.write(chunk)
            written.append(len(chunk))

    spool = Spool(encode)
    time.sleep(0.5)  # no reader yet: the encoder stops at the limit
    assert 8 <= len(written) <= 9
    sink = Collect()
    spool.copy_to(sink)  # the reader lets it go on to the end
    assert bytes(sink.data) == chunk * 24 and len(written) == 24
    spool.close()


def test_closing_a_spool_releases_an_encoder_waiting_for_readers() -> None:
    def encode(out, on_progress) -> None:
        while True:
            out.write(bytes(1 << 20))

    spool = Spool(encode)
    time.sleep(0.2)
    started = time.monotonic()
    spool.close()  # nobody reads: the waiting encoder must not keep close() waiting
    assert time.monotonic() - started < 5
